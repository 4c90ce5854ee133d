"""What every worker shares: consume a queue, run one handler per delivery, and settle it.

Acknowledgement policy, in one place:
- the handler returns: its results were published and confirmed (and recorded) -> ack;
- the handler raises `Park` (bad data) or anything unexpected (a bug) -> the message is
  published to its parking queue with the reason, confirmed, then acked; the worker carries on;
- the handler raises `MustWait` (the broker cannot confirm our output, the ledger is away):
  nothing is wrong with the message, so it is neither parked nor requeued. The delivery is
  held and the handler runs again after a growing, capped pause, for as long as the delivery
  is ours (its channel open, the worker not stopping);
- the handler raises `DeliveryLost` (stopping, or the channel closed): it is given back.

Two facts of RabbitMQ 3.10 and aiormq shape this:
- `x-delivery-limit` counts every return of a delivery (nack-requeue, a channel or connection
  closing with it unacked, the consumer timeout), so routine returns (restarts, network
  blips) would park healthy messages. A delivery returned `REFRESH_AT` times is republished
  as a fresh copy that carries the count on in a header; only `MAX_RETURNS` returns in all
  (a message that takes its worker down every time) park it.
- aiormq cancels the consumer tasks of a channel that closes. A handler cancelled between an
  HTTP send (or a publish) and the record of its outcome cannot know what it did, so each
  delivery is handled in a task of our own that runs to its end; its ack then fails and the
  broker's redelivery finds the recorded outcome.
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
from smsbridge.metrics import DELIVERIES_HELD, MESSAGES_HANDLED
from smsbridge.waiting import Backoff, MustWait

log = get_logger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[str | None]]
# Told (and awaited) before a message is parked for a reason its handler did not report itself
# (a bug, a crash loop): e.g. the outbound stage publishes the request's status.failed.
ParkHook = Callable[[AbstractIncomingMessage, str], Awaitable[None]]
# A broker call that should answer at once (cancel a consumer, close a channel): a stop must
# not wait long for it when the broker is away.
BROKER_CALL_TIMEOUT = 2.0


class DeliveryLost(Exception):
    """Give this delivery back: the worker is stopping, or the delivery's channel is gone (the
    broker redelivers it, perhaps to another replica). Neither ack nor publish anything for it."""


class Park(Exception):
    """This message cannot be processed: keep it in the parking queue with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except RuntimeError:  # aio-pika raises ChannelInvalidStateError for a closed channel
        return False


def int_header(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (quorum queues count it)."""
    return int_header(message, "x-delivery-count")


async def park(broker: Broker, stage: str, message: AbstractIncomingMessage, reason: str) -> None:
    headers: dict[str, Any] = {
        topology.H_REASON: reason[:1000],
        topology.H_STAGE: stage,
        topology.H_PARKED_AT: envelope.now_rfc3339(),
        topology.H_ORIGINAL_EXCHANGE: message.exchange or "",
        topology.H_ORIGINAL_KEY: message.routing_key or "",
    }
    await broker.deliver(topology.PARKING, stage, topology.copy_message(message, headers))


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
        on_park: ParkHook | None = None,
        stop_timeout: float = 10.0,
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
        self._stopping = asyncio.Event()
        self._on_open = on_open
        self._on_stop = on_stop
        self._on_park = on_park
        self.stop_timeout = stop_timeout
        self._arguments: dict[str, Any] | None = None
        self._held = DELIVERIES_HELD.labels(queue)

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
        self._arguments = arguments
        self._tag = await self._queue.consume(self._on_message, arguments=arguments)
        log.info("consuming", queue=self.queue_name, prefetch=self.prefetch)

    async def pause(self) -> None:
        """Stop taking new deliveries (the queue keeps them); those in flight go on."""
        tag, self._tag = self._tag, None
        if self._queue is not None and tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(tag), BROKER_CALL_TIMEOUT)
            log.info("consuming paused", queue=self.queue_name)

    async def resume(self) -> None:
        if self._queue is None or self._tag is not None or self._stopping.is_set():
            return
        if self._on_open is not None:
            # Like a reopen: on a single-active-consumer queue this consumer may become the
            # active one again without any other sign.
            self._on_open()
        self._tag = await self._queue.consume(self._on_message, arguments=self._arguments)
        log.info("consuming resumed", queue=self.queue_name)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking deliveries, give back those that wait (for a rate slot, for the broker),
        let the rest finish (at most `timeout` s, default `stop_timeout`), close the channel."""
        self._stopping.set()
        if self._on_stop is not None:
            self._on_stop()
        await self.pause()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout or self.stop_timeout)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), BROKER_CALL_TIMEOUT)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Returns at once: the delivery is handled in a task aiormq does not cancel.
        task = asyncio.create_task(self.settle(message), name=f"deliver-{self.queue_name}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def settle(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            queue=self.queue_name,
            attempt=delivery_count(message) + 1,
        )
        if delivery_count(message) >= topology.REFRESH_AT and await self._refresh(message):
            return
        backoff = Backoff()
        while True:
            try:
                outcome = await self.handler(message) or "published"
            except Park as exc:
                await self._park(message, exc.reason)
                return
            except DeliveryLost:
                await self._give_back(message)
                return
            except MustWait as exc:
                if await self._hold(message, backoff, exc):
                    continue
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("handler failed; parking the message")
                reason = f"internal error: {type(exc).__name__}: {exc}"
                await self._park(message, reason, tell=True)
                return
            MESSAGES_HANDLED.labels(self.worker, outcome).inc()
            await self._ack(message)
            return

    async def _hold(
        self, message: AbstractIncomingMessage, backoff: Backoff, exc: Exception
    ) -> bool:
        """Keep a delivery while a dependency is away. False when it is no longer ours to hold
        (its channel closed: the broker redelivers it; or we are stopping: given back)."""
        if self._stopping.is_set():
            await self._give_back(message)
            return False
        if not channel_open(message):
            log.info("delivery's channel closed while it waited; the broker redelivers it")
            return False
        if backoff.waited > self.broker.hold_limit and await self._requeue_fresh(message):
            return False
        delay = backoff.next()
        if backoff.attempts == 1:
            log.warning("must wait; holding the delivery", reason=str(exc), retry_in=delay)
        else:
            log.debug("still waiting", reason=str(exc), retry_in=delay)
        MESSAGES_HANDLED.labels(self.worker, "waited").inc()
        self._held.inc()
        # Wake early when we stop, or when the dependency says it is back.
        wakers = [asyncio.ensure_future(self._stopping.wait())]
        ready = getattr(exc, "ready", None)
        if isinstance(ready, asyncio.Event):
            wakers.append(asyncio.ensure_future(ready.wait()))
        try:
            await asyncio.wait(wakers, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waker in wakers:
                waker.cancel()
            self._held.dec()
        return True

    async def _requeue_fresh(self, message: AbstractIncomingMessage) -> bool:
        """A delivery held for `hold_limit` goes back to the end of its queue as a fresh copy
        (its returns so far carried on, none added: waiting is not failing), before RabbitMQ's
        consumer timeout closes the channel, returns every delivery on it and counts that.
        False when the copy cannot be stored yet: keep holding it."""
        if not await self._fresh_copy(message, "requeued_fresh"):
            return False
        log.info("held for long; it waits at the end of its queue", held_for=self.broker.hold_limit)
        return True

    async def _refresh(self, message: AbstractIncomingMessage) -> bool:
        """Republish a delivery that was returned often as a fresh copy (so its returns do not
        reach the broker's delivery limit), then ack it. False: handle it as it is."""
        returns = int_header(message, topology.H_RETURNS) + delivery_count(message)
        if returns >= topology.MAX_RETURNS:
            await self._park(
                message,
                f"returned {returns} times without being settled (does it stop the worker?)",
                tell=True,
            )
            return True
        if not await self._fresh_copy(message, "refreshed"):
            return False
        log.info("delivery returned often; it continues as a fresh copy", returns=returns)
        return True

    async def _fresh_copy(self, message: AbstractIncomingMessage, outcome: str) -> bool:
        """Publish `message` again at the end of its queue, carrying its returns so far in a
        header, then ack it (counted as `outcome`). False when the copy could not be stored:
        the delivery is untouched."""
        returns = int_header(message, topology.H_RETURNS) + delivery_count(message)
        copy = topology.copy_message(message, {topology.H_RETURNS: returns})
        try:
            await self.broker.publish("", self.queue_name, copy)
        except PublishFailed as exc:
            log.info("could not store a fresh copy of a delivery yet", error=str(exc))
            return False
        MESSAGES_HANDLED.labels(self.worker, outcome).inc()
        await self._ack(message)
        return True

    async def _park(
        self, message: AbstractIncomingMessage, reason: str, *, tell: bool = False
    ) -> None:
        """Park `message` with `reason`; `tell`: first run the park hook (the handler did not
        get to report the failure itself)."""
        backoff = Backoff()
        while True:
            try:
                if tell and self._on_park is not None:
                    try:
                        await self._on_park(message, reason)
                    except PublishFailed:
                        raise  # held below, and told again
                    except Exception:  # the park itself matters more
                        log.exception("park hook failed; parking anyway")
                    tell = False
                await park(self.broker, self.stage, message, reason)
                break
            except PublishFailed as exc:
                if not await self._hold(message, backoff, exc):
                    return
        log.warning("message parked", reason=reason, parked_in=topology.parked_queue(self.stage))
        MESSAGES_HANDLED.labels(self.worker, "parked").inc()
        await self._ack(message)

    async def _give_back(self, message: AbstractIncomingMessage) -> None:
        MESSAGES_HANDLED.labels(self.worker, "given_back").inc()
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except Exception as exc:  # ChannelInvalidStateError after a reconnect: redelivered
            log.warning("ack failed; the broker will redeliver", error=str(exc))
