"""Delay queues: how a message waits without holding a delivery.

A message that has to wait (an outbound request after a transient failure, an unknown outcome
to look up later, a held account, quiet hours; an MMS whose media could not be fetched yet)
is republished to a TTL queue and acked; when the TTL expires the broker dead-letters it back
through `smsbridge.internal` with its routing key, to the queue it came from. Holding it unacked
instead would block a prefetch slot and, after the broker's consumer timeout, return it and
count that against the queue's delivery limit.

The tiers are fixed waiting tiers plus those a component configures (`outbound.retry_delays`,
`media.retry_delays`); a wait longer than the largest tier goes round again, so any wait is
served by a few hops. Every component declares the fixed tiers (topology.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker


def all_tiers(configured: Iterable[float]) -> list[float]:
    return sorted(set(configured) | set(topology.WAIT_TIERS))


class Delays:
    def __init__(self, broker: Broker, configured: Iterable[float] = ()) -> None:
        self.broker = broker
        self.tiers = all_tiers(configured)

    def tier_for(self, seconds: float) -> float:
        """The longest tier that does not overshoot `seconds` (the shortest if all do)."""
        fitting = [t for t in self.tiers if t <= seconds]
        return fitting[-1] if fitting else self.tiers[0]

    async def later(
        self,
        message: AbstractIncomingMessage,
        routing_key: str,
        seconds: float,
        headers: dict[str, Any],
        *,
        exact_tier: float | None = None,
        body: bytes | None = None,
    ) -> float:
        """Send `message` (with `body` instead of its own, if given) back through
        `routing_key` in about `seconds` (or after exactly the tier `exact_tier`); returns the
        delay used. The caller acks the delivery after."""
        tier = exact_tier if exact_tier is not None else self.tier_for(seconds)
        copy = topology.copy_message(
            message, {**headers, topology.H_RETRY_TIER: topology.retry_tier(tier)}, body
        )
        # The routing key decides where the TTL queue dead-letters it.
        await self.broker.deliver(topology.RETRY, routing_key, copy)
        return tier
