"""Runs components in one process until SIGINT/SIGTERM, then shuts down gracefully:
the gateway stops accepting and finishes requests in flight (their confirms awaited),
consumers stop taking deliveries and finish theirs, then broker connections close."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.logs import get_logger
from workers.consumer import Consumer

log = get_logger(__name__)

WORKER_KINDS = ("resolver", "media", "outbound")


@dataclass
class Running:
    """What was started, so it can be stopped in the right order."""

    brokers: list[Broker] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    gateway: web.AppRunner | None = None

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.cleanup()
        for consumer in self.consumers:
            await consumer.stop()
        for close in self.closers:
            await close()
        for broker in self.brokers:
            await broker.close()


def _broker(config: Config, name: str) -> Broker:
    return Broker(config.broker.addresses(), name, publish_timeout=config.broker.publish_timeout)


async def start_worker(config: Config, kind: str, running: Running) -> None:
    broker = _broker(config, kind)
    running.brokers.append(broker)
    if kind == "resolver":
        from workers.resolver import Resolver

        consumers = [Resolver(config, broker).consumer()]
    elif kind == "media":
        from workers.media import MediaWorker

        media = MediaWorker(config, broker)
        await media.start()
        running.closers.append(media.close)
        consumers = [media.consumer()]
    elif kind == "outbound":
        from workers.outbound import OutboundWorker

        outbound = OutboundWorker(config, broker)
        running.closers.append(outbound.close)
        await outbound.start()
        consumers = outbound.consumers()
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    running.consumers.extend(consumers)

    async def consume() -> None:
        for consumer in consumers:
            await consumer.start()

    broker.on_connect(consume)
    await broker.start()


async def start(config: Config, gateway: bool, workers: list[str]) -> Running:
    running = Running()
    try:
        if gateway:
            from gateway.app import serve

            running.gateway = await serve(config)
        for kind in workers:
            await start_worker(config, kind, running)
    except BaseException:
        await running.stop()
        raise
    return running


async def run_until_signalled(config: Config, gateway: bool, workers: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = await start(config, gateway, workers)
    log.info("smsbridge running", gateway=gateway, workers=workers)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
    log.info("stopped")
