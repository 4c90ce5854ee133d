"""Query strings into `smsbridge.ledger.history.Filters`, for the API and the pages alike.

Numbers are normalized to E.164 (a short code stays digits); `since`/`until` are RFC 3339
with a time zone. The pages also accept a plain date (`YYYY-MM-DD`, UTC): `since` from its
start, `until` to its end. Anything malformed is a `BadFilter` (a 400).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta

from schemas.history import DEFAULT_LIMIT
from smsbridge.ledger.history import BadFilter, Filters
from smsbridge.phone import NumberError, normalize_sender, to_e164

# A '+' in a query string reads as a space: "...T10:00:00 02:00" meant "+02:00".
_LOST_PLUS = re.compile(r" (\d\d:?\d\d)$")
FIELDS = ("number", "peer", "extension", "direction", "status", "q", "since", "until")


def number(value: str, name: str = "number") -> str:
    """E.164 with '+' (short codes as digits), else BadFilter."""
    try:
        return normalize_sender(value)
    except NumberError:
        raise BadFilter(f"{name} is not a phone number: {value[:40]!r}") from None


def e164(value: str, name: str) -> str:
    """Strict E.164 with '+' (opt-outs), else BadFilter."""
    try:
        return to_e164(value)
    except NumberError:
        raise BadFilter(f"{name} is not an E.164 phone number: {value[:40]!r}") from None


def moment(value: str, name: str, *, dates: bool = False, end: bool = False) -> datetime:
    text = _LOST_PLUS.sub(r"+\1", value.strip())
    if dates and len(text) == 10:
        try:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), UTC)
            return start + timedelta(days=1) if end else start
        except OverflowError:  # the end of 9999-12-31
            raise BadFilter(f"{name} must be a time between 1970 and 9999") from None
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{name} is not an RFC 3339 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise BadFilter(f"{name} must carry a time zone (RFC 3339, e.g. 2026-01-31T12:00:00Z)")
    return parsed


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if "\x00" in value:  # no filter holds one, and PostgreSQL's text cannot
        raise BadFilter(f"{name} must not contain a NUL character")
    value = value.strip()
    return value or None


def from_query(
    query: Mapping[str, str], *, dates: bool = False, limit: int | None = None
) -> Filters:
    """Filters from a query string (`dates`: the pages' plain dates too)."""
    raw_limit = _text(query, "limit")
    if limit is None:
        try:
            limit = int(raw_limit) if raw_limit is not None else DEFAULT_LIMIT
        except ValueError:
            raise BadFilter("limit must be a whole number") from None
    raw_number, raw_peer = _text(query, "number"), _text(query, "peer")
    since, until = _text(query, "since"), _text(query, "until")
    return Filters(
        number=number(raw_number) if raw_number else None,
        peer=number(raw_peer, "peer") if raw_peer else None,
        extension=_text(query, "extension"),
        direction=_text(query, "direction"),
        status=_text(query, "status"),
        q=_text(query, "q"),
        since=moment(since, "since", dates=dates) if since else None,
        until=moment(until, "until", dates=dates, end=True) if until else None,
        limit=limit,
        cursor=_text(query, "cursor"),
        after=_text(query, "after"),
        live=_text(query, "live"),
    )
