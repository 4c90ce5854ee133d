"""Parked messages: see them, and send them back where they first entered after a fix.

A message that cannot be processed is parked in `smsbridge.parked.<stage>` with its reason in
headers (workers/consumer.py), or dead-lettered there by the broker. `smsbridge parked` and
the console's parked page both use these two functions.

Peeking takes messages without acking them and lets the broker return them when its channel
closes, so it never loses one. Re-queuing publishes each again (confirmed) with a clean slate
of retry headers, and only then acks it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker

PEEK_LIMIT = 500

_STAGE_ENTRY = {
    "inbound": (topology.INTERNAL, topology.INBOUND_KEY),
    "media": (topology.INTERNAL, topology.MEDIA_KEY),
    "outbound": (topology.OUTBOUND, topology.SEND_KEY),
}


@dataclass(frozen=True, slots=True)
class Parked:
    stage: str
    message_id: str
    reason: str | None
    parked_at: str | None
    original_exchange: str | None
    original_routing_key: str | None
    body: Any

    def view(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "reason": self.reason,
            "stage": self.stage,
            "parked_at": self.parked_at,
            "original_exchange": self.original_exchange,
            "original_routing_key": self.original_routing_key,
            "body": self.body,
        }


def _parked(stage: str, message: AbstractIncomingMessage) -> Parked:
    headers = message.headers or {}
    try:
        body: Any = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        body = message.body.decode("utf-8", "replace")

    def text(name: str) -> str | None:
        value = headers.get(name)
        return value if isinstance(value, str) else None

    reason = text(topology.H_REASON)
    if reason is None and headers.get("x-death"):
        reason = "returned too often without being settled (the broker's delivery limit)"
    return Parked(
        stage=stage,
        message_id=message.message_id or "",
        reason=reason,
        parked_at=text(topology.H_PARKED_AT),
        original_exchange=text(topology.H_ORIGINAL_EXCHANGE),
        original_routing_key=text(topology.H_ORIGINAL_KEY),
        body=body,
    )


def requeue_target(stage: str, message: AbstractIncomingMessage) -> tuple[str, str]:
    """Where a parked message first entered: our own headers when a worker parked it, the
    broker's x-death record when the broker dead-lettered it, else the stage's entry."""
    headers = message.headers or {}
    exchange, key = headers.get(topology.H_ORIGINAL_EXCHANGE), headers.get(topology.H_ORIGINAL_KEY)
    if isinstance(exchange, str) and isinstance(key, str) and key:
        return exchange, key
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys")
        exchange = death.get("exchange")
        if isinstance(exchange, str) and exchange and isinstance(keys, list) and keys:
            return exchange, str(keys[0])
    return _STAGE_ENTRY[stage]


async def peek(
    broker: Broker, stage: str, *, ids: set[str] | None = None, limit: int = PEEK_LIMIT
) -> list[Parked]:
    """Up to `limit` parked messages of a stage (those in `ids` only, if given), oldest first."""
    channel = await broker.consumer_channel(prefetch=1)
    found: list[Parked] = []
    try:
        queue = await channel.get_queue(topology.parked_queue(stage), ensure=False)
        seen = 0
        while seen < max(limit, len(ids or ())) * 4 and len(found) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            seen += 1
            if ids is None or message.message_id in ids:
                found.append(_parked(stage, message))
    finally:  # everything taken goes back when the channel closes
        with contextlib.suppress(Exception):
            await channel.close()
    return found


async def requeue(
    broker: Broker,
    stage: str,
    ids: set[str] | None = None,
    *,
    before_requeue: Callable[[str], Awaitable[None]] | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[Parked]:
    """Publish parked messages (all, or those in `ids`) again where they first entered, each
    acked only once its copy is confirmed. `before_requeue(message_id)` runs before each is
    published (the ledger reopens a request it had settled)."""
    channel = await broker.consumer_channel(prefetch=1)
    done: list[Parked] = []
    try:
        queue = await channel.get_queue(topology.parked_queue(stage), ensure=False)
        while (message := await queue.get(no_ack=False, fail=False, timeout=10)) is not None:
            if ids is not None and message.message_id not in ids:
                continue  # left unacked: returned to the queue when the channel closes
            exchange, key = requeue_target(stage, message)
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith("x-smsbridge-") and k not in topology.BROKER_HEADERS
            }
            again = topology.json_message(
                message.body,
                message_id=message.message_id or "",
                type_=message.type,
                headers=headers,
            )
            if before_requeue is not None:
                await before_requeue(message.message_id or "")
            await broker.publish(exchange, key, again)
            await message.ack()
            done.append(_parked(stage, message))
            if progress is not None:
                progress(1)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return done
