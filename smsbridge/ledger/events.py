"""Status events in the ledger: every `status.*` event published on smsbridge.events (by the
outbound worker, or by the gateway for delivery receipts) becomes a line in its message's
timeline, and moves the message's status forward (never back: a late `sent` does not hide a
`delivered`).

Recording the same event twice (a redelivery) is a no-op: the event's AMQP message id is its
key. An event for a request the ledger has never seen (it failed validation before it was
queued, or the ledger was added while it was in flight) gets a minimal row of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smsbridge.ledger import values as pg
from smsbridge.ledger.batch import Batcher
from smsbridge.ledger.connection import Ledger

_RECORD = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                         $6::text[], $7::text[])
        AS t(id, status, at, reason, detail, event_key, provider_id)
),
-- The message status an event implies: a progress event changes none (a receipt's keeps
-- 'sent', a wait keeps 'queued').
implied AS (
    SELECT id, provider_id,
           CASE WHEN status = 'progress'
                THEN CASE WHEN provider_id IS NULL THEN 'queued' ELSE 'sent' END
                ELSE status END AS status
    FROM input
),
latest AS (
    SELECT DISTINCT ON (id) id, status, provider_id
    FROM implied
    ORDER BY id, smsbridge_status_rank(status) DESC
),
upserted AS (
    INSERT INTO messages AS m (direction, id, status, state, provider_id)
    SELECT 'outbound', id, status, 'queued', provider_id FROM latest
    ON CONFLICT (direction, id) DO UPDATE
    SET status = CASE WHEN smsbridge_status_rank(EXCLUDED.status) > smsbridge_status_rank(m.status)
                      THEN EXCLUDED.status ELSE m.status END,
        provider_id = coalesce(m.provider_id, EXCLUDED.provider_id),
        updated_at = now()
)
INSERT INTO message_events (direction, message_id, status, at, reason, detail, event_key)
SELECT 'outbound', id, status, at, reason, detail::jsonb, event_key FROM input
ON CONFLICT DO NOTHING
"""

_DETAIL = (
    "provider_id",
    "attempts",
    "provider_status",
    "provider_status_code",
    "level",
    "segments",
)


@dataclass(frozen=True, slots=True)
class StatusRecord:
    request_id: str
    status: str
    at: datetime
    reason: str | None
    detail: dict[str, Any]
    event_key: str

    @classmethod
    def from_event(cls, event: dict[str, Any], event_key: str) -> StatusRecord:
        """From a StatusEvent as published (raises KeyError/ValueError if it is not one)."""
        at = event["at"]
        return cls(
            request_id=str(event["id"]),
            status=str(event["status"]),
            at=datetime.fromisoformat(at) if isinstance(at, str) else at,
            reason=event.get("reason"),
            detail={k: event[k] for k in _DETAIL if event.get(k) is not None},
            event_key=event_key,
        )


class StatusLedger:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._batcher = Batcher(self._record_batch)

    async def record(self, record: StatusRecord) -> None:
        await self._batcher.submit(record)

    async def _record_batch(self, records: list[StatusRecord]) -> list[None]:
        await self.ledger.execute(
            _RECORD,
            [r.request_id for r in records],
            [r.status for r in records],
            [r.at for r in records],
            [pg.text(r.reason) for r in records],
            [pg.json_text(r.detail) for r in records],
            [r.event_key for r in records],
            [r.detail.get("provider_id") for r in records],
        )
        return [None] * len(records)
