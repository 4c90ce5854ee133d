"""Runs components in one process until SIGINT/SIGTERM, then shuts down gracefully:
the gateway stops accepting and finishes requests in flight (their confirms awaited),
consumers stop taking deliveries and finish theirs, then the ledger and broker connections
close. This is the composition root: it wires the ledger (when configured) into the workers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web

from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger
from smsbridge.safety import log_startup_warnings
from workers.consumer import Consumer

log = get_logger(__name__)

WORKER_KINDS = ("resolver", "media", "outbound")


@dataclass
class Running:
    """What was started, so it can be stopped in the right order."""

    brokers: list[Broker] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    ledgers: list[Ledger] = field(default_factory=list)
    gateway: web.AppRunner | None = None
    metrics: web.AppRunner | None = None
    console: web.AppRunner | None = None

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.cleanup()
        if self.console is not None:
            await self.console.cleanup()
        if self.gateway is not None:
            await self.gateway.cleanup()
        # All at once: each consumer gives back what waits and lets sends in flight finish,
        # well inside an orchestrator's grace period (compose: 40 s) before its SIGKILL.
        started = time.monotonic()
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers))
        consumers_done = time.monotonic()
        for close in self.closers:
            await close()
        for ledger in self.ledgers:
            await ledger.close()
        for broker in self.brokers:
            await broker.close()
        if self.consumers:
            log.info(
                "consumers stopped",
                consumers_seconds=round(consumers_done - started, 2),
                total_seconds=round(time.monotonic() - started, 2),
            )


def _broker(config: Config, name: str) -> Broker:
    return Broker(
        config.broker.addresses(),
        name,
        publish_timeout=config.broker.publish_timeout,
        hold_limit=config.broker.hold_limit_seconds,
    )


async def _ledger(config: Config, name: str, running: Running) -> Ledger | None:
    """The process's ledger connection (one, shared by its workers), if one is configured."""
    if config.ledger is None:
        return None
    if not running.ledgers:
        ledger = Ledger(config.ledger, name)
        await ledger.start()
        running.ledgers.append(ledger)
    return running.ledgers[0]


async def start_worker(config: Config, kind: str, running: Running) -> None:
    broker = _broker(config, kind)
    running.brokers.append(broker)
    if kind == "resolver":
        from smsbridge.ledger.inbound import LedgerClaims
        from workers.resolver import Resolver

        ledger = await _ledger(config, kind, running)
        claims = LedgerClaims(ledger, ttl=config.gateway.dedupe_seconds) if ledger else None
        consumers = [Resolver(config, broker, claims, ledger).consumer()]
    elif kind == "media":
        from workers.media import MediaWorker

        media = MediaWorker(config, broker)
        await media.start()
        running.closers.append(media.close)
        consumers = [media.consumer()]
    elif kind == "outbound":
        from smsbridge.ledger.outbound import LedgerSendClaims
        from workers.outbound import OutboundWorker
        from workers.recorder import Recorder

        ledger = await _ledger(config, kind, running)
        send_claims = None
        if ledger is not None:
            lease = timedelta(seconds=max(30.0, config.outbound.request_timeout + 15))
            send_claims = LedgerSendClaims(
                ledger, lease=lease, ttl=config.outbound.sent_ids_seconds
            )
        outbound = OutboundWorker(config, broker, send_claims, ledger)
        running.closers.append(outbound.close)
        await outbound.start()
        consumers = outbound.consumers()
        if ledger is not None:
            assert config.ledger is not None
            recorder = Recorder(
                broker,
                ledger,
                retention_days=config.ledger.retention_days,
                prefetch=config.broker.prefetch,
            )
            await recorder.start()
            running.closers.append(recorder.close)
            consumers.append(recorder.consumer())
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    running.consumers.extend(consumers)

    async def consume() -> None:
        for consumer in consumers:
            await consumer.start()

    broker.on_connect(consume)
    await broker.start()


async def start(
    config: Config, gateway: bool, workers: list[str], console: bool = False
) -> Running:
    """Start the gateway and `workers`, and the console (history API and pages) when asked
    and [ledger] and [console] are set."""
    running = Running()
    if config.ledger is None and workers:
        log.warning(
            "no [ledger] configured: duplicates are collapsed within each process only (not "
            "across replicas or restarts), and no message history is kept"
        )
    try:
        if config.metrics.listen is not None:
            from smsbridge.metrics import serve as serve_metrics

            running.metrics = await serve_metrics(config.metrics.listen)
        if gateway:
            from gateway.app import serve

            running.gateway = await serve(config)
        for kind in workers:
            await start_worker(config, kind, running)
        if console and config.console is not None and config.ledger is None:
            log.warning("[console] is configured but [ledger] is not: the console is not served")
        if console and config.ledger is not None and config.console is not None:
            from console.app import serve as serve_console

            ledger = await _ledger(config, "console", running)
            console_broker = _broker(config, "console")
            running.brokers.append(console_broker)
            await console_broker.start()
            running.console = await serve_console(config, ledger=ledger, broker=console_broker)
    except BaseException:
        await running.stop()
        raise
    return running


async def run_until_signalled(
    config: Config, gateway: bool, workers: list[str], console: bool = False
) -> None:
    log_startup_warnings(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = await start(config, gateway, workers, console)
    log.info(
        "smsbridge running",
        gateway=gateway,
        workers=workers,
        console=console,
        event_loop=type(loop).__module__.split(".")[0],
    )
    await stop.wait()
    log.info("shutting down")
    await running.stop()
    log.info("stopped")
