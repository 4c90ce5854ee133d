"""Recorder: keeps the ledger's history.

- Every status event published on smsbridge.events goes into its message's timeline: it
  consumes `smsbridge.ledger.status` (a copy of every `status.*` event, the outbound worker's
  and the delivery receipts the gateway publishes) and records them batched
  (smsbridge/ledger/events.py); a delivery is acked once its record is committed.
- Every hour, history older than `ledger.retention_days` is deleted (ledger/retention.py).

Runs in the outbound worker when a ledger is configured.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.ledger import retention
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.events import StatusLedger, StatusRecord
from smsbridge.logs import get_logger
from smsbridge.metrics import LEDGER_PURGED
from workers.consumer import Consumer

log = get_logger(__name__)


SWEEP_EVERY_SECONDS = 3600.0


class Recorder:
    def __init__(
        self, broker: Broker, ledger: Ledger, *, retention_days: float, prefetch: int
    ) -> None:
        self.broker = broker
        self.ledger = StatusLedger(ledger)
        self._raw_ledger = ledger
        self.retention_days = retention_days
        self.prefetch = prefetch
        self._sweeper: asyncio.Task[None] | None = None
        broker.declare_also(topology.declare_ledger)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ledger-retention")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self._raw_ledger.wait_available()
                deleted = await retention.sweep(self._raw_ledger, self.retention_days)
                if deleted:
                    LEDGER_PURGED.inc(deleted)
                    log.info("history past retention deleted", rows=deleted)
            except Exception as exc:  # the next hour tries again
                log.warning("retention sweep failed", error=str(exc))
            await asyncio.sleep(SWEEP_EVERY_SECONDS)

    def consumer(self) -> Consumer:
        # A status event that crashes the recorder (a bug) is parked with the outbound
        # stage's: status events belong to the outbound path.
        return Consumer(
            self.broker,
            topology.LEDGER_STATUS_QUEUE,
            "outbound",
            self.handle,
            prefetch=self.prefetch,
        )

    async def handle(self, message: AbstractIncomingMessage) -> str:
        try:
            record = StatusRecord.from_event(orjson.loads(message.body), message.message_id or "")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            # History only, and not ours to fix: say so and move on.
            log.warning("status event not recorded: unreadable", error=str(exc))
            return "unreadable"
        await self.ledger.record(record)
        return "recorded"
