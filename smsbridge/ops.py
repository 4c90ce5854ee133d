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


async def tail(url: str, pattern: str, *, count: int | None, timeout: float | None) -> int:
    """Print events matching `pattern` as JSON lines: {"routing_key", "type", "message"}."""
    connection = await aio_pika.connect_robust(
        url, client_properties={"connection_name": "smsbridge-tail"}
    )
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
            answer = await resp.text()
    print(answer)
    return 0 if resp.status == 200 else 1
