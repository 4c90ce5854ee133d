"""Per-account send pacing: never more than Flowroute's limit in any one-second window.

Flowroute counts *attempts* (retries included) per access key in 1-second windows whose
alignment we cannot see. A sliding window guarantees at most `n` attempts in any interval of
`n / rate` seconds, hence in any aligned window too; `margin` absorbs network jitter between
our clock and theirs.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time


class SlidingWindowLimiter:
    def __init__(self, rate: float, margin: float = 0.05) -> None:
        self.count = max(1, math.floor(rate))
        # At least a whole second: with a fractional rate over 1 (5.5/s) a shorter window
        # would let two windows' worth land in one of Flowroute's aligned seconds.
        self.window = max(1.0, self.count / rate) + margin
        self._sent: collections.deque[float] = collections.deque(maxlen=self.count)
        self._lock = asyncio.Lock()

    def prime(self) -> None:
        """Act as if a full window of attempts just happened: taking over an account from a
        replica that died, we cannot know what it sent in its last second."""
        now = time.monotonic()
        self._sent.extend([now] * self.count)

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in arrival order
            if len(self._sent) == self.count:
                wait = self._sent[0] + self.window - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._sent.append(time.monotonic())
