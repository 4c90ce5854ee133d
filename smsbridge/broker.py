"""RabbitMQ connections: one for publishing (confirmed), one for consuming.

The first connect is retried forever in the background so a component can start before the
broker; afterwards aio-pika's robust connection reconnects and restores channels/consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from smsbridge import topology
from smsbridge.config import mask_url
from smsbridge.logs import get_logger

log = get_logger(__name__)


class PublishFailed(Exception):
    """The broker did not confirm the message as stored and routed: treat it as not stored."""


class Broker:
    def __init__(self, url: str, name: str, *, publish_timeout: float = 2.0) -> None:
        self._url = url
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
                    broker=mask_url(self._url),
                    error=str(exc),
                    retry_in=delay,
                )
                await self._close_connections()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._connected.set()
        log.info("broker connected", broker=mask_url(self._url), component=self.name)

    async def _connect(self) -> None:
        props: dict[str, Any] = {"connection_name": f"smsbridge-{self.name}-pub"}
        self._pub_conn = await aio_pika.connect_robust(
            self._url, client_properties=props, timeout=5
        )
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
            props: dict[str, Any] = {"connection_name": f"smsbridge-{self.name}-sub"}
            self._sub_conn = await aio_pika.connect_robust(
                self._url, client_properties=props, timeout=5
            )
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
