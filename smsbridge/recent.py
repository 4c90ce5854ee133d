"""Ids seen recently: how the gateway and the resolver publish each Flowroute message once.

Flowroute resends an unanswered message up to 4 more times, 30 s apart, and RabbitMQ
redelivers unacked messages after a reconnect. The ids live in this process's memory for
`ttl` seconds (see README: what holds with several replicas).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict


class RecentIds:
    def __init__(self, ttl: float, max_size: int = 500_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._done: OrderedDict[str, float] = OrderedDict()  # id -> expiry (monotonic)
        self._values: dict[str, str] = {}  # optional value remembered with an id
        self._pending: dict[str, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._done)

    def done(self, key: str) -> bool:
        expiry = self._done.get(key)
        return expiry is not None and expiry > time.monotonic()

    def value(self, key: str) -> str | None:
        """The value remembered with a done id (e.g. the provider's message id)."""
        return self._values.get(key) if self.done(key) else None

    def values(self) -> set[str]:
        """Every value remembered with an id that is still done."""
        now = time.monotonic()
        return {v for k, v in self._values.items() if self._done.get(k, 0.0) > now}

    def pending(self, key: str) -> asyncio.Future[bool] | None:
        """The outcome of the same id being handled right now, if it is."""
        return self._pending.get(key)

    def begin(self, key: str) -> None:
        self._pending[key] = asyncio.get_running_loop().create_future()

    def finish(self, key: str, ok: bool, value: str | None = None) -> None:
        """End `begin`: remember the id when `ok`, and tell anyone waiting on it."""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(ok)
        if ok and self.ttl > 0:
            now = time.monotonic()
            self._done[key] = now + self.ttl
            self._done.move_to_end(key)
            if value is not None:
                self._values[key] = value
            self._prune(now)

    def _prune(self, now: float) -> None:
        done = self._done
        while done:
            key, expiry = next(iter(done.items()))
            if expiry > now and len(done) <= self.max_size:
                break
            del done[key]
            self._values.pop(key, None)
