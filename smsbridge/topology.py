"""Every exchange and queue smsbridge uses, declared in one place.

Every component declares the whole topology idempotently at start, so any of them may start
first. Public names (the exchanges and message types PBX services use) are fixed; the rest is
internal.

    Flowroute -> gateway --internal:inbound--> smsbridge.inbound --resolver--> (journaled)
                        \\-internal:media--> smsbridge.media --media worker--/ (via inbound)
    resolver --smsbridge.events.journaled--> smsbridge.events (PBX queues, or unroutable)
                                        \\--> smsbridge.journal.inbound (a stream)
    PBX --smsbridge.outbound:send--> smsbridge.outbound.requests --outbound worker--> Flowroute
    any stage --parking:<stage>--> smsbridge.parked.<stage> (with the reason in headers)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    ExchangeType,
)

from schemas.names import EVENTS as EVENTS
from schemas.names import OUTBOUND as OUTBOUND
from schemas.names import SEND_KEY as SEND_KEY
from schemas.names import UNROUTABLE_QUEUE as UNROUTABLE_QUEUE
from schemas.names import inbound_key as inbound_key
from schemas.names import policy_key as policy_key
from schemas.names import status_key as status_key

# Public names (what PBX services use) live in schemas/names.py, the contract's home; they
# are imported above and used from here like the internal ones.

# Internal.
UNROUTABLE_AE = "smsbridge.unroutable.ae"
INTERNAL = "smsbridge.internal"
PARKING = "smsbridge.parking"
RETRY = "smsbridge.retry"
# InboundMessages are published here: it feeds smsbridge.events (whose alternate exchange still
# keeps what no PBX queue takes) and the journal, a stream that tells, after a lost confirm,
# whether a message was stored (see smsbridge/journal.py).
JOURNALED = "smsbridge.events.journaled"
JOURNAL_QUEUE = "smsbridge.journal.inbound"
JOURNAL_ARGUMENTS = {
    "x-queue-type": "stream",
    "x-max-age": "7D",
    "x-max-length-bytes": 2 * 1024**3,
    "x-stream-max-segment-size-bytes": 64 * 1024**2,
}

INBOUND_QUEUE = "smsbridge.inbound"  # webhooks waiting for the resolver
MEDIA_QUEUE = "smsbridge.media"  # MMS webhooks waiting for their media
OUTBOUND_QUEUE = "smsbridge.outbound.requests"  # PBX requests waiting for the outbound worker
QUARANTINE_QUEUE = "smsbridge.quarantine"  # refused webhook bodies, bounded, for inspection
QUARANTINE_MAX = 10_000

INBOUND_KEY = "inbound"
MEDIA_KEY = "media"
QUARANTINE_KEY = "quarantine"
STAGES = ("inbound", "media", "outbound")

# The broker dead-letters a message returned this many times (RabbitMQ 3.10 counts every
# return: nack-requeue, a channel or connection closing with it unacked, a consumer timeout).
DELIVERY_LIMIT = 10
# So that routine returns (restarts, blips) never use that up, a delivery returned this often
# is republished as a fresh copy, its returns carried on in H_RETURNS...
REFRESH_AT = 4
# ... and a message returned this often in all without ever being settled is parked: it takes
# its worker down each time (a crash loop), since handler errors are parked at once.
MAX_RETURNS = 50

# Every message header the bridge adds is namespaced.
H_REASON = "x-smsbridge-reason"
H_STAGE = "x-smsbridge-stage"
H_PARKED_AT = "x-smsbridge-parked-at"
H_ORIGINAL_EXCHANGE = "x-smsbridge-original-exchange"
H_ORIGINAL_KEY = "x-smsbridge-original-routing-key"
H_RETURNS = "x-smsbridge-returns"  # returns of earlier copies (see REFRESH_AT)
H_AUTO_REPLY = "x-smsbridge-auto-reply"  # an OutboundRequest answering a keyword (its family)
AUTO_REPLY_PREFIX = "auto-"  # ... whose id is this prefix and the keyword message's id
H_QUIET_NOTIFIED = "x-smsbridge-quiet-notified"  # status.progress "quiet hours" was published
H_REQUEUED = "x-smsbridge-requeued-at"  # epoch ms an operator requeued it from parking
# What the broker adds on redelivery and dead-lettering; a fresh copy starts without them.
BROKER_HEADERS = (
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
)


def parked_queue(stage: str) -> str:
    return f"smsbridge.parked.{stage}"


def work_queue_arguments(stage: str, **extra: Any) -> dict[str, Any]:
    """A quorum work queue whose failures are dead-lettered (at least once) to its parking queue."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": PARKING,
        "x-dead-letter-routing-key": stage,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
        **extra,
    }


@dataclass
class Topology:
    """Strong references to what was declared: robust channels only restore what is alive."""

    exchanges: dict[str, AbstractExchange] = field(default_factory=dict)
    queues: dict[str, AbstractQueue] = field(default_factory=dict)


async def declare(channel: AbstractChannel) -> Topology:
    topo = Topology()

    async def exchange(name: str, kind: ExchangeType, **arguments: Any) -> AbstractExchange:
        ex = await channel.declare_exchange(name, kind, durable=True, arguments=arguments or None)
        topo.exchanges[name] = ex
        return ex

    async def queue(name: str, arguments: dict[str, Any]) -> AbstractQueue:
        q = await channel.declare_queue(name, durable=True, arguments=arguments)
        topo.queues[name] = q
        return q

    quorum = {"x-queue-type": "quorum"}

    ae = await exchange(UNROUTABLE_AE, ExchangeType.FANOUT)
    await (await queue(UNROUTABLE_QUEUE, quorum)).bind(ae)
    await exchange(EVENTS, ExchangeType.TOPIC, **{"alternate-exchange": UNROUTABLE_AE})
    outbound = await exchange(
        OUTBOUND, ExchangeType.DIRECT, **{"alternate-exchange": UNROUTABLE_AE}
    )
    internal = await exchange(INTERNAL, ExchangeType.DIRECT)
    parking = await exchange(PARKING, ExchangeType.DIRECT)
    await exchange(RETRY, ExchangeType.HEADERS)
    journaled = await exchange(JOURNALED, ExchangeType.FANOUT)
    await topo.exchanges[EVENTS].bind(journaled)
    await (await queue(JOURNAL_QUEUE, JOURNAL_ARGUMENTS)).bind(journaled)

    for stage in STAGES:
        await (await queue(parked_queue(stage), quorum)).bind(parking, stage)
    quarantine_args = {**quorum, "x-max-length": QUARANTINE_MAX, "x-overflow": "drop-head"}
    await (await queue(QUARANTINE_QUEUE, quarantine_args)).bind(parking, QUARANTINE_KEY)

    await (await queue(INBOUND_QUEUE, work_queue_arguments("inbound"))).bind(internal, INBOUND_KEY)
    await (await queue(MEDIA_QUEUE, work_queue_arguments("media"))).bind(internal, MEDIA_KEY)
    await (await queue(OUTBOUND_QUEUE, work_queue_arguments("outbound"))).bind(outbound, SEND_KEY)
    topo.queues.update((await declare_delays(channel, WAIT_TIERS)).queues)
    return topo


def amqp_message_id(text: str) -> str:
    """AMQP's message_id holds 255 bytes; ids are up to 128 *characters* (512 UTF-8 bytes).
    An id that does not fit is carried as its digest; the full id is always in the body."""
    if len(text.encode("utf-8", "surrogatepass")) <= 255:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def status_event_id(request_id: str, status: str, attempts: int = 0, level: Any = None) -> str:
    """A StatusEvent's message_id: the same for the same event, so that a PBX can drop a
    repeated one and the ledger records it once."""
    return amqp_message_id(f"{request_id}/{status}/{attempts}/{level}")


def json_message(
    body: bytes,
    *,
    message_id: str,
    type_: str | None = None,
    headers: dict[str, Any] | None = None,
    expiration: float | None = None,
) -> aio_pika.Message:
    """Every message the bridge publishes: JSON, persistent, identified."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=amqp_message_id(message_id),
        type=type_,
        headers=headers,
        expiration=expiration,
    )


def copy_message(
    message: AbstractIncomingMessage,
    headers: dict[str, Any] | None = None,
    body: bytes | None = None,
) -> aio_pika.Message:
    """A fresh, persistent copy of a delivered message: same body (or `body`), id, type and
    headers (without the broker's delivery bookkeeping), `headers` added."""
    kept = {k: v for k, v in (message.headers or {}).items() if k not in BROKER_HEADERS}
    kept.update(headers or {})
    return aio_pika.Message(
        message.body if body is None else body,
        content_type=message.content_type or "application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        headers=kept,
        timestamp=message.timestamp,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
    )


# -- the ledger: status events to record --------------------------------------------------
LEDGER_STATUS_QUEUE = "smsbridge.ledger.status"
# History only: it must never hold up the events PBX services wait for, so when the ledger
# lags this far behind the oldest records are dropped rather than publishes refused.
LEDGER_STATUS_MAX = 200_000


async def declare_ledger(channel: AbstractChannel) -> Topology:
    """With a ledger: a copy of every status event, for the recorder (workers/recorder.py)."""
    topo = Topology()
    events = await channel.get_exchange(EVENTS, ensure=False)
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-max-length": LEDGER_STATUS_MAX,
        "x-overflow": "drop-head",
    }
    queue = await channel.declare_queue(LEDGER_STATUS_QUEUE, durable=True, arguments=arguments)
    await queue.bind(events, "status.#")
    topo.queues[LEDGER_STATUS_QUEUE] = queue
    return topo


# -- outbound: one queue per provider account, and delay tiers for broker retries ---------
H_FIRST_SEEN = "x-smsbridge-first-seen"  # epoch milliseconds the request entered the bridge
H_ATTEMPTS = "x-smsbridge-attempts"  # send attempts made so far
H_RETRIES = "x-smsbridge-retries"  # broker retry rounds so far
H_RETRYING_SINCE = "x-smsbridge-retrying-since"  # epoch ms of the first failure (max age)
# Not "x-" prefixed: a headers exchange ignores x- headers when matching with x-match=all.
H_RETRY_TIER = "smsbridge-retry-tier"
# Delay tiers every component declares (seconds); components add their configured ones.
WAIT_TIERS = (1.0, 5.0, 30.0, 300.0, 3600.0)


def account_queue(account: str) -> str:
    return f"smsbridge.outbound.account.{account}"


def account_key(account: str) -> str:
    return f"outbound.account.{account}"


def retry_tier(delay: float) -> str:
    return f"{round(delay * 1000)}ms"


async def declare_outbound(
    channel: AbstractChannel, accounts: list[str], retry_delays: list[float]
) -> Topology:
    """Per-account queues with a single active consumer: one replica sends for an account at a
    time (so its rate limit holds exactly), another takes over at once if it goes away; and
    the delay queues of `outbound.retry_delays`."""
    topo = Topology()
    internal = await channel.get_exchange(INTERNAL, ensure=False)
    for account in accounts:
        name = account_queue(account)
        args = work_queue_arguments("outbound", **{"x-single-active-consumer": True})
        queue = await channel.declare_queue(name, durable=True, arguments=args)
        await queue.bind(internal, account_key(account))
        topo.queues[name] = queue
    topo.queues.update((await declare_delays(channel, retry_delays)).queues)
    return topo


async def declare_delays(channel: AbstractChannel, delays: Iterable[float]) -> Topology:
    """Delay queues (smsbridge/delays.py): each holds a message for its TTL, then
    dead-letters it to `smsbridge.internal` with its routing key, back where it came from."""
    topo = Topology()
    retry = await channel.get_exchange(RETRY, ensure=False)
    for delay in sorted(set(delays)):
        tier = retry_tier(delay)
        name = f"smsbridge.delay.{tier}"
        args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-message-ttl": round(delay * 1000),
            "x-dead-letter-exchange": INTERNAL,  # keeps the routing key
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        queue = await channel.declare_queue(name, durable=True, arguments=args)
        await queue.bind(retry, arguments={"x-match": "all", H_RETRY_TIER: tier})
        topo.queues[name] = queue
    return topo
