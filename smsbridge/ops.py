"""Operator and PBX-side tools behind the command line: tail events, drive the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


async def sandbox_post(sandbox_url: str, request: dict[str, Any], media: Sequence[str] = ()) -> int:
    """Make a running sandbox post an inbound webhook. Each of `media` that is a local file is
    uploaded to the sandbox as it is (its type guessed from its name); any other name gets
    invented content of the type its name suggests."""
    base = sandbox_url.rstrip("/")
    async with aiohttp.ClientSession() as session:
        items: list[dict[str, Any]] = []
        for name in media:
            path = Path(name)
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if not await asyncio.to_thread(path.is_file):
                items.append({"name": path.name, "content_type": content_type})
                continue
            data = await asyncio.to_thread(path.read_bytes)
            async with session.put(
                f"{base}/_sandbox/media/{quote(path.name)}",
                data=data,
                headers={"Content-Type": content_type},
            ) as resp:
                stored = await resp.json()
            items.append(
                {
                    "name": path.name,
                    "content_type": content_type,
                    "size": len(data),
                    "url": stored["url"],
                }
            )
        async with session.post(
            f"{base}/_sandbox/inbound", json={**request, "media": items}
        ) as resp:
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


async def parked(
    urls: str | list[str],
    stage: str,
    *,
    requeue: bool,
    ids: set[str] | None = None,
    before_requeue: Callable[[str], Awaitable[None]] | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """`smsbridge parked list|requeue`: the parking queue's messages (all, or those in `ids`),
    after re-queuing them when `requeue` (see smsbridge/parking.py); and (id, reason) of
    each a requeue left parked. Raises parking.RequeueStopped when a requeue stops part way."""
    from smsbridge import parking
    from smsbridge.broker import Broker

    broker = Broker(urls, "parked")
    await broker.start()
    left: list[tuple[str, str]] = []
    try:
        await broker.wait_connected(10)
        if requeue:
            report = await parking.requeue_report(
                broker, stage, ids, before_requeue=before_requeue, progress=progress
            )
            done = report.done
            left = [(item.message_id, item.reason) for item in report.not_requeued]
        else:
            done = await parking.peek(broker, stage, ids=ids)
    finally:
        await broker.close()
    return [item.view() for item in done], left
