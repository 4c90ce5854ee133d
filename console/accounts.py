"""Provider accounts for the console: what their senders last reported to the ledger (held or
not, sends and 429s over the last minute) and how many requests wait in each account's queue."""

from __future__ import annotations

import asyncio
import contextlib

from schemas.history import Account
from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.ledger import accounts
from smsbridge.ledger.connection import Ledger

DEPTH_TIMEOUT = 5.0
_DEPTHS_AT_ONCE = 16


async def _depth(broker: Broker, queue: str, limit: asyncio.Semaphore) -> int | None:
    """Ready messages in `queue`; None when the broker cannot say (down, or no such queue
    because no outbound worker declared it yet)."""
    if not broker.ready:
        return None
    with contextlib.suppress(Exception):
        async with limit:
            return await asyncio.wait_for(broker.queue_depth(queue), DEPTH_TIMEOUT)
    return None


async def overview(config: Config, ledger: Ledger, broker: Broker) -> list[Account]:
    names = [provider.name for provider in config.providers]
    states = await accounts.states(ledger, names)
    limit = asyncio.Semaphore(_DEPTHS_AT_ONCE)
    depths = await asyncio.gather(
        *(_depth(broker, topology.account_queue(name), limit) for name in names)
    )
    return [
        Account(
            name=state.name,
            held=state.held,
            held_since=state.held_since,
            held_reason=state.held_reason,
            queue_depth=depth,
            sent_last_minute=state.sent_last_minute,
            rate_limited_last_minute=state.rate_limited_last_minute,
        )
        for state, depth in zip(states, depths, strict=True)
    ]
