"""The bridge's wall clock, for rules that depend on the time of day (quiet hours).

`now()` is the real time unless a test has moved this process's clock (`travel`): that is how
the tests cross a daylight-saving change without waiting for one. Nothing else reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    return datetime.now(UTC) + _offset


def travel(to: datetime | None) -> None:
    """From now on, `now()` runs from `to` (None: back to the real time)."""
    global _offset
    _offset = timedelta(0) if to is None else to - datetime.now(UTC)
