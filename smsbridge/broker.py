"""RabbitMQ connections: one for publishing (confirmed), one for consuming.

The first connect is retried forever in the background so a component can start before the
broker; afterwards aio-pika's robust connection reconnects and restores channels/consumers.
With several broker URLs (a cluster), every connect and reconnect tries the nodes in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from aio_pika.robust_connection import RobustConnection
from pamqp.commands import Basic
from yarl import URL

from smsbridge import topology
from smsbridge.config import mask_url
from smsbridge.logs import get_logger
from smsbridge.waiting import MustWait

log = get_logger(__name__)

SLOW_CONFIRM_WARNING = 30.0  # seconds between warnings while a publish waits for its confirm
FAN_OUT = frozenset({topology.EVENTS, topology.JOURNALED})  # exchanges with many queues


class PublishFailed(MustWait):
    """The broker did not confirm the message as stored and routed: treat it as not stored.

    `in_doubt`: the message reached the broker but its confirm never came back (the connection
    closed, or a bounded wait ran out): it may have been stored after all.
    """

    def __init__(self, reason: str, *, in_doubt: bool = False) -> None:
        super().__init__(reason)
        self.in_doubt = in_doubt


class NodeRotation(RobustConnection):
    """A robust connection to one of several cluster nodes: every connect and reconnect tries
    the nodes in turn, starting after the one used last (which may just have died)."""

    def __init__(self, nodes: Sequence[str], **kwargs: Any) -> None:
        self.nodes = [URL(n) for n in nodes]
        # Components spread over the nodes, so one node's failure is not everyone's.
        self._next = random.randrange(len(self.nodes))
        super().__init__(self.nodes[self._next], **kwargs)

    # RobustConnection's reconnect loop calls its private __connect_transport on every attempt.
    async def _RobustConnection__connect_transport(self) -> None:
        attempt = RobustConnection._RobustConnection__connect_transport  # type: ignore[attr-defined]
        error: BaseException | None = None
        for step in range(len(self.nodes)):
            index = (self._next + step) % len(self.nodes)
            self.url = self.nodes[index]
            try:
                await attempt(self)
            except CONNECTION_EXCEPTIONS as exc:
                error = exc
                continue
            self._next = (index + 1) % len(self.nodes)
            return
        assert error is not None
        raise error


async def connect(
    urls: str | Sequence[str], name: str, timeout: float = 5.0
) -> AbstractRobustConnection:
    """A robust connection to the first node of `urls` that answers."""
    nodes = [urls] if isinstance(urls, str) else list(urls)
    connection = NodeRotation(
        nodes, client_properties={"connection_name": name}, reconnect_interval=1.0
    )
    await connection.connect(timeout=timeout)
    return connection


class Broker:
    def __init__(
        self,
        urls: str | Sequence[str],
        name: str,
        *,
        publish_timeout: float = 2.0,
        hold_limit: float = 1200.0,
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        self.name = name
        self.publish_timeout = publish_timeout
        self.hold_limit = hold_limit  # see workers/consumer.py
        self._pub_conn: AbstractRobustConnection | None = None
        self._sub_conn: AbstractRobustConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._topology: topology.Topology | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._channel_renewed = 0.0
        self._retired: set[asyncio.Task[None]] = set()
        self._renewing = asyncio.Lock()
        self._extra: list[Callable[[AbstractChannel], Awaitable[topology.Topology]]] = []

    # -- lifecycle ---------------------------------------------------------------------
    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` once after the first successful connect (e.g. start consuming)."""
        self._on_connect.append(callback)

    def declare_also(
        self, declare: Callable[[AbstractChannel], Awaitable[topology.Topology]]
    ) -> None:
        """Declare more (e.g. per-account queues) with the common topology, before consuming."""
        self._extra.append(declare)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name=f"broker-{self.name}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._connect()
                # Ready before consuming starts: the first deliveries' publishes must not meet
                # "broker not connected".
                self._connected.set()
                for callback in self._on_connect:  # e.g. start consuming
                    await callback()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connected.clear()
                log.warning(
                    "broker connect failed",
                    broker=self._masked(),
                    error=str(exc),
                    retry_in=delay,
                )
                await self._close_connections()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.info("broker connected", broker=self._masked(), component=self.name)

    def _masked(self) -> str:
        return ", ".join(mask_url(u) for u in self._urls)

    async def _connect(self) -> None:
        self._pub_conn = await connect(self._urls, f"smsbridge-{self.name}-pub")
        # Returned (unroutable) messages come back as a Basic.Return result, checked below.
        self._pub_channel = await self._pub_conn.channel(
            publisher_confirms=True, on_return_raises=False
        )
        self._topology = await topology.declare(self._pub_channel)
        self._exchanges = dict(self._topology.exchanges)
        self._exchanges[""] = self._pub_channel.default_exchange  # straight to a named queue
        for declare in self._extra:
            extra = await declare(self._pub_channel)
            self._topology.exchanges.update(extra.exchanges)
            self._topology.queues.update(extra.queues)

    async def _renew_channel(self) -> None:
        """Publish on a new channel from now on. RabbitMQ 3.10's quorum-queue client remembers,
        per channel, the queue leader it first published to: a channel opened just after that
        node died is nacked for every publish until the node is back (found by the cluster
        fault test), while a channel opened later learns the new leader."""
        async with self._renewing:
            if time.monotonic() - self._channel_renewed < 1.0 or self._pub_conn is None:
                return
            self._channel_renewed = time.monotonic()
            try:
                channel = await self._pub_conn.channel(
                    publisher_confirms=True, on_return_raises=False
                )
                exchanges = {
                    name: await channel.get_exchange(name, ensure=False)
                    for name in self._exchanges
                    if name
                }
            except Exception as exc:
                log.warning("could not open a new publishing channel", error=str(exc))
                return
            exchanges[""] = channel.default_exchange
            old, self._pub_channel, self._exchanges = self._pub_channel, channel, exchanges
            log.info("publishing on a new channel after a nack")
            if old is not None:  # its publishes in flight still get their confirms
                self._retired.add(asyncio.create_task(_close_later(old, 60.0)))
                for task in list(self._retired):
                    if task.done():
                        self._retired.discard(task)

    async def _close_connections(self) -> None:
        for conn in (self._sub_conn, self._pub_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._pub_conn = self._sub_conn = None
        self._pub_channel = None

    async def close(self) -> None:
        for task in self._retired:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_connections()
        self._connected.clear()

    # -- state -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        conn, channel = self._pub_conn, self._pub_channel
        return (
            self._connected.is_set()
            and conn is not None
            and not conn.is_closed
            and channel is not None
            and not channel.is_closed
        )

    async def consumer_channel(self, prefetch: int) -> AbstractChannel:
        """A channel on the consuming connection, opened on first use: flow control on the
        publishing connection must not stall acks."""
        if self._sub_conn is None:
            self._sub_conn = await connect(self._urls, f"smsbridge-{self.name}-sub")
        channel = await self._sub_conn.channel()
        await channel.set_qos(prefetch_count=prefetch)  # per consumer; never global on quorum
        return channel

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (polling) until the publishing side is usable again, at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.25)
        return self.ready

    async def queue_depth(self, name: str) -> int:
        """Messages ready in a queue (a passive declare on a short-lived channel)."""
        if self._pub_conn is None:
            raise RuntimeError("broker not connected")
        channel = await self._pub_conn.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    # -- publishing --------------------------------------------------------------------
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        timeout: float | None = None,
    ) -> float:
        """Publish and wait at most `timeout` (default `publish_timeout`) for the broker's
        confirm; returns the confirm latency in seconds. For callers that must answer in time
        (the gateway answers 503 and Flowroute resends).

        Raises PublishFailed unless the message was acked *and* routed to a queue.
        """
        return await self._publish(exchange, routing_key, message, timeout or self.publish_timeout)

    async def deliver(self, exchange: str, routing_key: str, message: aio_pika.Message) -> float:
        """Publish and wait for the broker's confirm for as long as the connection lives.

        For workers. Under a memory or disk alarm the broker blocks the publishing connection
        without closing it: the publish simply waits (with a warning now and then) instead of
        timing out while the message may still be stored later, which would make a retry a
        duplicate. When the connection closes meanwhile, PublishFailed(in_doubt=True).
        """
        task = asyncio.ensure_future(self._publish(exchange, routing_key, message, None))
        waited = 0.0
        while True:
            done, _ = await asyncio.wait({task}, timeout=SLOW_CONFIRM_WARNING)
            if done:
                return task.result()
            waited += SLOW_CONFIRM_WARNING
            log.warning(
                "still waiting for the broker to confirm a publish (memory or disk alarm?)",
                exchange=exchange,
                routing_key=routing_key,
                waited_seconds=waited,
            )

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        timeout: float | None,
    ) -> float:
        if not self.ready:
            raise PublishFailed("broker not connected")
        ex = self._exchanges.get(exchange)
        if ex is None:
            raise PublishFailed(f"unknown exchange {exchange}")
        started = time.perf_counter()
        try:
            result = await ex.publish(message, routing_key, mandatory=True, timeout=timeout)
        except TimeoutError:
            raise PublishFailed("publish confirm timed out", in_doubt=True) from None
        except asyncio.CancelledError:
            raise
        except DeliveryError as exc:  # a nack: the broker refused it (e.g. a full queue)
            await self._renew_channel()
            # Where a publish reaches several queues, one that refuses makes the whole publish
            # a nack while the others keep their copy (RabbitMQ's reject-publish): stored,
            # perhaps, as far as its readers are concerned.
            raise PublishFailed(
                f"publish refused by the broker: {exc}", in_doubt=exchange in FAN_OUT
            ) from None
        except Exception as exc:  # channel closed or connection lost before the confirm
            raise PublishFailed(
                f"publish failed: {type(exc).__name__}: {exc}", in_doubt=True
            ) from None
        if not isinstance(result, Basic.Ack):
            raise PublishFailed("message returned unroutable")
        return time.perf_counter() - started


async def _close_later(channel: AbstractChannel, delay: float) -> None:
    await asyncio.sleep(delay)
    with contextlib.suppress(Exception):
        await channel.close()
