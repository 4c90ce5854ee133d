"""Delay queues: how an outbound request waits without holding a delivery.

A request that has to wait (a transient failure, an unknown outcome that must be looked up
later, an account that was held, quiet hours) is republished to a TTL queue and acked; when
the TTL expires the broker dead-letters it back to its account queue. Holding it unacked
instead would block a prefetch slot and, after the broker's consumer timeout, return it and
count that against the queue's delivery limit.

The tiers are the configured `retry_delays` plus fixed waiting tiers; a wait longer than the
largest tier goes round again, so any wait is served by a few hops.
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker

WAIT_TIERS = (1.0, 5.0, 30.0, 300.0, 3600.0)


def all_tiers(retry_delays: list[float]) -> list[float]:
    return sorted(set(retry_delays) | set(WAIT_TIERS))


class Delays:
    def __init__(self, broker: Broker, retry_delays: list[float]) -> None:
        self.broker = broker
        self.tiers = all_tiers(retry_delays)

    def tier_for(self, seconds: float) -> float:
        """The longest tier that does not overshoot `seconds` (the shortest if all do)."""
        fitting = [t for t in self.tiers if t <= seconds]
        return fitting[-1] if fitting else self.tiers[0]

    async def later(
        self,
        message: AbstractIncomingMessage,
        account: str,
        seconds: float,
        headers: dict[str, Any],
        *,
        exact_tier: float | None = None,
    ) -> float:
        """Send `message` back to `account`'s queue in about `seconds` (or after exactly the
        tier `exact_tier`); returns the delay used. The caller acks the delivery after."""
        tier = exact_tier if exact_tier is not None else self.tier_for(seconds)
        copy = topology.copy_message(
            message, {**headers, topology.H_RETRY_TIER: topology.retry_tier(tier)}
        )
        # The routing key decides where the TTL queue dead-letters it: the account's queue.
        await self.broker.deliver(topology.RETRY, topology.account_key(account), copy)
        return tier
