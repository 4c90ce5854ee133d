"""What every worker shares: consume a queue, run one handler per delivery, and settle it.

Acknowledgement policy, in one place:
- the handler returns: its result was already published and confirmed -> ack;
- the handler raises `Park` (bad data) or anything unexpected (a bug) -> the message is
  published to its parking queue with the reason, confirmed, then acked; the worker carries on;
- the handler raises `PublishFailed` (broker trouble) -> nack with requeue after a pause; the
  broker's delivery limit dead-letters a message that never succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from smsbridge import envelope, topology
from smsbridge.broker import Broker, PublishFailed
from smsbridge.logs import get_logger
from smsbridge.metrics import MESSAGES_HANDLED

log = get_logger(__name__)

REQUEUE_WAIT_SECONDS = 60.0

Handler = Callable[[AbstractIncomingMessage], Awaitable[str | None]]


class DeliveryLost(Exception):
    """The channel this delivery came on is gone: the broker will redeliver it (perhaps to
    another replica), so stop working on it, and neither ack nor publish anything for it."""


def channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except RuntimeError:  # aio-pika raises ChannelInvalidStateError for a closed channel
        return False


class Park(Exception):
    """This message cannot be processed: keep it in the parking queue with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (quorum queues count it)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return int(value) if isinstance(value, int) else 0


async def park(broker: Broker, stage: str, message: AbstractIncomingMessage, reason: str) -> None:
    headers: dict[str, Any] = dict(message.headers or {})
    headers.update(
        {
            topology.H_REASON: reason[:1000],
            topology.H_STAGE: stage,
            topology.H_PARKED_AT: envelope.now_rfc3339(),
            topology.H_ORIGINAL_EXCHANGE: message.exchange or "",
            topology.H_ORIGINAL_KEY: message.routing_key or "",
        }
    )
    parked = topology.json_message(
        message.body,
        message_id=message.message_id or "",
        type_=message.type,
        headers=headers,
    )
    await broker.publish(topology.PARKING, stage, parked)


class Consumer:
    """Consumes one queue with one handler; keeps strong references for robust reconnects."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        stage: str,
        handler: Handler,
        *,
        prefetch: int,
        on_open: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.queue_name = queue
        self.stage = stage
        self.handler = handler
        self.prefetch = prefetch
        self.worker = stage
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._on_open = on_open
        self._on_stop = on_stop

    async def start(self, arguments: dict[str, Any] | None = None) -> None:
        self._channel = await self.broker.consumer_channel(self.prefetch)
        if self._on_open is not None:
            # Called now and whenever the robust channel is reopened after a reconnect.
            on_open = self._on_open
            on_open()
            self._channel.reopen_callbacks.add(lambda *_: on_open())  # type: ignore[attr-defined]
        # A declared (not merely looked-up) queue is what the robust channel restores, with
        # its consumer, after a reconnect.
        self._queue = await self._channel.declare_queue(self.queue_name, passive=True)
        self._tag = await self._queue.consume(self._on_message, arguments=arguments)
        log.info("consuming", queue=self.queue_name, prefetch=self.prefetch)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking deliveries, let those in flight finish, close the channel."""
        if self._on_stop is not None:
            self._on_stop()
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self.settle(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def settle(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            queue=self.queue_name,
            attempt=delivery_count(message) + 1,
        )
        try:
            outcome = await self.handler(message) or "published"
        except Park as exc:
            await self._park(message, exc.reason)
            return
        except DeliveryLost:
            log.info("delivery given back; the broker redelivers it")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        except PublishFailed as exc:
            log.warning("publish failed, message requeued", error=str(exc))
            await self._requeue(message)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("handler failed; parking the message")
            await self._park(message, f"internal error: {type(exc).__name__}: {exc}")
            return
        MESSAGES_HANDLED.labels(self.worker, outcome).inc()
        await self._ack(message)

    async def _park(self, message: AbstractIncomingMessage, reason: str) -> None:
        try:
            await park(self.broker, self.stage, message, reason)
        except PublishFailed as exc:
            log.warning("could not park, message requeued", reason=reason, error=str(exc))
            await self._requeue(message)
            return
        log.warning("message parked", reason=reason, parked_in=topology.parked_queue(self.stage))
        MESSAGES_HANDLED.labels(self.worker, "parked").inc()
        await self._ack(message)

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        """Give a delivery back once the broker can take our output again: each requeue counts
        towards the queue's delivery limit, so no quick loop that would dead-letter healthy
        messages while the broker is away."""
        MESSAGES_HANDLED.labels(self.worker, "requeued").inc()
        await self.broker.wait_ready(REQUEUE_WAIT_SECONDS)
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except Exception as exc:  # ChannelInvalidStateError after a reconnect: redelivered
            log.warning("ack failed; the broker will redeliver", error=str(exc))
