"""Waiting for a dependency, as opposed to failing.

A message that merely has to wait (the broker cannot confirm our output, the ledger is away)
is never parked and never requeued in a loop: every requeue counts against a quorum queue's
delivery limit. Whoever raises `MustWait` leaves the message where it is; the consumer holds
the delivery and runs the handler again after a growing pause (`Backoff`).
"""

from __future__ import annotations

import random
import time


class MustWait(Exception):
    """A dependency cannot take our output right now; try again later, nothing is wrong with
    the message."""


class Backoff:
    """Growing, capped pauses with jitter: 0.5 s, 1 s, 2 s, ... up to `cap`."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0
        self.started: float | None = None  # time.monotonic() of the first pause

    def next(self) -> float:
        if self.started is None:
            self.started = time.monotonic()
        delay = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return float(delay * random.uniform(0.8, 1.0))

    @property
    def waited(self) -> float:
        """Seconds since the first pause (0 before it)."""
        return 0.0 if self.started is None else time.monotonic() - self.started

    def reset(self) -> None:
        self.attempts = 0
        self.started = None
