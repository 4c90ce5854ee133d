"""Waiting for a dependency, as opposed to failing.

A message that merely has to wait (the broker cannot confirm our output, the ledger is away)
is never parked and never requeued in a loop: every requeue counts against a quorum queue's
delivery limit. Whoever raises `MustWait` leaves the message where it is; the consumer holds
the delivery and runs the handler again after a growing pause (`Backoff`).
"""

from __future__ import annotations

import random


class MustWait(Exception):
    """A dependency cannot take our output right now; try again later, nothing is wrong with
    the message."""


class Backoff:
    """Growing, capped pauses with jitter: 0.5 s, 1 s, 2 s, ... up to `cap`."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.attempts = 0
