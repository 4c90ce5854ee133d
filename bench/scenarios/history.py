"""Scenario 9, history: the console's list and search with 1,000,000 messages in the ledger
(``--quick``: 100,000). Target (issue 9): p95 under 100 ms for the first page of any filter.

A fresh database, migrated by ``smsbridge.ledger.migrate.apply`` (what ``smsbridge db migrate``
runs), is bulk-loaded with COPY in chronological order, with every index in place, as a
ledger grows: inbound and outbound messages between ~2,000 remote numbers and six numbers of
ours, ~50 extensions, the contract's statuses (a few failed, blocked, unrouted and stuck ones),
bodies from a skewed vocabulary with marker words of known frequency (common, medium, rare,
absent) for the text search, over 90 days, and each message's timeline in ``message_events``.
Then ``VACUUM ANALYZE``, as autovacuum would have done in production (so that it does not start
in the middle of the measurements).

Every filter is built from a query string by ``console.filters.from_query`` and run by
``smsbridge.ledger.history.search``, the functions behind ``GET /api/v1/messages``, over one
``Ledger`` (the SQL and the decoding of the rows, without HTTP). The filters take turns, one
round at a time, after one untimed round. The plans come from ``history.explain`` (custom
plans, the only kind the Ledger's connections use: ``plan_cache_mode = force_custom_plan``),
next to the generic plan of the same SQL (what that setting spares the console). A last table
replays, each on a fresh connection, searches after which a default plan cache keeps a generic
plan that is slow for the next values (250-300 ms at 1,000,000 without the setting).
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from bench import pg
from bench.scenarios import Context
from bench.stats import Table, percentile
from console.filters import from_query
from schemas.history import DEFAULT_LIMIT
from smsbridge.config import LedgerConfig
from smsbridge.ledger import history
from smsbridge.ledger import migrate as migrations
from smsbridge.ledger.connection import Ledger

MESSAGES = 1_000_000
QUICK_MESSAGES = 100_000
ROUNDS = 40
QUICK_ROUNDS = 10
TARGET_MS = 100.0
DAYS = 90
CHUNK = 20_000  # rows per COPY
SEED = 9

REMOTES = 2_000
EXTENSIONS = [str(200 + i) for i in range(1, 51)]
OURS = ["+13035550100", "+13035550101", "+13035550102", "+17205550140", "+17205550141"]
OURS_SHORT_CODE = "+18885550199"  # a toll-free line, little traffic
PROVIDERS = (("main", 0.9), ("backup", 0.1))
INBOUND_SHARE = 0.55

# Latest status per direction, as shares of that direction
# (docs/contract.md, section 10; schemas.history).
INBOUND_STATUSES = (("delivered_to_pbx", 0.9745), ("unrouted", 0.025), ("received", 0.0005))
OUTBOUND_STATUSES = (
    ("delivered", 0.86),
    ("sent", 0.05),
    ("undelivered", 0.04),
    ("failed", 0.03),
    ("blocked", 0.015),
)
QUEUED_SHARE = 0.1  # of the outbound messages of the last 12 hours: waiting for quiet hours

# Marker words for the text search, with the share of bodies that contain them.
COMMON_WORD = "meeting"
MEDIUM_WORD = "invoice"
RARE_WORD = "zanzibar"
ABSENT_WORD = "xylophone"
MARKERS = ((COMMON_WORD, 0.08), (MEDIUM_WORD, 0.005), (RARE_WORD, 0.00005))

_FILLER_LINES = (
    "ok thanks yes no call me back later today see you soon on my way running late be",
    "there in minutes can we talk please text when free got it sounds good what time",
    "works for you the office is closed now left a voicemail about the appointment",
    "confirm reschedule your order has shipped pickup ready at front desk package",
    "delivery tracking number customer service hours monday tuesday wednesday thursday",
    "friday weekend morning afternoon evening tonight lunch dinner coffee parking lot",
    "building floor room key code password reset account payment received due balance",
    "statement quote estimate price approved signed contract copy email sent attached",
    "photo picture document form fill out need help question answer issue fixed working",
    "broken replaced technician visit scheduled window between noon and five doctor",
    "dentist reminder prescription pharmacy refill school bus kids game practice canceled",
    "rain weather traffic accident road closed detour flight landed airport hotel check",
    "room booked reservation table party birthday happy congrats love miss great awesome",
    "perfect sure maybe not sorry busy driving cant now will do asap urgent important",
    "update status change new old number contact info address street avenue suite unit",
    "zip",
)
FILLER = list(dict.fromkeys(w for line in _FILLER_LINES for w in line.split()))


@dataclass(frozen=True, slots=True)
class Case:
    """One filter of the list: the query strings it takes turns with (each round the next)."""

    label: str
    queries: tuple[dict[str, str], ...]
    page: int = 1  # 2: the page after the first (the first page's `next_cursor`)
    live: bool = False  # `live` = the first page's position: what was recorded since (nothing)


@dataclass
class Result:
    case: Case
    seconds: list[float] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class CacheProbe:
    """What one connection ran before: `before` (six searches of one statement, so that its
    plan cache has decided), then `target` (the same statement, other values), timed."""

    label: str
    before: tuple[dict[str, str], ...]
    target: dict[str, str]


# -- the data -------------------------------------------------------------------------------


def _weights(count: int, skew: float) -> list[float]:
    """Cumulative Zipf-like weights for `count` items (the first the most frequent)."""
    total, out = 0.0, []
    for rank in range(count):
        total += 1.0 / (rank + 1) ** skew
        out.append(total)
    return out


def _cumulative(shares: Sequence[tuple[str, float]]) -> tuple[list[str], list[float]]:
    names, cum, total = [], [], 0.0
    for name, share in shares:
        total += share
        names.append(name)
        cum.append(total)
    return names, cum


def _pick(rng: random.Random, table: tuple[list[str], list[float]]) -> str:
    names, cum = table
    return rng.choices(names, cum_weights=cum)[0]


@dataclass(frozen=True, slots=True)
class Contact:
    number: str
    ours: str  # the number of ours it usually talks to
    extension: str  # and the extension behind it


class Population:
    """Who talks to whom: remote numbers with a skewed activity, each with a usual number of ours
    and a usual extension (one in ten messages goes elsewhere)."""

    def __init__(self, rng: random.Random) -> None:
        numbers: set[str] = set()
        while len(numbers) < REMOTES:
            if rng.random() < 0.03:
                numbers.add(f"+447{rng.randrange(100_000_000, 999_999_999)}")
            else:
                area = rng.choice((303, 720, 970, 719, 212, 415, 512, 646, 312, 206))
                numbers.add(f"+1{area}{rng.randrange(2_000_000, 9_999_999)}")
        ours_weights = _weights(len(OURS), 1.0)
        ext_weights = _weights(len(EXTENSIONS), 0.7)
        self.contacts = [
            Contact(
                number,
                rng.choices(OURS, cum_weights=ours_weights)[0],
                rng.choices(EXTENSIONS, cum_weights=ext_weights)[0],
            )
            for number in sorted(numbers)
        ]
        rng.shuffle(self.contacts)  # activity rank unrelated to the number
        self.activity = _weights(REMOTES, 0.9)
        self.ext_weights = ext_weights

    def pick(self, rng: random.Random) -> tuple[str, str, str]:
        """(remote, ours, extension) of one message."""
        contact = rng.choices(self.contacts, cum_weights=self.activity)[0]
        ours, extension = contact.ours, contact.extension
        if rng.random() < 0.1:
            ours = OURS_SHORT_CODE if rng.random() < 0.2 else rng.choice(OURS)
            extension = rng.choices(EXTENSIONS, cum_weights=self.ext_weights)[0]
        return contact.number, ours, extension


class Bodies:
    def __init__(self) -> None:
        for marker, _ in (*MARKERS, (ABSENT_WORD, 0.0)):
            if any(marker in word for word in FILLER):
                raise AssertionError(f"marker {marker!r} is part of a filler word")
        self.weights = _weights(len(FILLER), 1.05)

    def make(self, rng: random.Random) -> str:
        words = rng.choices(FILLER, cum_weights=self.weights, k=rng.randint(3, 24))
        for marker, share in MARKERS:
            if rng.random() < share:
                words.insert(rng.randrange(len(words) + 1), marker)
        if rng.random() < 0.15:
            words.append(f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}pm")
        if rng.random() < 0.05:
            words.append(f"#{rng.randrange(10_000, 99_999)}")
        words[0] = words[0].capitalize()
        return " ".join(words) + rng.choice((".", "", "!", "?", " :)"))


def _times(rng: random.Random, count: int, end: datetime) -> list[float]:
    """`count` sorted offsets in seconds before `end` over DAYS days, busier 8:00-20:00."""
    span = DAYS * 86_400
    found: list[float] = []
    while len(found) < count:
        offset = rng.random() * span
        hour = ((end.timestamp() - offset) // 3_600 - 7) % 24  # Mountain time, roughly
        if 8 <= hour < 20 or rng.random() < 0.12:
            found.append(offset)
    found.sort(reverse=True)  # oldest first
    return found


def _hex(rng: random.Random, bits: int = 128) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


MESSAGE_COLUMNS = (
    "direction",
    "id",
    "provider",
    "from_number",
    "to_number",
    "body",
    "media",
    "extension",
    "status",
    "provider_id",
    "created_at",
    "updated_at",
    "raw",
    "state",
    "attempts",
)
EVENT_COLUMNS = ("direction", "message_id", "status", "at", "reason", "detail", "event_key")

MessageRow = tuple[Any, ...]
EventRow = tuple[str, str, str, datetime, str | None, str | None, str | None]


class Generator:
    def __init__(self, count: int, end: datetime) -> None:
        self.rng = random.Random(SEED)
        self.end = end
        self.population = Population(self.rng)
        self.bodies = Bodies()
        self.offsets = _times(self.rng, count, end)
        self.inbound_statuses = _cumulative(INBOUND_STATUSES)
        self.outbound_statuses = _cumulative(OUTBOUND_STATUSES)
        self.providers = _cumulative(PROVIDERS)

    def chunks(self) -> Iterator[tuple[list[MessageRow], list[EventRow]]]:
        for start in range(0, len(self.offsets), CHUNK):
            messages: list[MessageRow] = []
            events: list[EventRow] = []
            for offset in self.offsets[start : start + CHUNK]:
                self._one(self.end - timedelta(seconds=offset), messages, events)
            yield messages, events

    def _one(self, at: datetime, messages: list[MessageRow], events: list[EventRow]) -> None:
        rng = self.rng
        remote, ours, extension = self.population.pick(rng)
        provider = _pick(rng, self.providers)
        body = self.bodies.make(rng)
        if rng.random() < INBOUND_SHARE:
            self._inbound(at, remote, ours, extension, provider, body, messages, events)
        else:
            self._outbound(at, remote, ours, extension, provider, body, messages, events)

    def _inbound(
        self,
        at: datetime,
        remote: str,
        ours: str,
        extension: str,
        provider: str,
        body: str,
        messages: list[MessageRow],
        events: list[EventRow],
    ) -> None:
        rng = self.rng
        status = _pick(rng, self.inbound_statuses)
        mid = f"mdr2-{_hex(rng)}"
        media: list[dict[str, Any]] = []
        if rng.random() < 0.04:
            key = _hex(rng, 64)
            media = [
                {
                    "url": f"https://sms.example.com/media/{key}",
                    "content_type": "image/jpeg",
                    "file_name": f"IMG_{rng.randrange(1000, 9999)}.jpg",
                    "size": rng.randrange(20_000, 900_000),
                    "sha256": _hex(rng, 256),
                }
            ]
        raw = {
            "amount_nanodollars": 4000 if not media else 20000,
            "body": body,
            "direction": "inbound",
            "from": remote.lstrip("+"),
            "is_mms": bool(media),
            "message_encoding": 0,
            "message_type": "mms" if media else "longcode",
            "status": "delivered",
            "timestamp": at.isoformat(),
            "to": ours.lstrip("+"),
        }
        done = at + timedelta(milliseconds=rng.randint(20, 400))
        messages.append(
            (
                "inbound",
                mid,
                provider,
                remote,
                ours,
                body,
                _json(media),
                None if status == "unrouted" else extension,
                status,
                None,
                at,
                at if status == "received" else done,
                _json(raw),
                "publishing" if status == "received" else "published",
                0,
            )
        )
        events.append(("inbound", mid, "received", at, None, None, None))
        if status == "unrouted":
            reason = "no route for the destination number"
            events.append(("inbound", mid, "unrouted", done, reason, None, None))
        elif status == "delivered_to_pbx":
            events.append(("inbound", mid, "delivered_to_pbx", done, None, None, None))

    def _outbound(
        self,
        at: datetime,
        remote: str,
        ours: str,
        extension: str,
        provider: str,
        body: str,
        messages: list[MessageRow],
        events: list[EventRow],
    ) -> None:
        rng = self.rng
        status = _pick(rng, self.outbound_statuses)
        if at > self.end - timedelta(hours=12) and rng.random() < QUEUED_SHARE:
            status = "queued"  # waiting now: only recent ones
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        media: list[str] = []
        if rng.random() < 0.02:
            media = [f"https://pbx.example.com/files/{_hex(rng, 64)}.jpg"]
        provider_id = None
        attempts = 0
        last = at
        timeline: list[EventRow] = []
        if status == "blocked":
            reason = rng.choice(("recipient opted out", "quiet hours: not sent after 21:00"))
            timeline.append(("outbound", rid, "blocked", at, reason, None, "blocked"))
        else:
            timeline.append(("outbound", rid, "queued", at, None, None, "queued"))
        if status in ("sent", "delivered", "undelivered"):
            attempts = 1 if rng.random() < 0.97 else 2
            provider_id = f"mdr2-{_hex(rng)}"
            last = at + timedelta(milliseconds=rng.randint(150, 1500))
            detail = {"provider_id": provider_id, "attempts": attempts, "segments": 1}
            timeline.append(("outbound", rid, "sent", last, None, _json(detail), _hex(rng)))
        if status in ("delivered", "undelivered"):
            last += timedelta(seconds=rng.uniform(2, 40))
            code = "0" if status == "delivered" else rng.choice(("4001", "4301", "4702"))
            detail2 = {
                "provider_id": provider_id,
                "provider_status": "DELIVRD" if status == "delivered" else "UNDELIV",
                "provider_status_code": code,
                "level": "delivery",
            }
            reason2 = None if status == "delivered" else "carrier: unreachable handset"
            timeline.append(("outbound", rid, status, last, reason2, _json(detail2), _hex(rng)))
        if status == "failed":
            attempts = rng.randint(1, 5)
            last = at + timedelta(seconds=rng.uniform(0.2, 60))
            reason3 = rng.choice(("provider refused: invalid destination", "too many attempts"))
            detail3 = {"attempts": attempts, "provider_status_code": "400"}
            timeline.append(("outbound", rid, "failed", last, reason3, _json(detail3), _hex(rng)))
        state = {"queued": "queued", "failed": "settled", "blocked": "settled"}.get(status, "sent")
        messages.append(
            (
                "outbound",
                rid,
                provider,
                ours,
                remote,
                body,
                _json(media),
                extension,
                status,
                provider_id,
                at,
                last,
                None,
                state,
                attempts,
            )
        )
        events.extend(timeline)


async def load(url: str, count: int, end: datetime) -> tuple[int, int]:
    """Migrate (as `smsbridge db migrate`) and fill the ledger; (messages, events)."""
    conn = await asyncpg.connect(url)
    try:
        await migrations.apply(conn)
        await conn.execute("SET synchronous_commit = off")  # this session only
        gen = Generator(count, end)
        total_messages = total_events = 0
        for messages, events in gen.chunks():
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "messages", records=messages, columns=MESSAGE_COLUMNS
                )
                await conn.copy_records_to_table(
                    "message_events", records=events, columns=EVENT_COLUMNS
                )
            total_messages += len(messages)
            total_events += len(events)
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE message_events")
        print(
            f"    history: VACUUM ANALYZE {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        return total_messages, total_events
    finally:
        await conn.close()


# -- the filters ----------------------------------------------------------------------------


async def _sample(conn: asyncpg.Connection, end: datetime) -> tuple[list[Case], list[CacheProbe]]:
    """The filters, with values taken from the data (numbers and extensions of each kind);
    and the sequences of searches that make a connection's plan cache choose a generic plan."""
    remotes = [
        str(r["n"])
        for r in await conn.fetch(
            """SELECT n FROM (SELECT from_number AS n, count(*) AS c FROM messages
                              WHERE direction = 'inbound' GROUP BY 1) AS t
               ORDER BY c DESC"""
        )
    ]
    # Typical remotes: between the 100th and the 1,000th most active (tens to hundreds of
    # messages each); plus the most active ones.
    typical = tuple(remotes[100:1000:90])
    busiest = tuple(remotes[:3])
    pairs = await conn.fetch(
        """SELECT to_number AS ours, from_number AS remote FROM messages
           WHERE direction = 'inbound' AND from_number = ANY($1::text[])
           GROUP BY 1, 2 ORDER BY count(*) DESC""",
        list(typical),
    )
    seen: set[str] = set()
    conversations: list[dict[str, str]] = []
    for row in pairs:
        if row["remote"] not in seen:
            seen.add(row["remote"])
            conversations.append({"number": row["ours"], "peer": row["remote"]})

    def day(days_ago: int) -> str:
        return (end - timedelta(days=days_ago)).date().isoformat() + "T00:00:00Z"

    def q(**items: str) -> dict[str, str]:
        return dict(items)

    exts = EXTENSIONS[::5]
    ours_main = OURS[0]
    busiest_ours = await conn.fetchval(
        """SELECT to_number FROM messages WHERE direction = 'inbound' AND from_number = $1
           GROUP BY 1 ORDER BY count(*) DESC LIMIT 1""",
        busiest[0],
    )
    statuses = ("delivered", "failed", "blocked", "sent", "undelivered", "unrouted")
    probes = [
        CacheProbe(
            f"number + text: {RARE_WORD} ×6, then {COMMON_WORD}",
            (q(number=ours_main, q=RARE_WORD),) * 6,
            q(number=ours_main, q=COMMON_WORD),
        ),
        CacheProbe(
            f"number + text: {MEDIUM_WORD} ×6, then {COMMON_WORD}",
            (q(number=ours_main, q=MEDIUM_WORD),) * 6,
            q(number=ours_main, q=COMMON_WORD),
        ),
        CacheProbe(
            "status: " + ", ".join(statuses) + ", then received",
            tuple(q(status=st) for st in statuses),
            q(status="received"),
        ),
        CacheProbe(
            "conversation: the busiest pair ×6, then a typical one",
            (q(number=str(busiest_ours), peer=busiest[0]),) * 6,
            conversations[0],
        ),
        CacheProbe(
            f"text: {COMMON_WORD}, {MEDIUM_WORD}, {RARE_WORD} ×2, then {ABSENT_WORD}",
            tuple(q(q=w) for w in (COMMON_WORD, MEDIUM_WORD, RARE_WORD) * 2),
            q(q=ABSENT_WORD),
        ),
    ]
    cases = [
        Case("no filter", (q(),)),
        Case("number: our main line", (q(number=ours_main),)),
        Case("number: our quietest line", (q(number=OURS_SHORT_CODE),)),
        Case("number: a typical remote", tuple(q(number=n) for n in typical)),
        Case("number: the busiest remotes", tuple(q(number=n) for n in busiest)),
        Case("conversation: number + peer", tuple(conversations)),
        Case("extension", tuple(q(extension=e) for e in exts)),
        Case(f"text: common word ({COMMON_WORD})", (q(q=COMMON_WORD),)),
        Case(f"text: medium word ({MEDIUM_WORD})", (q(q=MEDIUM_WORD),)),
        Case(f"text: rare word ({RARE_WORD})", (q(q=RARE_WORD),)),
        Case(f"text: no match ({ABSENT_WORD})", (q(q=ABSENT_WORD),)),
        Case("status: common (delivered)", (q(status="delivered"),)),
        Case("status: failed", (q(status="failed"),)),
        Case("status: rare (blocked)", (q(status="blocked"),)),
        Case("status: very rare (received)", (q(status="received"),)),
        Case(
            "date range: one day",
            tuple(q(since=day(d), until=day(d - 1)) for d in range(10, 90, 8)),
        ),
        Case("date range: until 60 days ago", (q(until=day(60)),)),
        Case("direction: outbound", (q(direction="outbound"),)),
        Case("direction: inbound", (q(direction="inbound"),)),
        Case(
            "extension + outbound + delivered + last 30 days",
            tuple(
                q(extension=e, direction="outbound", status="delivered", since=day(30))
                for e in exts
            ),
        ),
        # One statement for the three (same filters, other values): a pooled connection's plan
        # cache sees them in turn, as when an operator searches one number's history.
        *(
            Case(f"number (our main line) + text ({word})", (q(number=ours_main, q=word),))
            for word in (RARE_WORD, MEDIUM_WORD, COMMON_WORD)
        ),
        Case(
            f"extension + text ({RARE_WORD})",
            tuple(q(extension=e, q=RARE_WORD) for e in exts),
        ),
        Case(
            "inbound + unrouted + one week",
            tuple(
                q(direction="inbound", status="unrouted", since=day(d), until=day(d - 7))
                for d in range(14, 90, 15)
            ),
        ),
        Case("page 2 (cursor): no filter", (q(),), page=2),
        Case("page 2 (cursor): extension", tuple(q(extension=e) for e in exts), page=2),
        Case(f"page 2 (cursor): text ({COMMON_WORD})", (q(q=COMMON_WORD),), page=2),
        Case("live update: `live` from the first page", (q(),), live=True),
    ]
    return cases, probes


async def _filters(ledger: Ledger, case: Case) -> list[history.Filters]:
    """Each query string of a case as the API parses it; for page 2 or live updates, with the
    cursor the first page gave."""
    out = []
    for query in case.queries:
        filters = from_query(query)
        if case.page == 2 or case.live:
            first = await history.search(ledger, filters, live=case.live)
            cursor = first.next_cursor if case.page == 2 else first.live
            if cursor is None:
                raise RuntimeError(f"{case.label}: {query} has no cursor to follow")
            key = "cursor" if case.page == 2 else "live"
            filters = from_query({**query, key: cursor})
        out.append(filters)
    return out


def _label(case: Case) -> str:
    query = case.queries[0]
    shown = "&".join(f"{k}={v}" for k, v in query.items()) or "-"
    if case.page == 2:
        shown += "&cursor=…"
    if case.live:
        shown += "&live=…"
    more = f" (+{len(case.queries) - 1} alike)" if len(case.queries) > 1 else ""
    return f"{case.label}: `{shown}`{more}"


# -- the plans ------------------------------------------------------------------------------

_NODE = re.compile(r"^(?P<indent>\s*)(?:->\s+)?(?P<node>[A-Z][^(]*?)\s{2}\(cost=")
_INDEX = re.compile(
    r"(?:Index (?:Only )?Scan(?: Backward)? using|Bitmap Index Scan on) (?P<name>\w+)"
)
_SEQ = re.compile(r"(?:Parallel )?Seq Scan on (?P<name>\w+)")
_REMOVED = re.compile(r"Rows Removed by (?:Filter|Index Recheck): (?P<n>\d+)")
_BUFFERS = re.compile(r"Buffers: shared(?: hit=(?P<hit>\d+))?(?: read=(?P<read>\d+))?")
_EXECUTION = re.compile(r"Execution Time: (?P<ms>[\d.]+) ms")
_SHORT = re.compile(r" (?:using|on) \w+(?: on \w+)?(?: \w+)?$")


@dataclass(frozen=True, slots=True)
class Plan:
    nodes: str  # the top of the tree: "Limit > Index Scan Backward"
    scans: str  # the indexes used, and any sequential scan
    removed: int
    buffers: int
    execution_ms: float


def parse_plan(text: str) -> Plan:
    """The summary of an `EXPLAIN (ANALYZE, BUFFERS)` text plan (history.explain's answer)."""
    chain: list[str] = []
    indexes: list[str] = []
    seq: list[str] = []
    removed, buffers, execution = 0, -1, math.nan
    for line in text.splitlines():
        node = _NODE.match(line)
        if node is not None:
            if len(chain) < 3:
                chain.append(_SHORT.sub("", node["node"]))
            if (found := _INDEX.search(line)) and found["name"] not in indexes:
                indexes.append(found["name"])
            if (scan := _SEQ.search(line)) and scan["name"] not in seq:
                seq.append(scan["name"])
            continue
        if (gone := _REMOVED.search(line)) is not None:
            removed += int(gone["n"])
        elif buffers < 0 and (buf := _BUFFERS.search(line)) is not None:
            buffers = int(buf["hit"] or 0) + int(buf["read"] or 0)  # the top node's total
        elif (done := _EXECUTION.search(line)) is not None:
            execution = float(done["ms"])
    scans = [*indexes, *(f"seq scan on {name}" for name in seq)]
    return Plan(
        " > ".join(chain),
        ", ".join(scans) or "none",
        removed,
        max(buffers, 0),
        execution,
    )


# -- the run --------------------------------------------------------------------------------


async def run(ctx: Context) -> None:
    count = QUICK_MESSAGES if ctx.quick else MESSAGES
    rounds = QUICK_ROUNDS if ctx.quick else ROUNDS
    end = datetime.now(UTC).replace(microsecond=0)
    async with pg.fresh_database("history") as url:
        started = time.perf_counter()
        messages, events = await load(url, count, end)
        load_s = time.perf_counter() - started
        print(
            f"    history: {messages:,} messages and {events:,} events loaded in {load_s:.1f} s",
            file=sys.stderr,
        )
        conn = await asyncpg.connect(url)
        try:
            cases, probes = await _sample(conn, end)
            size = await conn.fetchval(
                "SELECT pg_total_relation_size('messages') + "
                "pg_total_relation_size('message_events')"
            )
        finally:
            await conn.close()

        async with _ledger(url) as ledger:
            results = await _measure(ledger, cases, rounds)
            plans = [
                (
                    result,
                    parse_plan(await history.explain(ledger, variants[0])),
                    parse_plan(await generic_explain(ledger, variants[0])),
                )
                for result, variants in results
            ]
            timeline = await _timeline(ledger, rounds, end)
        cached = await _cache_probes(url, probes, rounds)

    ctx.tables.append(
        _latency_table(count, rounds, load_s, messages, events, int(size), results, timeline)
    )
    ctx.tables.append(_plan_table(count, plans))
    ctx.tables.append(_cache_table(count, probes, cached))


async def _cache_probes(url: str, sequences: list[CacheProbe], rounds: int) -> list[Result]:
    """Each sequence on a fresh connection (a fresh plan cache): `before`, then `target`
    `rounds` times, timed."""
    results = []
    for sequence in sequences:
        result = Result(Case(sequence.label, (sequence.target,)))
        async with _ledger(url) as ledger:
            for query in sequence.before:
                await history.search(ledger, from_query(query))
            target = from_query(sequence.target)
            for _ in range(rounds):
                started = time.perf_counter()
                page = await history.search(ledger, target)
                result.seconds.append(time.perf_counter() - started)
                result.rows.add(len(page.messages))
        results.append(result)
    return results


@asynccontextmanager
async def _ledger(url: str) -> AsyncIterator[Ledger]:
    """The ledger as the console opens it (one pooled connection: one plan cache)."""
    ledger = Ledger(LedgerConfig(url=SecretStr(url), migrate=False, pool_size=1), "bench-history")
    await ledger.start()
    try:
        await ledger.wait_available(30)
        yield ledger
    finally:
        await ledger.close()


async def _measure(
    ledger: Ledger, cases: list[Case], rounds: int
) -> list[tuple[Result, list[history.Filters]]]:
    prepared = [(Result(case), await _filters(ledger, case)) for case in cases]
    for n in range(rounds + 1):  # the first round is not timed (statements prepared)
        for result, variants in prepared:
            filters = variants[n % len(variants)]
            started = time.perf_counter()
            page = await history.search(ledger, filters)
            elapsed = time.perf_counter() - started
            if n > 0:
                result.seconds.append(elapsed)
                result.rows.add(len(page.messages))
    return prepared


async def generic_explain(ledger: Ledger, filters: history.Filters) -> str:
    """The generic plan of a search: the one a connection's plan cache may switch to after five
    runs of the same statement (whatever the values), when its estimated cost is no higher
    than the custom plans'. `history.explain` always shows a custom plan (planned with the
    values), so this prepares the search's own SQL and explains it with
    `plan_cache_mode = force_generic_plan`."""
    query, params = history._query(filters)
    async with ledger.connection() as conn:
        literals = [await conn.fetchval("SELECT quote_literal($1::text)", str(v)) for v in params]
        args = f"({', '.join(literals)})" if literals else ""
        await conn.execute(f"PREPARE bench_generic AS {query}")
        try:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_generic{args}")
        finally:
            await conn.execute("RESET plan_cache_mode")
            await conn.execute("DEALLOCATE bench_generic")
    return "\n".join(str(r[0]) for r in rows)


async def _timeline(ledger: Ledger, rounds: int, end: datetime) -> Result:
    """One message with its timeline (`GET /api/v1/messages/{id}`), for context: ids taken
    from first pages (recent, and 60 days old), as an operator clicks them."""
    old = (end - timedelta(days=60)).isoformat()
    ids: list[str] = []
    for query in ({"direction": "outbound"}, {"until": old}):
        page = await history.search(ledger, from_query(query))
        ids += [str(m["id"]) for m in page.messages][:10]
    result = Result(Case("one message with its timeline", ()))
    for n in range(rounds + 1):
        started = time.perf_counter()
        found = await history.message(ledger, ids[n % len(ids)])
        elapsed = time.perf_counter() - started
        if n > 0 and found is not None:
            result.seconds.append(elapsed)
            result.rows.add(len(found["events"]))
    return result


def _rows(counts: set[int]) -> str:
    if not counts:
        return "-"
    low, high = min(counts), max(counts)
    return f"{low}" if low == high else f"{low}–{high}"


def _ms(seconds: list[float], p: float) -> float:
    return percentile(sorted(seconds), p) * 1000


def _verdict(results: list[tuple[Result, list[history.Filters]]]) -> str:
    p95, label = max((_ms(r.seconds, 95), r.case.label) for r, _ in results)
    met = "met" if p95 < TARGET_MS else "NOT met"
    slow = [r.case.label for r, _ in results if _ms(r.seconds, 95) >= TARGET_MS]
    over = f"; over it: {'; '.join(slow)}" if slow else ""
    return f"{met} (worst p95 {p95:.1f} ms: {label}{over})"


def _latency_table(
    count: int,
    rounds: int,
    load_s: float,
    messages: int,
    events: int,
    size: int,
    results: list[tuple[Result, list[history.Filters]]],
    timeline: Result,
) -> Table:
    table = Table(
        f"history: first page of each filter, {count:,} messages (page size {DEFAULT_LIMIT})",
        [
            "filter (query string of GET /api/v1/messages)",
            "rows",
            "p50 ms",
            "p95 ms",
            "max ms",
        ],
    )
    for result, _ in results:
        table.add(
            _label(result.case),
            _rows(result.rows),
            _ms(result.seconds, 50),
            _ms(result.seconds, 95),
            _ms(result.seconds, 100),
        )
    table.add(
        "(for context, not a list page) one message with its timeline: `GET /api/v1/messages/{id}`",
        f"{_rows(timeline.rows)} events",
        _ms(timeline.seconds, 50),
        _ms(timeline.seconds, 95),
        _ms(timeline.seconds, 100),
    )
    table.notes += [
        f"target p95 < {TARGET_MS:.0f} ms for the first page of any filter: {_verdict(results)}",
        f"{messages:,} messages and {events:,} timeline events ({size / 2**20:,.0f} MiB with "
        f"indexes), loaded with COPY in {load_s:.1f} s (indexes in place, then VACUUM ANALYZE)",
        f"{rounds} timed runs per filter, the filters taking turns, after one untimed round; "
        "`(+N alike)`: each run takes the next of N+1 values of the same kind",
        "measured: `history.search` (SQL and row decoding, no HTTP) over one pooled connection "
        "(`smsbridge.ledger.connection.Ledger`, as the console opens it), the filters parsed by "
        "`console.filters.from_query` as the API does; warm cache, the machine's PostgreSQL "
        "with its own settings",
        "rows: what the page returned (a range when the values differ)",
    ]
    return table


def _plan_table(count: int, plans: list[tuple[Result, Plan, Plan]]) -> Table:
    table = Table(
        f"history: query plan of each filter, {count:,} messages (EXPLAIN ANALYZE, first value)",
        [
            "filter",
            "top of the plan",
            "index(es)",
            "rows removed",
            "buffers",
            "ms",
            "generic plan: index(es)",
            "generic ms",
        ],
    )
    for result, plan, generic in plans:
        table.add(
            result.case.label,
            plan.nodes,
            plan.scans,
            plan.removed,
            plan.buffers,
            plan.execution_ms,
            generic.scans,
            generic.execution_ms,
        )
    table.notes += [
        "the plan: `history.explain` (planned with the values: a custom plan, what the Ledger's "
        "connections always use, `plan_cache_mode = force_custom_plan`); the generic plan: the "
        "same SQL prepared and explained with `plan_cache_mode = force_generic_plan`, what a "
        "connection with the default setting may keep after five runs of a statement: what "
        "that setting spares the console",
        "rows removed: rows an index or scan returned that a filter (or a bitmap recheck) "
        "then discarded, summed over the plan; buffers: 8 KiB pages the whole query touched",
        "indexes: migrations/0001_messages.sql (messages_created) and 0002_search.sql "
        "(messages_from, messages_to, messages_extension, messages_status, messages_body)",
    ]
    return table


def _cache_table(count: int, sequences: list[CacheProbe], cached: list[Result]) -> Table:
    table = Table(
        f"history: first pages after searches that make a plan cache keep a generic plan, "
        f"{count:,} messages",
        [
            "what the connection ran before",
            "then, timed",
            "rows",
            "first ms",
            "p50 ms",
            "p95 ms",
        ],
    )
    for sequence, result in zip(sequences, cached, strict=True):
        shown = "&".join(f"{k}={v}" for k, v in sequence.target.items())
        table.add(
            sequence.label,
            f"`{shown}`",
            _rows(result.rows),
            result.seconds[0] * 1000,
            _ms(result.seconds, 50),
            _ms(result.seconds, 95),
        )
    slow = [s.label for s, r in zip(sequences, cached, strict=True) if _ms(r.seconds, 95) >= 100]
    table.notes += [
        "each line on a fresh connection: the searches before it (the same statement, other "
        "values), then the timed one repeated. PostgreSQL plans a prepared statement with its "
        "values five times, then may keep a generic plan (planned without them) for good: with "
        "the default `plan_cache_mode` these took 250-300 ms (number + text) and 20-60 ms "
        "(status, conversation) at 1,000,000 messages. The Ledger's connections set "
        "`plan_cache_mode = force_custom_plan` (smsbridge/ledger/connection.py), which this "
        "table guards",
        "first page over 100 ms p95 here: " + ("; ".join(slow) if slow else "none"),
    ]
    return table
