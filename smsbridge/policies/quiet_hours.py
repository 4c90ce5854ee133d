"""Quiet hours: a daily local-time window during which nobody is texted.

The window is [start, end) in the wall-clock time of an IANA time zone: the start minute is
inside, the end minute is not. When end is before start the window crosses midnight
(21:00-08:00 starts in the evening of one day and ends in the morning of the next).

The window is anchored to local calendar days, not to a fixed length: 21:00-08:00 ends at
08:00 local time also on the nights the clocks change, so it lasts 10 hours on the
spring-forward night and 12 on the fall-back night (in America/New_York).

Local times that do not exist or exist twice on a day the clocks change:

- A time skipped by a spring-forward (02:30 in New York on its spring-forward day) is the
  instant the clocks change, the first local time that exists after it: 02:30 becomes 03:00
  EDT. That holds for a start (the local clock shows 03:10 as inside 02:30-08:00, so it is
  quiet) and for an end (22:00-02:30 ends at 03:00 EDT: 02:30 has passed). So the window
  never starts late nor ends late. A window wholly inside the skipped time (02:15-02:45, or
  02:30-03:00) is empty that day; one partly inside it keeps the part that exists
  (02:15-02:45 on Lord Howe Island, whose clocks go from 02:00 to 02:30, is 02:30-02:45).
- A time that occurs twice in a fall-back (01:30 in New York on its fall-back day) is read
  so that the window is the longer: a start is the earlier occurrence and an end is the
  later one, so nobody is texted during either reading of quiet hours.
- If a clock change swallows the break between one day's window and the next (possible only
  when that break is no longer than the change, e.g. 01:30-01:00 on a fall-back night), the
  two windows are one: the result is the end of the second, so that asking again at the
  returned instant gives None. Only then can the wait exceed 24 hours; otherwise a window
  lasts at most its wall-clock length plus the clock change, which is under 24 hours.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DAY: Final = timedelta(days=1)


def quiet_until(now: datetime, start: str, end: str, timezone: str) -> datetime | None:
    """When quiet hours that include `now` end (an aware UTC datetime), or None if outside.

    `now` must be timezone-aware (any zone); `start` and `end` are "HH:MM" in `timezone`.
    Raises ValueError for a naive `now`, a malformed or empty window, or an unknown zone.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("quiet_until needs a timezone-aware `now`")
    opens_at, closes_at = _parse_hhmm(start), _parse_hhmm(end)
    if opens_at == closes_at:
        raise ValueError(f"quiet hours {start}-{end}: start and end are equal (an empty window)")
    zone = _zone(timezone)
    now = now.astimezone(UTC)  # compare instants, never wall times
    today = now.astimezone(zone).date()

    # Only yesterday's window (crossing midnight into today) and today's can contain `now`.
    for day in (today - _DAY, today):
        opens, closes = _window(day, opens_at, closes_at, zone)
        if opens <= now < closes:
            break
    else:
        return None
    # Next to a clock change one day's window may overlap the next day's: they are one window.
    while True:
        day += _DAY
        opens, next_closes = _window(day, opens_at, closes_at, zone)
        if opens > closes:
            return closes
        closes = max(closes, next_closes)


def in_quiet_hours(now: datetime, start: str, end: str, timezone: str) -> bool:
    """Whether `now` is inside the quiet hours (see `quiet_until`)."""
    return quiet_until(now, start, end, timezone) is not None


def _window(
    day: date, opens_at: time, closes_at: time, zone: ZoneInfo
) -> tuple[datetime, datetime]:
    """The instants (UTC) at which the window that starts on local `day` opens and closes."""
    closing_day = day + _DAY if closes_at < opens_at else day
    return (
        _instant(day, opens_at, zone, later_if_twice=False),
        _instant(closing_day, closes_at, zone, later_if_twice=True),
    )


def _instant(day: date, at: time, zone: ZoneInfo, *, later_if_twice: bool) -> datetime:
    """The UTC instant of a local wall time, with the module's rules for clock changes."""
    first = datetime.combine(day, at, tzinfo=zone)
    second = first.replace(fold=1)
    first_offset, second_offset = first.utcoffset(), second.utcoffset()
    assert first_offset is not None and second_offset is not None  # a ZoneInfo always has one
    # With PEP 495, fold=0 reads a wall time with the offset in force before a clock change
    # and fold=1 with the offset after it. They differ only near a change: in a gap the
    # offset grows (fold=1 is then an instant before the change, fold=0 one after it), in a
    # repeat it shrinks (fold=0 is then the earlier occurrence, fold=1 the later one).
    if second_offset > first_offset:
        return _clock_change(second.astimezone(UTC), first.astimezone(UTC), zone)
    if later_if_twice and second_offset < first_offset:
        return second.astimezone(UTC)
    return first.astimezone(UTC)


def _clock_change(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant in (before, after] at which `zone` takes `after`'s offset.

    ZoneInfo does not expose its transitions; they fall on whole seconds, so bisecting the
    seconds between the two readings of a skipped time finds it (a dozen steps for an hour).
    """
    offset = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())  # whole minutes: exact
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _parse_hhmm(value: str) -> time:
    match = _HHMM.fullmatch(value)
    if match is None:
        raise ValueError(f"expected HH:MM (24-hour), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)  # ZoneInfo caches instances by name
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
