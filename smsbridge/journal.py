"""The journal of published InboundMessages: how a publish whose confirm was lost is settled.

A publisher that loses its connection while waiting for a confirm cannot know whether the
broker stored the message: publishing it again may give the PBX a second copy, not publishing
it may lose it. So InboundMessages go through `smsbridge.events.journaled`, which routes each
of them, in the same publish, to `smsbridge.events` (the PBX queues) and to the stream
`smsbridge.journal.inbound`. Reading the stream from just before the attempt up to a marker
published now tells which messages were stored; only the others are published again.

Lookups that arrive while a scan runs share the next one: after a connection loss every
in-flight message of a worker is in doubt at once, and one pass over the stream settles them
all.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker, PublishFailed
from smsbridge.logs import get_logger

log = get_logger(__name__)

# Start reading this long before the attempt: stream timestamps are per chunk, taken by the
# broker node's clock, while the attempt's time comes from ours or PostgreSQL's (`smsbridge
# doctor` warns when a clock is 5 s off).
MARGIN = timedelta(seconds=30)
SCAN_TIMEOUT = 120.0
MARKER_PREFIX = "smsbridge-journal-marker-"


class Journal:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._waiting: list[tuple[set[str], datetime, asyncio.Future[set[str]]]] = []
        self._scanner: asyncio.Task[None] | None = None

    async def published(self, message_ids: Collection[str], since: datetime) -> set[str]:
        """Which of `message_ids` (AMQP message ids) were stored by a publish made after
        `since`. Raises PublishFailed while the broker cannot be read."""
        future: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((set(message_ids), since, future))
        if self._scanner is None or self._scanner.done():
            self._scanner = asyncio.create_task(self._scan_waiting(), name="journal-scan")
        return await asyncio.shield(future)

    async def _scan_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            wanted = set().union(*(ids for ids, _, _ in batch))
            since = min(s for _, s, _ in batch)
            try:
                found = await self._scan(wanted, since - MARGIN)
            except Exception as exc:
                error = PublishFailed(f"journal not readable: {type(exc).__name__}: {exc}")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for ids, _, future in batch:
                if not future.done():
                    future.set_result(ids & found)

    async def _scan(self, wanted: set[str], since: datetime) -> set[str]:
        marker = f"{MARKER_PREFIX}{uuid.uuid4().hex}"
        # Everything published before the marker is read before it.
        await self.broker.publish(
            "",
            topology.JOURNAL_QUEUE,
            aio_pika.Message(
                b"", message_id=marker, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
        )
        channel = await self.broker.consumer_channel(prefetch=1000)
        found: set[str] = set()
        reached = asyncio.Event()
        seen = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal seen
            seen += 1
            message_id = message.message_id or ""
            if message_id in wanted:
                found.add(message_id)
            elif message_id == marker:
                reached.set()
            await message.ack()

        try:
            queue = await channel.get_queue(topology.JOURNAL_QUEUE, ensure=False)
            await queue.consume(on_message, arguments={"x-stream-offset": since})
            await asyncio.wait_for(reached.wait(), SCAN_TIMEOUT)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        log.info(
            "journal read to settle publishes in doubt",
            in_doubt=len(wanted),
            stored=len(found),
            read=seen,
        )
        return found
