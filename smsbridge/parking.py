"""Parked messages: see them, and send them back where they first entered after a fix.

A message that cannot be processed is parked in `smsbridge.parked.<stage>` with its reason in
headers (workers/consumer.py), or dead-lettered there by the broker. `smsbridge parked` and
the console's parked page both use these functions.

Peeking takes messages without acking them and lets the broker return them when its channel
closes, so it never loses one. Re-queuing publishes each again (confirmed) with a clean slate
of retry headers, and only then acks it. It walks only what was parked when it began: a
message its worker parks again at once lands behind those and waits for the next requeue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.broker import Broker, PublishFailed

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


@dataclass(frozen=True, slots=True)
class NotRequeued:
    """A message left parked by a requeue, and why (e.g. unroutable where it first entered)."""

    message_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Requeued:
    done: list[Parked]
    not_requeued: list[NotRequeued]


class RequeueStopped(Exception):
    """A requeue stopped part way; `done` were requeued before it, the rest are still parked."""

    def __init__(self, reason: str, done: list[Parked]) -> None:
        super().__init__(
            f"{reason}; {len(done)} requeued before it stopped, the rest are still parked"
        )
        self.reason = reason
        self.done = done


async def requeue_report(
    broker: Broker,
    stage: str,
    ids: set[str] | None = None,
    *,
    before_requeue: Callable[[str], Awaitable[None]] | None = None,
    progress: Callable[[int], object] | None = None,
) -> Requeued:
    """Publish parked messages (all, or those in `ids`) again where they first entered, each
    acked only once its copy is confirmed, however long the broker takes (under a memory alarm
    a timed-out publish may still be stored later: a duplicate). `before_requeue(message_id)`
    runs before each is published (the ledger reopens a request it had settled).

    A message the broker refuses or cannot route stays parked (`not_requeued`) and the others
    go on; anything that leaves a publish in doubt, or the broker or ledger gone, stops the walk
    with RequeueStopped."""
    channel = await broker.consumer_channel(prefetch=1)
    done: list[Parked] = []
    left: list[NotRequeued] = []
    tried: set[str] = set()
    try:
        # How many are parked now bounds the walk: what is parked meanwhile (a worker that
        # parks a requeued message again at once) lands behind them and is not walked.
        queue = await channel.declare_queue(topology.parked_queue(stage), passive=True)
        for _ in range(queue.declaration_result.message_count or 0):
            if ids is not None and ids <= tried:
                break
            try:
                message = await queue.get(no_ack=False, fail=False, timeout=10)
            except Exception as exc:
                if not done:
                    raise  # nothing done yet: the broker's own error
                raise RequeueStopped(f"reading the parking queue failed: {exc!r}", done) from exc
            if message is None:
                break
            message_id = message.message_id or ""
            if (ids is not None and message_id not in ids) or (message_id and message_id in tried):
                continue  # left unacked: returned to the queue when the channel closes
            tried.add(message_id)
            try:
                await _requeue_one(broker, stage, message, before_requeue)
            except PublishFailed as exc:
                if exc.in_doubt or not broker.ready:
                    doubt = " (it may have been requeued as well)" if exc.in_doubt else ""
                    raise RequeueStopped(
                        f"publishing {message_id!r} failed{doubt}: {exc}", done
                    ) from exc
                left.append(NotRequeued(message_id, str(exc)))  # certainly not stored
                continue
            except RequeueStopped as exc:
                raise RequeueStopped(exc.reason, done) from exc
            except Exception as exc:
                raise RequeueStopped(
                    f"requeuing {message_id!r} failed: {type(exc).__name__}: {exc}", done
                ) from exc
            done.append(_parked(stage, message))
            if progress is not None:
                progress(1)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return Requeued(done, left)


async def _requeue_one(
    broker: Broker,
    stage: str,
    message: AbstractIncomingMessage,
    before_requeue: Callable[[str], Awaitable[None]] | None,
) -> None:
    exchange, key = requeue_target(stage, message)
    headers = {
        k: v
        for k, v in (message.headers or {}).items()
        if not k.startswith("x-smsbridge-") and k not in topology.BROKER_HEADERS
    }
    # What failed for good before may be tried again (a worker without a ledger remembers
    # its failures in memory).
    headers[topology.H_REQUEUED] = round(time.time() * 1000)
    again = topology.json_message(
        message.body, message_id=message.message_id or "", type_=message.type, headers=headers
    )
    if before_requeue is not None:
        await before_requeue(message.message_id or "")
    await broker.deliver(exchange, key, again)
    try:
        await message.ack()
    except Exception as exc:
        raise RequeueStopped(
            f"{message.message_id!r} was requeued but could not be removed from parking "
            f"(it is requeued and still parked): {type(exc).__name__}: {exc}",
            [],
        ) from exc
