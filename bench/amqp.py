"""RabbitMQ side of the benchmarks: the topology, a PBX-like collector, bulk pre-filling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import ChannelClosed
from aiormq.abc import DeliveredMessage

from smsbridge import topology

_reconnects = 0


def reconnects() -> int:
    """How often a benchmark connection had to reconnect: the broker went away meanwhile."""
    return _reconnects


def _count_reconnect(*_: Any) -> None:
    global _reconnects
    _reconnects += 1


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(url, client_properties={"connection_name": "bench"})
    conn.reconnect_callbacks.add(_count_reconnect)
    try:
        yield conn
    finally:
        await conn.close()


async def declare_topology(conn: AbstractRobustConnection) -> None:
    """The bridge's common topology (every component also declares it at start)."""
    channel = await conn.channel()
    await topology.declare(channel)
    await channel.close()


async def queue_info(conn: AbstractRobustConnection, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue, by a passive declare on a throwaway channel."""
    channel = await conn.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        if not channel.is_closed:
            await channel.close()


async def wait_consumers(
    conn: AbstractRobustConnection, name: str, n: int = 1, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await queue_info(conn, name))[1] >= n:
                return
        except ChannelClosed:
            pass  # not declared yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"no consumer on {name} after {timeout} s")
        await asyncio.sleep(0.1)


async def wait_empty(conn: AbstractRobustConnection, name: str, timeout: float = 120.0) -> float:
    """Wait until a queue has no ready messages; returns when that was seen (monotonic)."""
    deadline = time.monotonic() + timeout
    while (await queue_info(conn, name))[0] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not drained after {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def purge(conn: AbstractRobustConnection, name: str) -> None:
    channel = await conn.channel()
    queue = await channel.get_queue(name, ensure=False)
    await queue.purge()
    await channel.close()


@dataclass
class Arrival:
    at: float  # time.time() when it reached the collector
    routing_key: str
    raw: bytes
    _body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = orjson.loads(self.raw)
        return self._body


@dataclass
class Collector:
    """A PBX service's durable quorum queue bound to ``smsbridge.events`` (as in the README),
    consumed with auto-ack; records every arrival with its wall-clock time.

    It consumes through aiormq directly and parses bodies only when asked: it shares the CPU
    with the components under test, so it must cost as little as possible per message."""

    arrivals: list[Arrival] = field(default_factory=list)
    channel: AbstractChannel | None = None

    async def start(
        self, conn: AbstractRobustConnection, patterns: Sequence[str], name: str = "pbx.bench"
    ) -> None:
        self.channel = await conn.channel()
        await self.channel.set_qos(prefetch_count=2000)
        queue = await self.channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for pattern in patterns:
            await queue.bind(topology.EVENTS, pattern)
        underlay = await self.channel.get_underlay_channel()
        await underlay.basic_consume(name, self._on_message, no_ack=True)

    async def _on_message(self, message: DeliveredMessage) -> None:
        self.arrivals.append(Arrival(time.time(), message.routing_key or "", message.body))

    async def wait_for(
        self, count: int, *, stall: float = 15.0, cap: float = 600.0, where: Any = None
    ) -> bool:
        """Wait until ``count`` arrivals (matching ``where(arrival)`` if given); False when
        nothing new arrived for ``stall`` seconds or ``cap`` passed."""
        seen = -1
        checked = 0
        matched = 0
        last_progress = time.monotonic()
        deadline = last_progress + cap
        while True:
            arrivals = self.arrivals
            if where is None:
                matched = len(arrivals)
            else:  # incrementally: the list only grows
                end = len(arrivals)
                matched += sum(1 for a in arrivals[checked:end] if where(a))
                checked = end
            if matched >= count:
                return True
            now = time.monotonic()
            if len(arrivals) != seen:
                seen, last_progress = len(arrivals), now
            elif now - last_progress > stall or now > deadline:
                return False
            await asyncio.sleep(0.1)


def json_message(body: bytes, message_id: str, type_: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        type=type_,
    )


async def publish_many(
    conn: AbstractRobustConnection,
    exchange: str,
    routing_key: str,
    messages: Iterable[aio_pika.Message],
    batch: int = 500,
) -> int:
    """Publish with confirms, ``batch`` in flight at a time; returns how many."""
    channel = await conn.channel(publisher_confirms=True)
    ex = await channel.get_exchange(exchange, ensure=False)
    pending: list[aio_pika.Message] = []
    total = 0
    for message in messages:
        pending.append(message)
        if len(pending) >= batch:
            await asyncio.gather(*(ex.publish(m, routing_key, mandatory=True) for m in pending))
            total += len(pending)
            pending.clear()
    if pending:
        await asyncio.gather(*(ex.publish(m, routing_key, mandatory=True) for m in pending))
        total += len(pending)
    await channel.close()
    return total
