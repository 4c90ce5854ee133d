"""RabbitMQ connections: one for publishing (confirmed), one for consuming.

The first connect is retried forever in the background so a component can start before the
broker; afterwards aio-pika's robust connection reconnects and restores channels/consumers.
With several broker URLs (a cluster), every connect and reconnect tries the nodes in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from pamqp.commands import Basic
from yarl import URL

from smsbridge import topology
from smsbridge.config import mask_url
from smsbridge.logs import get_logger

log = get_logger(__name__)


class PublishFailed(Exception):
    """The broker did not confirm the message as stored and routed: treat it as not stored."""


class NodeRotation(RobustConnection):
    """A robust connection to one of several cluster nodes: every connect and reconnect tries
    the nodes in turn, starting after the one used last (which may just have died)."""

    def __init__(self, nodes: Sequence[str], **kwargs: Any) -> None:
        self.nodes = [URL(n) for n in nodes]
        self._next = 0
        super().__init__(self.nodes[0], **kwargs)

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
        self, urls: str | Sequence[str], name: str, *, publish_timeout: float = 2.0
    ) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        self.name = name
        self.publish_timeout = publish_timeout
        self._pub_conn: AbstractRobustConnection | None = None
        self._sub_conn: AbstractRobustConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._topology: topology.Topology | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
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
                for callback in self._on_connect:  # e.g. start consuming
                    await callback()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "broker connect failed",
                    broker=self._masked(),
                    error=str(exc),
                    retry_in=delay,
                )
                await self._close_connections()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._connected.set()
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
        for declare in self._extra:
            extra = await declare(self._pub_channel)
            self._topology.exchanges.update(extra.exchanges)
            self._topology.queues.update(extra.queues)

    async def _close_connections(self) -> None:
        for conn in (self._sub_conn, self._pub_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._pub_conn = self._sub_conn = None
        self._pub_channel = None

    async def close(self) -> None:
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
        """Publish and wait for the broker's confirm; returns the confirm latency in seconds.

        Raises PublishFailed unless the message was acked *and* routed to a queue.
        """
        if not self.ready:
            raise PublishFailed("broker not connected")
        ex = self._exchanges.get(exchange)
        if ex is None:
            raise PublishFailed(f"unknown exchange {exchange}")
        started = time.perf_counter()
        try:
            result = await ex.publish(
                message, routing_key, mandatory=True, timeout=timeout or self.publish_timeout
            )
        except TimeoutError:
            raise PublishFailed("publish confirm timed out") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nack (DeliveryError), channel closed, connection lost
            raise PublishFailed(f"publish failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, Basic.Ack):
            raise PublishFailed("message returned unroutable")
        return time.perf_counter() - started
