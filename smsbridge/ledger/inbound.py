"""Inbound messages in the ledger: the claim that makes the resolver publish one InboundMessage
per Flowroute id across replicas and restarts, and the message's history.

States (`messages.state`): a new id is inserted `publishing`, with a lease (`claim_until`) and
`doubt_since`; after the confirm it becomes `published`. Whatever stops a resolver in between
(a crash, a lost connection) leaves `publishing` with a lease that runs out; the next resolver
to get the message takes the claim over and, since `doubt_since` is set, settles it against
the journal before publishing. A definite failure (nothing reached the broker) goes back to
`new`. Every step is one batched statement; a claim never waits for another process longer
than that process's lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from smsbridge.ledger import values as pg
from smsbridge.ledger.batch import Batcher
from smsbridge.ledger.connection import Ledger
from smsbridge.once import Claim, InboundHistory
from smsbridge.recent import RecentIds
from smsbridge.waiting import MustWait

LEASE = timedelta(seconds=30)

_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[])
        AS t(id, token, provider, from_number, to_number, body, media, extension,
             created_at, raw)
),
inserted AS (
    INSERT INTO messages AS m (direction, id, provider, from_number, to_number, body, media,
                               extension, status, created_at, raw, state, claim_token,
                               claim_until, doubt_since)
    SELECT 'inbound', id, provider, from_number, to_number, body, coalesce(media, '[]')::jsonb,
           extension, 'received', coalesce(created_at, now()), raw::jsonb, 'publishing', token,
           now() + $11::interval, now()
    FROM input
    ON CONFLICT (direction, id) DO NOTHING
    RETURNING m.id, m.claim_token
),
taken AS (
    UPDATE messages AS m
    SET state = 'publishing', claim_token = input.token, claim_until = now() + $11::interval,
        -- An earlier attempt's doubt stays until it is settled.
        doubt_since = CASE WHEN m.state = 'publishing' THEN coalesce(m.doubt_since, now())
                           ELSE now() END,
        updated_at = now()
    FROM input
    WHERE m.direction = 'inbound' AND m.id = input.id
      AND (m.state = 'new' OR (m.state = 'publishing' AND m.claim_until < now()))
    -- doubt_since < now(): it was kept from an earlier transaction, so it is in doubt.
    RETURNING m.id, m.claim_token,
              CASE WHEN m.doubt_since < now() THEN m.doubt_since END AS in_doubt_since
)
-- Matched by token too: of two requests for one id in a batch, only one holds it.
SELECT input.id, input.token,
       (inserted.id IS NOT NULL OR taken.id IS NOT NULL) AS claimed,
       taken.in_doubt_since,
       existing.state
FROM input
LEFT JOIN inserted ON inserted.id = input.id AND inserted.claim_token = input.token
LEFT JOIN taken ON taken.id = input.id AND taken.claim_token = input.token
LEFT JOIN messages AS existing ON existing.direction = 'inbound' AND existing.id = input.id
"""

_SUCCEEDED = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[])
        AS t(id, token, status, events)
),
done AS (
    UPDATE messages AS m
    SET state = 'published', status = input.status, claim_token = NULL, claim_until = NULL,
        doubt_since = NULL, updated_at = now()
    FROM input
    WHERE m.direction = 'inbound' AND m.id = input.id AND m.claim_token = input.token
    RETURNING m.id, m.created_at
),
timeline AS (
    INSERT INTO message_events (direction, message_id, status, at, reason, detail)
    SELECT 'inbound', done.id, 'received', done.created_at, NULL, NULL FROM done
    UNION ALL
    SELECT 'inbound', input.id, e.status, e.at, e.reason, e.detail
    FROM input
    JOIN done ON done.id = input.id
    CROSS JOIN LATERAL jsonb_to_recordset(input.events::jsonb)
        AS e(status text, at timestamptz, reason text, detail jsonb)
)
SELECT id FROM done
"""

_RELEASED = """
UPDATE messages AS m
SET state = CASE WHEN input.in_doubt THEN 'publishing' ELSE 'new' END,
    claim_token = NULL,
    claim_until = now(),
    doubt_since = CASE WHEN input.in_doubt THEN coalesce(m.doubt_since, input.since) END,
    updated_at = now()
FROM unnest($1::text[], $2::uuid[], $3::boolean[], $4::timestamptz[])
    AS input(id, token, in_doubt, since)
WHERE m.direction = 'inbound' AND m.id = input.id AND m.claim_token = input.token
RETURNING m.id
"""

_RENEWED = """
UPDATE messages AS m SET claim_until = now() + $3::interval
FROM unnest($1::text[], $2::uuid[]) AS input(id, token)
WHERE m.direction = 'inbound' AND m.id = input.id AND m.claim_token = input.token
RETURNING m.id
"""


@dataclass(frozen=True, slots=True)
class _ClaimRow:
    claimed: bool
    in_doubt_since: datetime | None
    state: str | None


class LedgerClaims:
    """`Claims` kept in the ledger, with this process's own memory in front: twins handled
    here at the same time wait for each other, and ids already published here are answered
    without a query."""

    def __init__(self, ledger: Ledger, ttl: float, lease: timedelta = LEASE) -> None:
        self.ledger = ledger
        self.lease = lease
        self.recent = RecentIds(ttl=ttl)
        self._claim = Batcher(self._claim_batch)
        self._succeeded = Batcher(self._succeeded_batch)
        self._released = Batcher(self._released_batch)
        self._renewed = Batcher(self._renewed_batch)

    async def claim(self, key: str, history: InboundHistory | None = None) -> Claim:
        while True:
            if self.recent.done(key):
                return Claim(key, done=True)
            twin = self.recent.pending(key)
            if twin is None:
                break
            await asyncio.shield(twin)
        self.recent.begin(key)
        try:
            claim = await self._claim_in_ledger(key, history)
        except BaseException:
            self.recent.finish(key, False)
            raise
        if claim.done:
            self.recent.finish(key, True)
        return claim

    async def _claim_in_ledger(self, key: str, history: InboundHistory | None) -> Claim:
        wait = 0.1
        while True:
            token = uuid.uuid4()
            asked = time.monotonic()  # the lease runs from the statement, a little later
            row = await self._claim.submit((key, token, history))
            if row.claimed:
                lease = self.lease.total_seconds()
                return Claim(
                    key,
                    in_doubt_since=row.in_doubt_since,
                    token=str(token),
                    expires=asked + lease,
                    lease=lease,
                )
            if row.state == "published":
                return Claim(key, done=True)
            # Another resolver is publishing it right now (or its claim has yet to run out):
            # its outcome decides. Wait, without a query storm.
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)

    async def succeeded(
        self, claim: Claim, status: str = "delivered_to_pbx", **detail: Any
    ) -> bool:
        ours = True
        try:
            if not claim.done:
                now = datetime.now(UTC)
                events = [
                    {"status": status, "at": now.isoformat(), "reason": None, "detail": detail}
                ]
                ours = await self._succeeded.submit(
                    (claim.key, uuid.UUID(claim.token), status, events)
                )
        except MustWait:
            raise  # recorded on the next try
        except BaseException:
            self.recent.finish(claim.key, True)  # published: twins here are duplicates
            raise
        self.recent.finish(claim.key, True)
        return ours

    def unrecorded(self, claim: Claim) -> None:
        self.recent.finish(claim.key, True)

    async def released(self, claim: Claim, in_doubt_since: datetime | None) -> None:
        try:
            if claim.token:
                await self._released.submit(
                    (claim.key, uuid.UUID(claim.token), in_doubt_since is not None, in_doubt_since)
                )
        finally:
            self.recent.finish(claim.key, False)

    async def renew(self, claim: Claim) -> bool:
        if not claim.token:
            return True
        return bool(await self._renewed.submit((claim.key, uuid.UUID(claim.token))))

    # -- batched statements --------------------------------------------------------------
    async def _claim_batch(
        self, items: list[tuple[str, uuid.UUID, InboundHistory | None]]
    ) -> list[_ClaimRow]:
        columns: list[list[Any]] = [[] for _ in range(10)]
        for key, token, history in items:
            h = history or InboundHistory()
            values = (
                key,
                token,
                h.provider,
                pg.text(h.from_),
                pg.text(h.to),
                pg.text(h.body),
                pg.json_text(h.media),
                h.extension,
                h.created_at,
                pg.json_text(h.raw),
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        rows = await self.ledger.fetch(_CLAIM, *columns, self.lease)
        answers = {
            (r["id"], r["token"]): _ClaimRow(r["claimed"], r["in_doubt_since"], r["state"])
            for r in rows
        }
        return [answers[key, token] for key, token, _ in items]

    async def _succeeded_batch(
        self, items: list[tuple[str, uuid.UUID, str, list[dict[str, Any]]]]
    ) -> list[bool]:
        rows = await self.ledger.fetch(
            _SUCCEEDED,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [pg.json_text(i[3]) for i in items],
        )
        done = {r["id"] for r in rows}
        return [i[0] in done for i in items]

    async def _released_batch(
        self, items: list[tuple[str, uuid.UUID, bool, datetime | None]]
    ) -> list[bool]:
        rows = await self.ledger.fetch(
            _RELEASED,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [i[3] for i in items],
        )
        done = {r["id"] for r in rows}
        return [i[0] in done for i in items]

    async def _renewed_batch(self, items: list[tuple[str, uuid.UUID]]) -> list[bool]:
        rows = await self.ledger.fetch(
            _RENEWED, [i[0] for i in items], [i[1] for i in items], self.lease
        )
        done = {r["id"] for r in rows}
        return [i[0] in done for i in items]


_KEYWORD_MESSAGE = """
SELECT from_number, to_number, body FROM messages WHERE direction = 'inbound' AND id = $1
"""


@dataclass(frozen=True, slots=True)
class Texted:
    """Who texted what to which of our numbers (an inbound message in the ledger)."""

    from_: str | None
    to: str | None
    body: str | None


async def texted(ledger: Ledger, message_id: str) -> Texted | None:
    """The inbound message `message_id` (Flowroute's id), if the ledger has it."""
    rows = await ledger.fetch(_KEYWORD_MESSAGE, message_id)
    if not rows:
        return None
    row = rows[0]
    return Texted(row["from_number"], row["to_number"], row["body"])
