"""Outbound requests in the ledger: the claim that lets Flowroute accept at most one send per
request id across replicas and restarts, and the request's history.

States (`messages.state`): intake records a request `queued`. Its sender claims it
(`sending`, with a lease), records each attempt *before* the POST (`doubt_since`), and records
the outcome after: `sent` (with Flowroute's id), `settled` (failed or blocked for good), or
back to `queued` (it will be retried). A sender that dies between the POST and the record
leaves `sending` with `doubt_since` set: whoever takes the request over when the lease runs
out looks the send up in Flowroute's message records before anything is sent again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from smsbridge.ledger import values as pg
from smsbridge.ledger.batch import Batcher
from smsbridge.ledger.connection import QUERY_TIMEOUT, Ledger
from smsbridge.once import ClaimLost, LookUp, OutboundHistory, SendClaim, wait_or_abort
from smsbridge.recent import RecentIds
from smsbridge.topology import status_event_id

_QUEUED = """
WITH input AS (  -- once per id: the PBX may publish the same request twice in a row
    SELECT DISTINCT ON (id) * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                          $5::text[], $6::text[], $7::text[])
        AS t(id, provider, from_number, to_number, body, media, extension)
),
inserted AS (
    INSERT INTO messages AS m (direction, id, provider, from_number, to_number, body, media,
                               extension, status, state)
    SELECT 'outbound', id, provider, from_number, to_number, body, media::jsonb, extension,
           'queued', 'queued'
    FROM input
    ON CONFLICT (direction, id) DO UPDATE  -- fill in a row a status event made first
    SET provider = EXCLUDED.provider, from_number = EXCLUDED.from_number,
        to_number = EXCLUDED.to_number, body = EXCLUDED.body, media = EXCLUDED.media,
        extension = EXCLUDED.extension
    WHERE m.state = 'queued' AND m.to_number IS NULL
    RETURNING m.id, m.created_at
),
timeline AS (
    INSERT INTO message_events (direction, message_id, status, at, event_key)
    SELECT 'outbound', id, 'queued', created_at, 'queued' FROM inserted
    ON CONFLICT DO NOTHING
)
SELECT id FROM inserted
"""

_BLOCKED = """
INSERT INTO messages AS m (direction, id, provider, from_number, to_number, body, media,
                           extension, status, state)
VALUES ('outbound', $1, $2, $3, $4, $5, $6::jsonb, $7, 'blocked', 'settled')
ON CONFLICT (direction, id) DO UPDATE
SET status = 'blocked', state = 'settled', updated_at = now()
WHERE m.state = 'queued'
"""

_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[])
        AS t(id, token, provider, from_number, to_number, body, media, extension)
),
inserted AS (
    INSERT INTO messages AS m (direction, id, provider, from_number, to_number, body, media,
                               extension, status, state, claim_token, claim_until)
    SELECT 'outbound', id, provider, from_number, to_number, body,
           coalesce(media, '[]')::jsonb, extension, 'queued', 'sending', token,
           now() + $9::interval
    FROM input
    ON CONFLICT (direction, id) DO NOTHING
    RETURNING m.id, m.claim_token
),
taken AS (
    UPDATE messages AS m
    SET state = 'sending', claim_token = input.token, claim_until = now() + $9::interval,
        posting = false, updated_at = now()
    FROM input
    WHERE m.direction = 'outbound' AND m.id = input.id
      AND (m.state = 'queued' OR (m.state = 'sending' AND m.claim_until < now()))
    RETURNING m.id, m.claim_token, m.doubt_since
)
-- Matched by token too: of two requests for one id in a batch, only one holds it.
SELECT input.id, input.token,
       (inserted.id IS NOT NULL OR taken.id IS NOT NULL) AS claimed,
       taken.doubt_since AS in_doubt_since,
       existing.state, existing.status, existing.provider_id, existing.attempts,
       (SELECT e.reason FROM message_events AS e
        WHERE existing.state = 'settled' AND e.direction = 'outbound'
          AND e.message_id = input.id AND e.status = 'failed'
        ORDER BY e.at DESC LIMIT 1) AS reason
FROM input
LEFT JOIN inserted ON inserted.id = input.id AND inserted.claim_token = input.token
LEFT JOIN taken ON taken.id = input.id AND taken.claim_token = input.token
LEFT JOIN messages AS existing ON existing.direction = 'outbound' AND existing.id = input.id
"""

_ATTEMPTING = """
UPDATE messages AS m
SET attempts = input.attempt, doubt_since = now(), claim_until = now() + $4::interval,
    posting = true, updated_at = now()
FROM unnest($1::text[], $2::uuid[], $3::integer[]) AS input(id, token, attempt)
WHERE m.direction = 'outbound' AND m.id = input.id AND m.claim_token = input.token
RETURNING m.id
"""

# Not conditional on the claim: a 202 is the truth, whoever holds the request now.
_SENT = """
UPDATE messages AS m
SET state = 'sent', provider_id = input.provider_id, attempts = input.attempts,
    status = CASE WHEN smsbridge_status_rank(m.status) < smsbridge_status_rank('sent')
                  THEN 'sent' ELSE m.status END,
    claim_token = NULL, claim_until = NULL, doubt_since = NULL, posting = false,
    updated_at = now()
FROM unnest($1::text[], $2::text[], $3::integer[]) AS input(id, provider_id, attempts)
WHERE m.direction = 'outbound' AND m.id = input.id
RETURNING m.id
"""

# An in-doubt send found in Flowroute's records: recorded only while the request is still
# ours and no other request holds that record. Run under a transaction lock on the provider
# id (taken by the statement before), so that two look-ups that found the same record (two
# requests with the same text, one accepted) cannot both take it: the second sees the first.
_RECONCILED_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('provider_id:' || $1, 0))"
_RECONCILED = """
UPDATE messages AS m
SET state = 'sent', provider_id = $2, attempts = $3,
    status = CASE WHEN smsbridge_status_rank(m.status) < smsbridge_status_rank('sent')
                  THEN 'sent' ELSE m.status END,
    claim_token = NULL, claim_until = NULL, doubt_since = NULL, posting = false,
    updated_at = now()
WHERE m.direction = 'outbound' AND m.id = $1 AND m.claim_token = $4
  AND NOT EXISTS (SELECT 1 FROM messages AS other
                  WHERE other.provider_id = $2 AND other.direction = 'outbound'
                    AND other.id <> $1)
RETURNING m.id
"""

# With its status.failed event, keyed as the recorder keys it (a no-op when the event is
# recorded): a handler run again after a crash publishes the same event from it.
_SETTLED = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::integer[], $5::text[],
                         $6::text[])
        AS t(id, token, status, attempts, reason, event_key)
),
done AS (
    UPDATE messages AS m
    SET state = 'settled', status = input.status, attempts = input.attempts,
        claim_token = NULL, claim_until = NULL, doubt_since = NULL, posting = false,
        updated_at = now()
    FROM input
    WHERE m.direction = 'outbound' AND m.id = input.id AND m.claim_token = input.token
    RETURNING m.id
)
INSERT INTO message_events (direction, message_id, status, at, reason, event_key)
SELECT 'outbound', input.id, 'failed', now(), input.reason, input.event_key
FROM input JOIN done ON done.id = input.id
ON CONFLICT DO NOTHING
"""

_RELEASED = """
UPDATE messages AS m
SET state = CASE WHEN input.in_doubt THEN 'sending' ELSE 'queued' END,
    claim_token = NULL,
    claim_until = now(),
    doubt_since = CASE WHEN input.in_doubt THEN coalesce(m.doubt_since, input.since) END,
    posting = false,
    updated_at = now()
FROM unnest($1::text[], $2::uuid[], $3::boolean[], $4::timestamptz[])
    AS input(id, token, in_doubt, since)
WHERE m.direction = 'outbound' AND m.id = input.id AND m.claim_token = input.token
RETURNING m.id
"""

# Never the request's own id: a delivery receipt may have put it on its row already.
_LOOK_UP = """
SELECT
    (SELECT coalesce(array_agg(provider_id), '{}') FROM messages
     WHERE provider_id = ANY($2::text[]) AND direction = 'outbound' AND id <> $1) AS exclude,
    EXISTS (SELECT 1 FROM messages
            WHERE direction = 'outbound' AND id <> $1 AND state = 'sending' AND posting
              AND claim_until > now()
              AND to_number = $3 AND from_number = $4 AND body IS NOT DISTINCT FROM $5)
        AS busy
"""


@dataclass(frozen=True, slots=True)
class _ClaimRow:
    claimed: bool
    in_doubt_since: datetime | None
    state: str | None
    status: str | None
    provider_id: str | None
    attempts: int
    reason: str | None


def _history_columns(items: list[OutboundHistory | None]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(6)]
    for h in items:
        values = (
            (h.provider, h.from_, h.to, pg.text(h.body), pg.json_text(h.media), h.extension)
            if h is not None
            else (None,) * 6
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


class LedgerSendClaims:
    """`SendClaims` kept in the ledger, with this process's memory in front (twins here wait
    for each other; what was sent here is answered without a query)."""

    def __init__(self, ledger: Ledger, *, lease: timedelta, ttl: float) -> None:
        self.ledger = ledger
        self.lease = lease
        self.recent = RecentIds(ttl=ttl)
        self._queued = Batcher(self._queued_batch)
        self._claim = Batcher(self._claim_batch)
        self._attempting = Batcher(self._attempting_batch)
        self._sent = Batcher(self._sent_batch)
        self._settled = Batcher(self._settled_batch)
        self._released = Batcher(self._released_batch)

    async def queued(self, request_id: str, history: OutboundHistory) -> None:
        await self._queued.submit((request_id, history))

    async def blocked(self, request_id: str, history: OutboundHistory, reason: str) -> None:
        columns = _history_columns([history])
        await self.ledger.execute(_BLOCKED, request_id, *(c[0] for c in columns))

    async def claim(
        self,
        request_id: str,
        history: OutboundHistory | None = None,
        abort: asyncio.Event | None = None,
    ) -> SendClaim:
        while True:
            record = self.recent.value(request_id)
            if record is not None:
                provider_id, _, attempts = record.partition(" ")
                return SendClaim(request_id, provider_id=provider_id, attempts=int(attempts))
            twin = self.recent.pending(request_id)
            if twin is None:
                break
            await wait_or_abort(twin, None, abort)
        self.recent.begin(request_id)
        try:
            claim = await self._claim_in_ledger(request_id, history, abort)
        except BaseException:
            self.recent.finish(request_id, False)
            raise
        if claim.provider_id is not None:
            self.recent.finish(request_id, True, f"{claim.provider_id} {claim.attempts}")
        elif claim.settled:
            self.recent.finish(request_id, False)
        return claim

    async def _claim_in_ledger(
        self, request_id: str, history: OutboundHistory | None, abort: asyncio.Event | None
    ) -> SendClaim:
        wait = 0.1
        while True:
            token = uuid.uuid4()
            row = await self._claim.submit((request_id, token, history))
            if row.claimed:
                return SendClaim(
                    request_id,
                    in_doubt_since=row.in_doubt_since,
                    attempts=row.attempts,
                    receipted=row.provider_id,
                    token=str(token),
                )
            if row.state == "sent":
                return SendClaim(request_id, provider_id=row.provider_id, attempts=row.attempts)
            if row.state == "settled":
                settled = "blocked" if row.status == "blocked" else "failed"
                return SendClaim(
                    request_id, settled=settled, reason=row.reason, attempts=row.attempts
                )
            # Another sender holds it (its claim has yet to run out): its outcome decides.
            await wait_or_abort(None, wait, abort)
            wait = min(wait * 2, 2.0)

    async def attempting(self, claim: SendClaim, attempt: int) -> None:
        if not await self._attempting.submit((claim.request_id, uuid.UUID(claim.token), attempt)):
            raise ClaimLost(claim.request_id)

    async def sent(self, claim: SendClaim, provider_id: str, attempts: int) -> None:
        await self._sent.submit((claim.request_id, provider_id, attempts))
        self.recent.finish(claim.request_id, True, f"{provider_id} {attempts}")

    async def reconciled(self, claim: SendClaim, provider_id: str, attempts: int) -> bool:
        # READ COMMITTED whatever the database's default: the UPDATE's own snapshot, taken
        # after the lock, must see the row of a look-up that held it before.
        async with self.ledger.connection() as conn, conn.transaction(isolation="read_committed"):
            await conn.execute(_RECONCILED_LOCK, provider_id, timeout=QUERY_TIMEOUT)
            row = await conn.fetchrow(
                _RECONCILED,
                claim.request_id,
                provider_id,
                attempts,
                uuid.UUID(claim.token),
                timeout=QUERY_TIMEOUT,
            )
        if row is None:
            return False
        self.recent.finish(claim.request_id, True, f"{provider_id} {attempts}")
        return True

    async def settle(self, claim: SendClaim, status: str, reason: str, attempts: int) -> None:
        key = status_event_id(claim.request_id, "failed", attempts)
        await self._settled.submit(
            (claim.request_id, uuid.UUID(claim.token), status, attempts, reason, key)
        )
        self.recent.finish(claim.request_id, False)

    async def released(self, claim: SendClaim, in_doubt_since: datetime | None) -> None:
        try:
            await self._released.submit(
                (
                    claim.request_id,
                    uuid.UUID(claim.token),
                    in_doubt_since is not None,
                    in_doubt_since,
                )
            )
        finally:
            self.recent.finish(claim.request_id, False)

    async def requeued(self, request_id: str, at: float) -> None:
        return None  # `reopen` below, run by the requeue tools before they publish

    async def look_up(
        self, request_id: str, candidates: Collection[str], history: OutboundHistory
    ) -> LookUp:
        [row] = await self.ledger.fetch(
            _LOOK_UP,
            request_id,
            list(candidates),
            history.to,
            history.from_,
            pg.text(history.body),
        )
        return LookUp({str(p) for p in row["exclude"]}, bool(row["busy"]))

    # -- batched statements --------------------------------------------------------------
    async def _queued_batch(self, items: list[tuple[str, OutboundHistory]]) -> list[None]:
        await self.ledger.fetch(
            _QUEUED, [i[0] for i in items], *_history_columns([i[1] for i in items])
        )
        return [None] * len(items)

    async def _claim_batch(
        self, items: list[tuple[str, uuid.UUID, OutboundHistory | None]]
    ) -> list[_ClaimRow]:
        rows = await self.ledger.fetch(
            _CLAIM,
            [i[0] for i in items],
            [i[1] for i in items],
            *_history_columns([i[2] for i in items]),
            self.lease,
        )
        answers = {
            (r["id"], r["token"]): _ClaimRow(
                r["claimed"],
                r["in_doubt_since"],
                r["state"],
                r["status"],
                r["provider_id"],
                r["attempts"] or 0,
                r["reason"],
            )
            for r in rows
        }
        return [answers[i[0], i[1]] for i in items]

    async def _attempting_batch(self, items: list[tuple[str, uuid.UUID, int]]) -> list[bool]:
        rows = await self.ledger.fetch(
            _ATTEMPTING,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            self.lease,
        )
        done = {r["id"] for r in rows}
        return [i[0] in done for i in items]

    async def _sent_batch(self, items: list[tuple[str, str, int]]) -> list[None]:
        await self.ledger.fetch(
            _SENT, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]
        )
        return [None] * len(items)

    async def _settled_batch(
        self, items: list[tuple[str, uuid.UUID, str, int, str, str]]
    ) -> list[None]:
        await self.ledger.execute(
            _SETTLED,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [i[3] for i in items],
            [pg.text(i[4]) for i in items],
            [i[5] for i in items],
        )
        return [None] * len(items)

    async def _released_batch(
        self, items: list[tuple[str, uuid.UUID, bool, datetime | None]]
    ) -> list[None]:
        await self.ledger.fetch(
            _RELEASED,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [i[3] for i in items],
        )
        return [None] * len(items)


_REOPEN = """
UPDATE messages SET state = 'queued', updated_at = now()
WHERE direction = 'outbound' AND id = ANY($1::text[]) AND state = 'settled'
"""


async def reopen(ledger: Ledger, request_ids: list[str]) -> None:
    """Requests an operator requeued (from the parking queue) may be sent again: a request
    settled as failed or blocked is otherwise never sent a second time."""
    if request_ids:
        await ledger.execute(_REOPEN, request_ids)
