"""Per-account send pacing: never more than Flowroute's limit in any one-second window.

Flowroute counts *attempts* (retries included) per access key in 1-second windows whose
alignment we cannot see. A sliding window guarantees at most `n` attempts in any interval of
`n / rate` seconds, hence in any aligned window too; `margin` absorbs network jitter between
our clock and theirs.

Slots are reserved in arrival order (FIFO) and waited for outside any lock, so a waiter can
give up (the worker stops, the account is held) without holding up those behind it; a slot
given up is simply not used.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time


class SlidingWindowLimiter:
    def __init__(self, rate: float, margin: float = 0.05) -> None:
        self.count = max(1, math.floor(rate))
        # How late after its slot an attempt may start and still keep to the limit.
        self.margin = margin
        # At least a whole second: with a fractional rate over 1 (5.5/s) a shorter window
        # would let two windows' worth land in one of Flowroute's aligned seconds.
        self.window = max(1.0, self.count / rate) + margin
        self._starts: collections.deque[float] = collections.deque(maxlen=self.count)

    def prime(self) -> None:
        """Act as if a full window of attempts just happened: taking over an account from a
        replica that died, we cannot know what it sent in its last second."""
        now = time.monotonic()
        self._starts.extend([now] * self.count)

    def reserve(self) -> float:
        """Reserve the next slot; returns the monotonic time at which it starts."""
        start = time.monotonic()
        if len(self._starts) == self.count:
            start = max(start, self._starts[0] + self.window)
        self._starts.append(start)
        return start

    async def acquire(self, abort: asyncio.Event | None = None) -> float | None:
        """Wait for a slot; returns the monotonic time it started (an attempt keeps to the limit
        when it starts within `margin` of that), or None if `abort` was set first (the slot
        goes unused)."""
        start = self.reserve()
        wait = start - time.monotonic()
        if abort is None:
            if wait > 0:
                await asyncio.sleep(wait)
            return start
        if abort.is_set():
            return None
        if wait > 0:
            try:
                await asyncio.wait_for(abort.wait(), wait)
            except TimeoutError:
                return start
            return None
        return start
