"""Provider accounts as their senders report them (the console's accounts page).

The active sender of an account (one replica at a time) reports every few seconds whether
the account is held and its sends and 429s over the last minute; a report older than
`STALE` means nobody is sending for it now, and reads as idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from smsbridge.ledger.connection import Ledger

STALE = timedelta(minutes=2)

_REPORT = """
INSERT INTO accounts (name, held_since, held_reason, sent_last_minute,
                      rate_limited_last_minute, reported_by, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, now())
ON CONFLICT (name) DO UPDATE
SET held_since = EXCLUDED.held_since, held_reason = EXCLUDED.held_reason,
    sent_last_minute = EXCLUDED.sent_last_minute,
    rate_limited_last_minute = EXCLUDED.rate_limited_last_minute,
    reported_by = EXCLUDED.reported_by, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class AccountState:
    name: str
    held_since: datetime | None
    held_reason: str | None
    sent_last_minute: int
    rate_limited_last_minute: int
    updated_at: datetime | None

    @property
    def held(self) -> bool:
        return self.held_since is not None


async def report(
    ledger: Ledger,
    name: str,
    *,
    held_since: datetime | None,
    held_reason: str | None,
    sent_last_minute: int,
    rate_limited_last_minute: int,
    reporter: str,
) -> None:
    await ledger.execute(
        _REPORT,
        name,
        held_since,
        held_reason,
        sent_last_minute,
        rate_limited_last_minute,
        reporter,
    )


async def states(ledger: Ledger, names: list[str]) -> list[AccountState]:
    """Every configured account (in `names` order), idle when never or not lately reported."""
    rows = {r["name"]: r for r in await ledger.fetch("SELECT * FROM accounts")}
    now = datetime.now(UTC)
    out = []
    for name in names:
        row = rows.get(name)
        if row is None:
            out.append(AccountState(name, None, None, 0, 0, None))
            continue
        fresh = now - row["updated_at"] < STALE
        out.append(
            AccountState(
                name,
                row["held_since"] if fresh else None,
                row["held_reason"] if fresh else None,
                row["sent_last_minute"] if fresh else 0,
                row["rate_limited_last_minute"] if fresh else 0,
                row["updated_at"],
            )
        )
    return out
