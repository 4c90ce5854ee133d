"""Searching the ledger's history: what the console's API and `smsbridge history` answer.

A page is newest first (`created_at`, then insertion order) and ends with an opaque cursor
naming its last row; the next page starts below it, so messages arriving meanwhile (at the
top) neither repeat nor push anything off a later page. `after` (the cursor of a page's first
row) asks the other way: only what arrived above it. Live updates use `live` instead: a
position naming the ledger snapshot a page was read in, so a poll gets every message recorded
since, whatever its `created_at` (an inbound message is dated when the gateway received it,
maybe long before it is recorded) and whatever order concurrent batches commit in
(migrations/0006_recorded_xid.sql). Each filter is served by an index
(migrations/0002_search.sql); a number matches either party, as two index walks merged, and a
number with a `peer` is one conversation (the same two walks, each narrowed to the peer).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.history import STATUSES
from smsbridge.ledger.connection import QUERY_TIMEOUT, Ledger

MAX_LIMIT = 500
_MAX_SEQ = 2**63 - 1
_COLUMNS = (
    "seq, id, direction, provider, from_number, to_number, body, media, extension, status, "
    "provider_id, created_at, updated_at"
)


class BadFilter(ValueError):
    """A filter that cannot be used (the API answers 400 with this text)."""


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def utc_time(value: datetime, name: str) -> datetime:
    """`value` (with a time zone) in UTC, between 1970 and 9999: asyncpg cannot send a time
    outside years 1 to 9999 UTC (an OverflowError, a 500), and no message is older."""
    try:
        when = value.astimezone(UTC)
    except OverflowError:
        when = _EARLIEST - timedelta(seconds=1)
    if when < _EARLIEST:
        raise BadFilter(f"{name} must be a time between 1970 and 9999")
    return when


def _no_nul(value: str, name: str) -> None:
    if "\x00" in value:  # PostgreSQL's text cannot hold it (an error, a 500)
        raise BadFilter(f"{name} must not contain a NUL character")


@dataclass(frozen=True, slots=True)
class Filters:
    number: str | None = None  # either party, E.164 with '+'
    peer: str | None = None  # with `number`: only messages between the two
    extension: str | None = None
    direction: str | None = None
    status: str | None = None
    q: str | None = None  # text in the body
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None  # older than this page end (the previous page's next_cursor)
    after: str | None = None  # newer than this row (above a page's first row)
    live: str | None = None  # recorded since this position (Page.live): live updates

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadFilter(f"limit must be between 1 and {MAX_LIMIT}")
        if self.direction not in (None, "inbound", "outbound"):
            raise BadFilter("direction must be inbound or outbound")
        if self.status is not None and self.status not in STATUSES:
            raise BadFilter(f"status must be one of {', '.join(STATUSES)}")
        if self.peer is not None and self.number is None:
            raise BadFilter("peer needs number (a conversation is between two numbers)")
        for name in ("cursor", "after"):
            value = getattr(self, name)
            if value is not None:
                decode_cursor(value)  # a bad one is a 400 before any query
        if self.live is not None:
            decode_live(self.live)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise BadFilter(f"{name} must carry a time zone (RFC 3339)")
            if value is not None:
                object.__setattr__(self, name, utc_time(value, name))
        for name in ("number", "peer", "extension", "q"):
            value = getattr(self, name)
            if value is not None:
                _no_nul(value, name)


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[dict[str, Any]]
    next_cursor: str | None
    # The first row's position (else the `after` asked with): pass as `after` to get only
    # what arrived above it.
    top_cursor: str | None = None
    # With search(live=True): the snapshot this page was read in; pass as `live` to get what
    # was recorded since.
    live: str | None = None


def encode_cursor(created_at: datetime, seq: int) -> str:
    raw = orjson.dumps([created_at.isoformat(), seq])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, seq = orjson.loads(raw)
        _no_nul(created_at, "cursor")  # Python's parser would skip it
        when, number = datetime.fromisoformat(created_at), int(seq)
        if when.tzinfo is None or not 0 <= number <= _MAX_SEQ:
            raise ValueError("not ours")
        when = utc_time(when, "cursor")
    except (ValueError, TypeError, orjson.JSONDecodeError):  # BadFilter is a ValueError
        raise BadFilter("cursor is not one this API gave out") from None
    return when, number


# txid_current_snapshot() as text: "xmin:xmax:xip,xip,..." (transaction ids in progress).
_SNAPSHOT = re.compile(r"^(\d{1,19}):(\d{1,19}):((?:\d{1,19},){0,9999}\d{1,19})?$")


def encode_live(snapshot: str) -> str:
    return base64.urlsafe_b64encode(snapshot.encode()).rstrip(b"=").decode()


def decode_live(position: str) -> tuple[int, str]:
    """(xmin, snapshot text) of a live position, checked as PostgreSQL checks a txid_snapshot
    (so a forged one is a 400, not a database error)."""
    try:
        text = base64.urlsafe_b64decode(position + "=" * (-len(position) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise BadFilter("live is not a position this console gave out") from None
    found = _SNAPSHOT.match(text)
    if found is None:
        raise BadFilter("live is not a position this console gave out")
    xmin, xmax = int(found.group(1)), int(found.group(2))
    running = [int(x) for x in found.group(3).split(",")] if found.group(3) else []
    if not (
        0 < xmin <= xmax <= _MAX_SEQ  # a bigint, as seq is
        and all(xmin <= x < xmax for x in running)
        and running == sorted(running)
    ):
        raise BadFilter("live is not a position this console gave out")
    return xmin, text


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _query(filters: Filters) -> tuple[str, list[Any]]:
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    where: list[str] = []
    if filters.extension is not None:
        where.append(f"extension = {param(filters.extension)}")
    if filters.direction is not None:
        where.append(f"direction = {param(filters.direction)}")
    if filters.status is not None:
        where.append(f"status = {param(filters.status)}")
    if filters.q:
        where.append(f"body ILIKE {param(_like(filters.q))}")
    if filters.since is not None:
        where.append(f"created_at >= {param(filters.since)}")
    if filters.until is not None:
        where.append(f"created_at < {param(filters.until)}")
    if filters.cursor is not None:
        created_at, seq = decode_cursor(filters.cursor)
        where.append(f"(created_at, seq) < ({param(created_at)}, {param(seq)})")
    if filters.after is not None:
        created_at, seq = decode_cursor(filters.after)
        where.append(f"(created_at, seq) > ({param(created_at)}, {param(seq)})")
    if filters.live is not None:
        xmin, snapshot = decode_live(filters.live)
        # Recorded by a transaction that snapshot could not see: committed since.
        where.append(
            f"recorded_xid >= {param(xmin)} AND NOT "
            f"txid_visible_in_snapshot(recorded_xid, {param(snapshot)}::text::txid_snapshot)"
        )
    order = f"ORDER BY created_at DESC, seq DESC LIMIT {filters.limit + 1}"
    if filters.number is None:
        condition = " AND ".join(where) or "TRUE"
        return f"SELECT {_COLUMNS} FROM messages WHERE {condition} {order}", params
    number = param(filters.number)
    rest = "".join(f" AND {w}" for w in where)
    if filters.peer is not None:
        peer = param(filters.peer)
        sent = f"from_number = {number} AND to_number = {peer}"
        received = f"to_number = {number} AND from_number = {peer}"
        if filters.peer == filters.number:  # one walk: the other would find the same rows
            return f"SELECT {_COLUMNS} FROM messages WHERE {sent}{rest} {order}", params
    else:
        sent = f"from_number = {number}"
        received = f"to_number = {number}"
    return (
        f"SELECT * FROM ("
        f"(SELECT {_COLUMNS} FROM messages WHERE {sent}{rest} {order})"
        f" UNION ALL "
        f"(SELECT {_COLUMNS} FROM messages WHERE {received}"
        f" AND from_number IS DISTINCT FROM {number}{rest} {order})"
        f") AS either {order}",
        params,
    )


def message_view(row: Any) -> dict[str, Any]:
    media = row["media"]
    return {
        "id": row["id"],
        "direction": row["direction"],
        "provider": row["provider"],
        "from": row["from_number"],
        "to": row["to_number"],
        "body": row["body"],
        "media": orjson.loads(media) if isinstance(media, str) else (media or []),
        "extension": row["extension"],
        "status": row["status"],
        "provider_id": row["provider_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def search(ledger: Ledger, filters: Filters, *, live: bool = False) -> Page:
    """A page of messages; with `live`, also the position to ask for what is recorded next."""
    query, params = _query(filters)
    position = None
    if live:
        # One snapshot for both statements: the next poll gets exactly what this one could
        # not see.
        async with (
            ledger.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            snapshot = await conn.fetchval(
                "SELECT txid_current_snapshot()::text", timeout=QUERY_TIMEOUT
            )
            rows = list(await conn.fetch(query, *params, timeout=QUERY_TIMEOUT))
        position = encode_live(snapshot)
    else:
        rows = await ledger.fetch(query, *params)
    more = len(rows) > filters.limit
    rows = rows[: filters.limit]
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["seq"]) if more and rows else None
    top = encode_cursor(rows[0]["created_at"], rows[0]["seq"]) if rows else filters.after
    return Page([message_view(r) for r in rows], cursor, top, position)


async def explain(ledger: Ledger, filters: Filters) -> str:
    """The query plan of a search (for bench/ and the tests that pin the indexes)."""
    query, params = _query(filters)
    rows = await ledger.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *params)
    return "\n".join(r[0] for r in rows)


async def message(ledger: Ledger, message_id: str) -> dict[str, Any] | None:
    """One message with its timeline, oldest event first; the newest if an inbound and an
    outbound message share the id."""
    if "\x00" in message_id:  # no id holds one (PostgreSQL's text cannot)
        return None
    rows = await ledger.fetch(
        # Both directions named: the unique index is (direction, id), and PostgreSQL 15 cannot
        # skip its first column (without it, the whole index is read: 47 ms at 1,000,000).
        f"SELECT {_COLUMNS}, raw FROM messages WHERE direction IN ('inbound', 'outbound') "
        "AND id = $1 ORDER BY created_at DESC LIMIT 1",
        message_id,
    )
    if not rows:
        return None
    view = message_view(rows[0])
    raw = rows[0]["raw"]
    view["raw"] = orjson.loads(raw) if isinstance(raw, str) else raw
    events = await ledger.fetch(
        "SELECT status, at, reason, detail FROM message_events "
        "WHERE direction = $1 AND message_id = $2 ORDER BY at, seq",
        view["direction"],
        message_id,
    )
    view["events"] = [
        {
            "status": e["status"],
            "at": e["at"],
            "reason": e["reason"],
            "detail": orjson.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"],
        }
        for e in events
    ]
    return view
