"""Outbound worker: OutboundRequests from the PBX -> Flowroute's /messages API.

Two stages, each its own consumer:
1. intake (`intake.py`, queue `smsbridge.outbound.requests`, any replica): validate and
   resolve the request, queue a send job on its provider account's queue;
2. account senders (`sender.py`, queue `smsbridge.outbound.account.<name>`, a single active
   consumer across replicas): pace, send, record, publish the status.
`account.py` holds an account's client, pace and hold state; smsbridge/delays.py the delay
queues through which requests wait; `ratelimit.py` the sliding window.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.delays import Delays, all_tiers
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.ledger import accounts, optouts
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger
from smsbridge.metrics import ACCOUNT_QUEUE_DEPTH
from smsbridge.once import MemorySendClaims, SendClaims
from smsbridge.waiting import Backoff
from workers.consumer import Consumer
from workers.outbound.account import Account
from workers.outbound.intake import Intake, tell_failed
from workers.outbound.ratelimit import SlidingWindowLimiter
from workers.outbound.sender import Sender

__all__ = ["OutboundWorker"]

log = get_logger(__name__)


REPORT_EVERY = 5.0  # seconds between reports of the accounts' state to the ledger


class OutboundWorker:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        claims: SendClaims | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.ledger = ledger
        self.settings = config.outbound
        self.claims = claims or MemorySendClaims(ttl=self.settings.sent_ids_seconds)
        self.intake = Intake(config, broker, self.claims, ledger)
        delays = Delays(broker, self.settings.retry_delays)
        opted_out = None
        if ledger is not None:  # the opt-out list lives there
            opted_out = functools.partial(optouts.is_opted_out, ledger)
        self.sender = Sender(config, broker, self.claims, delays, opted_out)
        self.accounts: dict[str, Account] = {}
        self._consumers: dict[str, Consumer] = {}
        self._session: aiohttp.ClientSession | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._pausing: set[asyncio.Task[None]] = set()
        self._report_task: asyncio.Task[None] | None = None
        broker.declare_also(self._declare)

    async def _declare(self, channel: AbstractChannel) -> topology.Topology:
        return await topology.declare_outbound(
            channel,
            [p.name for p in self.config.providers],
            all_tiers(self.settings.retry_delays),
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout, connect=5),
            connector=aiohttp.TCPConnector(limit=self.settings.concurrency * 2, limit_per_host=0),
            trust_env=False,
        )
        for provider in self.config.providers:
            account = Account(
                provider,
                FlowrouteClient(self._session, provider),
                SlidingWindowLimiter(provider.sms_per_second, self.settings.rate_margin),
                SlidingWindowLimiter(provider.mms_per_second, self.settings.rate_margin),
            )
            # A held account's queue is not consumed: its backlog waits in RabbitMQ.
            account.on_hold = self._in_background(account.name, "pause")
            account.on_release = self._in_background(account.name, "resume")
            self.accounts[provider.name] = account
        self._depth_task = asyncio.create_task(self._watch_depth(), name="outbound-depth")
        if self.ledger is not None:
            self._report_task = asyncio.create_task(
                self._report_accounts(self.ledger), name="outbound-accounts"
            )

    def _in_background(self, account: str, action: str) -> Callable[[], None]:
        def run() -> None:
            consumer = self._consumers.get(account)
            if consumer is None:
                return
            call = consumer.pause() if action == "pause" else _until_done(consumer.resume)
            task = asyncio.ensure_future(call)
            self._pausing.add(task)
            task.add_done_callback(self._pausing.discard)

        return run

    async def close(self) -> None:
        for task in (self._depth_task, self._report_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for account in self.accounts.values():
            await account.close()
        if self._session is not None:
            await self._session.close()

    def consumers(self) -> list[Consumer]:
        tell = functools.partial(tell_failed, self.broker)
        intake = Consumer(
            self.broker,
            topology.OUTBOUND_QUEUE,
            "outbound",
            self.intake.handle,
            prefetch=self.config.broker.prefetch,
            on_park=tell,
        )
        for name, account in self.accounts.items():
            self._consumers[name] = Consumer(
                self.broker,
                topology.account_queue(name),
                "outbound",
                self._sender(account),
                prefetch=self.settings.concurrency,
                on_open=account.opened,
                on_stop=account.drain,
                on_park=tell,
                # An HTTP send in flight finishes and is recorded before the stop.
                stop_timeout=self.settings.request_timeout + 5,
            )
        return [intake, *self._consumers.values()]

    def _sender(self, account: Account) -> Callable[[AbstractIncomingMessage], Awaitable[str]]:
        async def handle(message: AbstractIncomingMessage) -> str:
            return await self.sender.handle(account, message)

        return handle

    async def _report_accounts(self, ledger: Ledger) -> None:
        """For the console: each account this replica is sending for (or holding)."""
        reporter = f"{socket.gethostname()}:{os.getpid()}"
        was_held: set[str] = set()
        while True:
            await asyncio.sleep(REPORT_EVERY)
            for account in self.accounts.values():
                counts = account.last_minute.counts()
                if not (account.held or counts or account.name in was_held):
                    continue  # a standby replica: the active one reports
                if account.held:
                    was_held.add(account.name)
                else:
                    was_held.discard(account.name)
                held = account.held_since
                with contextlib.suppress(Exception):
                    await accounts.report(
                        ledger,
                        account.name,
                        held_since=datetime.fromtimestamp(held, UTC) if held else None,
                        held_reason=account.held_reason,
                        sent_last_minute=counts["sent"],
                        rate_limited_last_minute=counts["rate_limited"],
                        reporter=reporter,
                    )

    async def _watch_depth(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            for name in self.accounts:
                with contextlib.suppress(Exception):
                    depth = await self.broker.queue_depth(topology.account_queue(name))
                    ACCOUNT_QUEUE_DEPTH.labels(name).set(depth)


async def _until_done(action: Callable[[], Awaitable[None]]) -> None:
    """Resuming an account's consumer must not be lost to a passing broker error: the queue
    would never be consumed again until a restart."""
    backoff = Backoff()
    while True:
        try:
            await action()
            return
        except Exception as exc:
            log.warning("could not resume consuming; trying again", error=str(exc))
            await asyncio.sleep(backoff.next())
