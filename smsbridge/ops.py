"""Operator and PBX-side tools behind the command line: tail events, drive the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import aio_pika
import aiohttp
import orjson

from smsbridge import topology


async def tail(
    urls: str | list[str], pattern: str, *, count: int | None, timeout: float | None
) -> int:
    """Print events matching `pattern` as JSON lines: {"routing_key", "type", "message"}."""
    from smsbridge.broker import connect

    connection = await connect(urls, "smsbridge-tail")
    seen = 0
    done = asyncio.Event()
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(topology.EVENTS, pattern)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            async with message.process():
                try:
                    body: Any = orjson.loads(message.body)
                except orjson.JSONDecodeError:
                    body = message.body.decode("utf-8", "replace")
                line = {"routing_key": message.routing_key, "type": message.type, "message": body}
                sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    done.set()

        await queue.consume(on_message)
        print(f"tailing smsbridge.events '{pattern}' (Ctrl-C to stop)", file=sys.stderr)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    return 0 if count is None or seen >= count else 1


async def sandbox_post(sandbox_url: str, request: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as session:
        url = sandbox_url.rstrip("/") + "/_sandbox/inbound"
        async with session.post(url, json=request) as resp:
            answer = await resp.json() if resp.status == 200 else {"error": await resp.text()}
    shown = {k: answer.get(k) for k in ("message_id", "status", "attempts", "error") if k in answer}
    print(orjson.dumps(shown).decode())
    return 0 if resp.status == 200 else 1


async def send(urls: str | list[str], request: dict[str, Any]) -> None:
    """Publish an OutboundRequest exactly as a PBX service would (confirmed, persistent)."""
    from schemas.messages import OUTBOUND_REQUEST_TYPE
    from smsbridge.broker import Broker

    broker = Broker(urls, "send")
    await broker.start()
    try:
        await broker.wait_connected(10)
        message = topology.json_message(
            orjson.dumps(request), message_id=str(request["id"]), type_=OUTBOUND_REQUEST_TYPE
        )
        await broker.publish(topology.OUTBOUND, topology.SEND_KEY, message)
    finally:
        await broker.close()


def _parked_view(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    try:
        body: Any = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        body = message.body.decode("utf-8", "replace")
    return {
        "message_id": message.message_id,
        "reason": headers.get(topology.H_REASON),
        "stage": headers.get(topology.H_STAGE),
        "parked_at": headers.get(topology.H_PARKED_AT),
        "original_exchange": headers.get(topology.H_ORIGINAL_EXCHANGE),
        "original_routing_key": headers.get(topology.H_ORIGINAL_KEY),
        "body": body,
    }


_STAGE_ENTRY = {
    "inbound": (topology.INTERNAL, topology.INBOUND_KEY),
    "media": (topology.INTERNAL, topology.MEDIA_KEY),
    "outbound": (topology.OUTBOUND, topology.SEND_KEY),
}


def _requeue_target(stage: str, message: aio_pika.abc.AbstractIncomingMessage) -> tuple[str, str]:
    """Where a parked message first entered: our own headers when a worker parked it, the
    broker's x-death record when the broker dead-lettered it, else the stage's entry."""
    headers = message.headers or {}
    exchange, key = headers.get(topology.H_ORIGINAL_EXCHANGE), headers.get(topology.H_ORIGINAL_KEY)
    if isinstance(exchange, str) and exchange and isinstance(key, str) and key:
        return exchange, key
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys")
        exchange = death.get("exchange")
        if isinstance(exchange, str) and exchange and isinstance(keys, list) and keys:
            return exchange, str(keys[0])
    return _STAGE_ENTRY[stage]


async def parked(
    urls: str | list[str], stage: str, *, requeue: bool, ids: set[str] | None = None
) -> list[dict[str, Any]]:
    """List a parking queue, or re-queue its messages (all, or those in `ids`) to where they
    were first published, with a clean slate of retry headers.

    Listing takes every message without acking and lets the broker return them when the
    channel closes, so it never loses one; re-queuing acks each only after its republish is
    confirmed.
    """
    from smsbridge.broker import Broker, connect

    broker = Broker(urls, "parked")
    await broker.start()
    await broker.wait_connected(10)
    connection = await connect(urls, "smsbridge-parked")
    shown: list[dict[str, Any]] = []
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.parked_queue(stage), ensure=False)
        while (message := await queue.get(no_ack=False, fail=False, timeout=10)) is not None:
            view = _parked_view(message)
            if ids is not None and message.message_id not in ids:
                continue  # left unacked: returned to the queue when the channel closes
            shown.append(view)
            if not requeue:
                continue
            exchange, key = _requeue_target(stage, message)
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if not k.startswith("x-smsbridge-") and k not in ("x-death", "x-delivery-count")
            }
            again = topology.json_message(
                message.body,
                message_id=message.message_id or "",
                type_=message.type,
                headers=headers,
            )
            await broker.publish(exchange, key, again)
            await message.ack()
    finally:
        await connection.close()
        await broker.close()
    return shown
