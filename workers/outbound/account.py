"""One provider account (one access key): its client, its pace, and whether its keys work.

When Flowroute refuses the keys (401/403) the account is *held*: nothing is sent, and its
queue is no longer consumed (the worker pauses that consumer), so the backlog waits in
RabbitMQ, not as unacked deliveries that the broker's consumer timeout would return (and
count). One background probe checks the keys with growing backoff, without sending anything;
when they work again the consumer resumes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from smsbridge.config import ProviderConfig
from smsbridge.flowroute.client import AuthFailure, FlowrouteClient
from smsbridge.logs import get_logger
from smsbridge.metrics import ACCOUNT_HELD
from workers.consumer import DeliveryLost, channel_open
from workers.outbound.ratelimit import SlidingWindowLimiter

log = get_logger(__name__)

HOLD_BACKOFF_MAX = 30.0  # seconds between key probes, at most


class AccountHeld(Exception):
    """The account was held while this request waited for its turn: it was not sent."""


@dataclass(frozen=True, slots=True)
class Records:
    """The account's message records at Flowroute as listed at `listed_at`, sent in [since,
    until): one listing settles every in-doubt send it covers (a replica that died mid-load
    can leave hundreds)."""

    since: datetime
    until: datetime
    listed_at: datetime
    records: list[Any]

    def cover(self, attempt: datetime, margin: timedelta, settle: float) -> bool:
        """Whether they show an attempt made at `attempt`: a window `margin` either side of
        it, listed at least `settle` seconds after it (Flowroute's records lag)."""
        return (
            self.since <= attempt - margin
            and attempt + margin <= self.until
            and self.listed_at >= attempt + timedelta(seconds=settle)
        )


class LastMinute:
    """How many sends (and 429s) an account had over the last minute."""

    def __init__(self) -> None:
        self._events: collections.deque[tuple[float, str]] = collections.deque()

    def add(self, outcome: str) -> None:
        self._events.append((time.monotonic(), outcome))

    def counts(self) -> collections.Counter[str]:
        horizon = time.monotonic() - 60
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
        return collections.Counter(outcome for _, outcome in self._events)


@dataclass
class Account:
    provider: ProviderConfig
    client: FlowrouteClient
    sms: SlidingWindowLimiter
    mms: SlidingWindowLimiter
    on_hold: Callable[[], None] = lambda: None
    on_release: Callable[[], None] = lambda: None
    held_since: float | None = None  # epoch seconds
    held_reason: str | None = None
    last_minute: LastMinute = field(default_factory=LastMinute)
    draining: bool = False  # shutting down: give deliveries back instead of sending them
    fresh: bool = True  # no delivery yet since our consumer (re)opened
    # Set while waiters for a slot must stop waiting: draining, or held.
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    # Looking up sends whose outcome is unknown, one at a time (see sender.py), and the
    # account's message records as last listed for that.
    reconciling: asyncio.Lock = field(default_factory=asyncio.Lock)
    records: Records | None = None
    _prober: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def held(self) -> bool:
        return self.held_since is not None

    def opened(self) -> None:
        self.fresh = True

    def drain(self) -> None:
        self.draining = True
        self.interrupt.set()

    async def slot(self, is_mms: bool, delivery: AbstractIncomingMessage) -> float:
        """Wait for this account's next send slot; returns the monotonic time it started (the
        attempt must start within `slot_margin` of it). Raises DeliveryLost when the delivery
        must be given back (stopping, or its channel closed: the broker hands it to another
        replica, and sending it here too would duplicate it and break the rate), AccountHeld
        when the keys were refused meanwhile."""
        if self.fresh:
            # The first delivery after (re)opening may mean we just became the account's
            # active consumer: the previous one may have used this second's whole allowance.
            self.fresh = False
            self.sms.prime()
            self.mms.prime()
        limiter = self.mms if is_mms else self.sms
        start = await limiter.acquire(self.interrupt)
        if self.draining or not channel_open(delivery):
            raise DeliveryLost()
        if start is None or self.held:
            raise AccountHeld()
        return start

    def slot_margin(self, is_mms: bool) -> float:
        """How long after `slot` returned an attempt may still start: the rate limit holds as
        long as every attempt starts within this of its slot."""
        return (self.mms if is_mms else self.sms).margin

    def hold(self, exc: AuthFailure) -> None:
        if self.held:
            return
        self.held_since = time.time()
        self.held_reason = exc.reason
        self.interrupt.set()
        ACCOUNT_HELD.labels(self.name).set(1)
        log.error(
            "provider account refused our keys; sending held until they work",
            account=self.name,
            reason=exc.reason,
        )
        self.on_hold()
        self._prober = asyncio.create_task(self._probe(), name=f"probe-{self.name}")

    async def _probe(self) -> None:
        delay = 1.0
        while self.held:
            await asyncio.sleep(delay)
            delay = min(delay * 2, HOLD_BACKOFF_MAX)
            try:
                await self.client.check_auth()
            except AuthFailure as exc:
                log.error(
                    "provider account still refuses our keys; sending held",
                    account=self.name,
                    reason=exc.reason,
                    retry_in=delay,
                )
                continue
            except Exception as exc:  # not a refusal of the keys: let sending find out
                log.warning("key probe inconclusive; resuming", account=self.name, error=str(exc))
            self.release()

    def release(self) -> None:
        if not self.held:
            return
        log.warning("provider account keys work again; sending resumed", account=self.name)
        self.held_since = None
        self.held_reason = None
        ACCOUNT_HELD.labels(self.name).set(0)
        if not self.draining:
            self.interrupt.clear()
        self.on_release()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
