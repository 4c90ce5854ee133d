"""Quiet hours: windows with and without midnight, exact boundaries, clock changes, and
properties over zones with and without daylight saving time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbridge.policies.quiet_hours import in_quiet_hours, quiet_until

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ny(year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY, fold=fold)


# An ordinary summer day in New York (EDT, UTC-4) and Berlin (CEST, UTC+2).
@pytest.mark.parametrize(
    ("now", "start", "end", "zone", "expected"),
    [
        # 21:00-08:00 crosses midnight.
        (ny(2026, 6, 15, 20, 59), "21:00", "08:00", NY, None),
        (ny(2026, 6, 15, 21, 0), "21:00", "08:00", NY, utc(2026, 6, 16, 12)),  # start: inside
        (ny(2026, 6, 15, 23, 30), "21:00", "08:00", NY, utc(2026, 6, 16, 12)),
        (ny(2026, 6, 16, 0, 0), "21:00", "08:00", NY, utc(2026, 6, 16, 12)),
        (
            datetime(2026, 6, 16, 7, 59, 59, 999999, tzinfo=NY),
            "21:00",
            "08:00",
            NY,
            utc(2026, 6, 16, 12),
        ),
        (ny(2026, 6, 16, 8, 0), "21:00", "08:00", NY, None),  # end: outside
        (ny(2026, 6, 16, 12, 0), "21:00", "08:00", NY, None),
        # 12:00-14:00 does not.
        (datetime(2026, 6, 15, 11, 59, tzinfo=BERLIN), "12:00", "14:00", BERLIN, None),
        (
            datetime(2026, 6, 15, 12, 0, tzinfo=BERLIN),
            "12:00",
            "14:00",
            BERLIN,
            utc(2026, 6, 15, 12),
        ),
        (
            datetime(2026, 6, 15, 13, 59, tzinfo=BERLIN),
            "12:00",
            "14:00",
            BERLIN,
            utc(2026, 6, 15, 12),
        ),
        (datetime(2026, 6, 15, 14, 0, tzinfo=BERLIN), "12:00", "14:00", BERLIN, None),
        (datetime(2026, 6, 15, 23, 0, tzinfo=BERLIN), "12:00", "14:00", BERLIN, None),
        # Windows touching midnight.
        (ny(2026, 6, 15, 0, 0), "00:00", "06:00", NY, utc(2026, 6, 15, 10)),
        (ny(2026, 6, 14, 23, 59), "00:00", "06:00", NY, None),
        (ny(2026, 6, 15, 23, 30), "23:00", "00:00", NY, utc(2026, 6, 16, 4)),
        (ny(2026, 6, 16, 0, 0), "23:00", "00:00", NY, None),
        (ny(2026, 6, 15, 23, 59), "00:00", "23:59", NY, None),
        (ny(2026, 6, 15, 23, 58), "00:00", "23:59", NY, utc(2026, 6, 16, 3, 59)),
        # `now` in another zone: 02:00 UTC is 22:00 the evening before in New York.
        (utc(2026, 6, 15, 2, 0), "21:00", "08:00", NY, utc(2026, 6, 15, 12)),
        (utc(2026, 6, 15, 0, 59), "21:00", "08:00", NY, None),  # 20:59 in New York
        (
            datetime(2026, 6, 15, 11, 0, tzinfo=timezone(timedelta(hours=9))),  # Tokyo: 22:00 NY
            "21:00",
            "08:00",
            NY,
            utc(2026, 6, 15, 12),
        ),
    ],
)
def test_ordinary_days(
    now: datetime, start: str, end: str, zone: ZoneInfo, expected: datetime | None
) -> None:
    result = quiet_until(now, start, end, zone.key)
    assert result == expected
    assert in_quiet_hours(now, start, end, zone.key) is (expected is not None)
    if result is not None:
        assert result.tzinfo is UTC


# America/New_York, 2026: clocks go forward 02:00 EST -> 03:00 EDT on Sunday 8 March, and
# back 02:00 EDT -> 01:00 EST on Sunday 1 November. 21:00-08:00 still ends at 08:00 local.
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (ny(2026, 3, 7, 20, 59), None),
        (ny(2026, 3, 7, 21, 0), utc(2026, 3, 8, 12)),  # 08:00 EDT: a 10-hour night
        (ny(2026, 3, 8, 1, 59), utc(2026, 3, 8, 12)),
        (ny(2026, 3, 8, 3, 0), utc(2026, 3, 8, 12)),
        (utc(2026, 3, 8, 11, 59), utc(2026, 3, 8, 12)),
        (utc(2026, 3, 8, 12, 0), None),
        (ny(2026, 10, 31, 21, 0), utc(2026, 11, 1, 13)),  # 08:00 EST: a 12-hour night
        (ny(2026, 11, 1, 1, 30), utc(2026, 11, 1, 13)),  # 01:30 EDT
        (ny(2026, 11, 1, 1, 30, fold=1), utc(2026, 11, 1, 13)),  # 01:30 EST, an hour later
        (utc(2026, 11, 1, 12, 59), utc(2026, 11, 1, 13)),
        (utc(2026, 11, 1, 13, 0), None),
    ],
)
def test_new_york_clock_changes(now: datetime, expected: datetime | None) -> None:
    assert quiet_until(now, "21:00", "08:00", "America/New_York") == expected


# Europe/Berlin, 2026: forward 02:00 CET -> 03:00 CEST on 29 March, back 03:00 CEST -> 02:00
# CET on 25 October.
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 3, 28, 22, 0, tzinfo=BERLIN), utc(2026, 3, 29, 5)),  # 07:00 CEST
        (utc(2026, 3, 29, 4, 59), utc(2026, 3, 29, 5)),
        (utc(2026, 3, 29, 5, 0), None),
        (datetime(2026, 10, 24, 22, 0, tzinfo=BERLIN), utc(2026, 10, 25, 6)),  # 07:00 CET
        (utc(2026, 10, 25, 5, 59), utc(2026, 10, 25, 6)),
        (utc(2026, 10, 25, 6, 0), None),
    ],
)
def test_berlin_clock_changes(now: datetime, expected: datetime | None) -> None:
    assert quiet_until(now, "22:00", "07:00", "Europe/Berlin") == expected


@pytest.mark.parametrize(
    ("now", "start", "end", "expected"),
    [
        # 02:30 does not exist on 8 March 2026: the start is when the clocks go forward,
        # 02:00 EST = 03:00 EDT (07:00 UTC).
        (utc(2026, 3, 8, 6, 59), "02:30", "06:00", None),  # 01:59 EST
        (utc(2026, 3, 8, 7, 0), "02:30", "06:00", utc(2026, 3, 8, 10)),  # 03:00 EDT
        (utc(2026, 3, 8, 7, 15), "02:30", "06:00", utc(2026, 3, 8, 10)),  # 03:15 EDT
        (ny(2026, 3, 9, 2, 30), "02:30", "06:00", utc(2026, 3, 9, 10)),  # an ordinary day
        # ... and so is an end: 22:00-02:30 ends at 03:00 EDT.
        (utc(2026, 3, 8, 6, 59), "22:00", "02:30", utc(2026, 3, 8, 7, 0)),
        (utc(2026, 3, 8, 7, 0), "22:00", "02:30", None),
        # A window inside the skipped hour is empty that day, and so is one ending at 03:00.
        (utc(2026, 3, 8, 6, 59), "02:15", "02:45", None),
        (utc(2026, 3, 8, 7, 0), "02:15", "02:45", None),
        (utc(2026, 3, 8, 7, 20), "02:15", "02:45", None),
        (utc(2026, 3, 8, 6, 59), "02:30", "03:00", None),
        (utc(2026, 3, 8, 7, 0), "02:30", "03:00", None),
        (utc(2026, 3, 8, 7, 45), "02:30", "03:00", None),
        # 01:30 happens twice on 1 November 2026: an end is the later 01:30 (EST)...
        (utc(2026, 11, 1, 5, 45), "22:00", "01:30", utc(2026, 11, 1, 6, 30)),  # 01:45 EDT
        (utc(2026, 11, 1, 6, 15), "22:00", "01:30", utc(2026, 11, 1, 6, 30)),  # 01:15 EST
        (utc(2026, 11, 1, 6, 30), "22:00", "01:30", None),
        # ... and a start the earlier one (EDT).
        (utc(2026, 11, 1, 5, 29), "01:30", "05:00", None),
        (utc(2026, 11, 1, 5, 30), "01:30", "05:00", utc(2026, 11, 1, 10)),
        # When those rules make two days' windows overlap, they are one window.
        (utc(2026, 11, 1, 5, 0), "01:30", "01:00", utc(2026, 11, 2, 6)),
        (utc(2026, 11, 1, 5, 45), "01:30", "01:00", utc(2026, 11, 2, 6)),
        (utc(2026, 11, 2, 6, 0), "01:30", "01:00", None),
    ],
)
def test_times_that_do_not_exist_or_exist_twice(
    now: datetime, start: str, end: str, expected: datetime | None
) -> None:
    assert quiet_until(now, start, end, "America/New_York") == expected


LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
LONDON = ZoneInfo("Europe/London")


# A start or end the clock skips is the instant the clocks change: the first local time that
# exists after it. So the window neither starts late (texting people at what their clock
# shows as quiet hours) nor ends late.
@pytest.mark.parametrize(
    ("now", "start", "end", "zone", "expected"),
    [
        # New York, 9 March 2025: 02:00 EST -> 03:00 EDT at 07:00 UTC.
        (ny(2025, 3, 9, 1, 59), "02:30", "08:00", NY, None),
        (ny(2025, 3, 9, 3, 0), "02:30", "08:00", NY, utc(2025, 3, 9, 12)),
        (ny(2025, 3, 9, 3, 10), "02:30", "08:00", NY, utc(2025, 3, 9, 12)),
        (ny(2025, 3, 9, 1, 59), "22:00", "02:30", NY, utc(2025, 3, 9, 7)),
        (ny(2025, 3, 9, 3, 0), "22:00", "02:30", NY, None),
        (ny(2025, 3, 9, 3, 5), "22:00", "02:30", NY, None),
        # London, 30 March 2025: 01:00 GMT -> 02:00 BST at 01:00 UTC.
        (datetime(2025, 3, 30, 0, 59, tzinfo=LONDON), "01:30", "06:00", LONDON, None),
        (utc(2025, 3, 30, 1, 0), "01:30", "06:00", LONDON, utc(2025, 3, 30, 5)),  # 02:00 BST
        (
            datetime(2025, 3, 30, 2, 10, tzinfo=LONDON),
            "01:30",
            "06:00",
            LONDON,
            utc(2025, 3, 30, 5),
        ),
        # Lord Howe, 5 October 2025: a 30-minute change, 02:00 (+10:30) -> 02:30 (+11) at
        # 15:30 UTC the day before. 02:15-02:45 is 02:30-02:45 that night, not empty.
        (utc(2025, 10, 4, 15, 29), "02:15", "02:45", LORD_HOWE, None),
        (utc(2025, 10, 4, 15, 30), "02:15", "02:45", LORD_HOWE, utc(2025, 10, 4, 15, 45)),
        (
            datetime(2025, 10, 5, 2, 35, tzinfo=LORD_HOWE),
            "02:15",
            "02:45",
            LORD_HOWE,
            utc(2025, 10, 4, 15, 45),
        ),
        (utc(2025, 10, 4, 15, 45), "02:15", "02:45", LORD_HOWE, None),
    ],
)
def test_a_skipped_start_or_end_is_the_clock_change(
    now: datetime, start: str, end: str, zone: ZoneInfo, expected: datetime | None
) -> None:
    assert quiet_until(now, start, end, zone.key) == expected


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet_until(datetime(2026, 6, 15, 22, 0), "21:00", "08:00", "America/New_York")
    with pytest.raises(ValueError, match="timezone-aware"):
        in_quiet_hours(datetime(2026, 6, 15, 22, 0), "21:00", "08:00", "UTC")


@pytest.mark.parametrize(
    ("start", "end", "zone", "message"),
    [
        ("8:00", "09:00", "UTC", "HH:MM"),
        ("08:00", "24:00", "UTC", "HH:MM"),
        ("08:60", "09:00", "UTC", "HH:MM"),
        ("noon", "09:00", "UTC", "HH:MM"),
        ("08:00:00", "09:00", "UTC", "HH:MM"),
        ("08:00", "08:00", "UTC", "equal"),
        ("21:00", "08:00", "Mars/Olympus_Mons", "unknown time zone"),
        ("21:00", "08:00", "../etc/passwd", "unknown time zone"),
    ],
)
def test_bad_windows_are_refused(start: str, end: str, zone: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quiet_until(utc(2026, 6, 15), start, end, zone)


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # a 30-minute change
    "America/Santiago",  # clocks change at midnight
    "America/Havana",  # clocks change at midnight
    "Asia/Kolkata",  # no daylight saving time
]
# The largest clock change in ZONES is an hour.
LARGEST_CHANGE = timedelta(hours=1)


def _clock_changes(zone: ZoneInfo) -> list[datetime]:
    """Instants (UTC) in 2026 and 2027 at which the zone's offset changes."""
    changes, hour = [], utc(2026, 1, 1)
    while hour < utc(2028, 1, 1):
        if (
            hour.astimezone(zone).utcoffset()
            != (hour + timedelta(hours=1)).astimezone(zone).utcoffset()
        ):
            changes.append(hour + timedelta(hours=1))
        hour += timedelta(hours=1)
    return changes


CLOCK_CHANGES = {name: _clock_changes(ZoneInfo(name)) for name in ZONES}


def hhmm_of(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


hhmm = st.builds(
    lambda h, m: hhmm_of(h * 60 + m),
    st.one_of(st.integers(0, 23), st.sampled_from([0, 1, 2, 3, 23])),  # clock-change hours
    st.one_of(st.integers(0, 59), st.sampled_from([0, 30, 59])),
)
# Some windows leave a daily break shorter than a clock change, which a change can swallow.
nearly_all_day = st.builds(
    lambda end, gap: (hhmm_of((end + gap) % 1440), hhmm_of(end)),
    st.integers(0, 1439),
    st.integers(1, 90),
)
windows = st.one_of(st.tuples(hhmm, hhmm).filter(lambda w: w[0] != w[1]), nearly_all_day)
anywhere = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2040, 1, 1),
    timezones=st.sampled_from([UTC, NY, BERLIN, timezone(timedelta(hours=-3))]),
)


@st.composite
def zone_and_now(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(ZONES))
    changes = CLOCK_CHANGES[zone]
    near_a_change = draw(st.booleans())  # half the time, within a day and a half of one
    if changes and near_a_change:
        change = draw(st.sampled_from(changes))
        return zone, change + timedelta(seconds=draw(st.integers(-36 * 3600, 36 * 3600)))
    return zone, draw(anywhere)


@settings(deadline=None)
@given(zone_and_now(), windows)
def test_the_result_ends_quiet_hours(
    zone_now: tuple[str, datetime], window: tuple[str, str]
) -> None:
    zone, now = zone_now
    start, end = window
    until = quiet_until(now, start, end, zone)
    if until is None:
        return
    assert until.utcoffset() == timedelta(0)
    assert now < until
    # A window lasts its wall-clock length (less than a day by the daily break) plus at most
    # one clock change. Only a change that swallows the break joins two days' windows.
    start_minutes, end_minutes = (int(t[:2]) * 60 + int(t[3:]) for t in window)
    daily_break = timedelta(minutes=(start_minutes - end_minutes) % 1440)
    if daily_break > LARGEST_CHANGE:
        assert until <= now + timedelta(hours=24)
    else:
        assert until <= now + 2 * timedelta(hours=24) + LARGEST_CHANGE
    assert quiet_until(until, start, end, zone) is None  # the end is outside
    assert quiet_until(until - timedelta(microseconds=1), start, end, zone) == until


def _wall_inside(local: datetime, start: str, end: str) -> bool:
    wall = local.strftime("%H:%M")
    return start <= wall < end if start < end else (wall >= start or wall < end)


def _exists_twice(local: datetime) -> bool:
    return local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset()


@settings(deadline=None, max_examples=500)
@given(zone_and_now(), windows)
def test_quiet_hours_follow_the_wall_clock(
    zone_now: tuple[str, datetime], window: tuple[str, str]
) -> None:
    """Whenever the local clock shows a time inside the window, it is quiet, also next to a
    clock change. The converse holds too, except where the module chooses silence: a local
    time that happens twice, and a daily break that a clock change can swallow."""
    zone, now = zone_now
    start, end = window
    local = now.astimezone(ZoneInfo(zone))
    quiet = in_quiet_hours(now, start, end, zone)
    if _wall_inside(local, start, end):
        assert quiet, f"{local.isoformat()} shows quiet hours"
    start_minutes, end_minutes = (int(t[:2]) * 60 + int(t[3:]) for t in window)
    daily_break = timedelta(minutes=(start_minutes - end_minutes) % 1440)
    if not _exists_twice(local) and daily_break > LARGEST_CHANGE:
        assert quiet is _wall_inside(local, start, end), local.isoformat()


@settings(deadline=None)
@given(anywhere, windows, st.sampled_from(["UTC", "Asia/Kolkata", "Asia/Tokyo"]))
def test_without_clock_changes_it_is_plain_wall_clock_arithmetic(
    now: datetime, window: tuple[str, str], zone: str
) -> None:
    start, end = window
    local = now.astimezone(ZoneInfo(zone))
    wall = local.strftime("%H:%M")
    inside = start <= wall < end if start < end else (wall >= start or wall < end)
    until = quiet_until(now, start, end, zone)
    assert (until is not None) is inside
    if until is not None:
        assert until.astimezone(ZoneInfo(zone)).strftime("%H:%M") == end
        assert until - now <= timedelta(hours=24)
