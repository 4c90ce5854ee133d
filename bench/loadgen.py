"""Open-loop load generator: posts unique Flowroute inbound SMS webhooks on a fixed schedule.

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones (no
coordinated omission): latency is measured from the *due* time, so a slow server (or a late
generator, reported as ``lag``) shows up in the numbers instead of lowering the offered rate.
The webhook's text carries the due and actual send times (``t=<due> a=<sent>``, epoch seconds)
for end-to-end measurements downstream.

    python -m bench.loadgen --url http://127.0.0.1:8080/flowrouteinbound --rate 1000 \
        --duration 10 --id-prefix run1

prints one JSON line with the counts, the achieved rates and the latency percentiles (ms).
The default client is a minimal keep-alive HTTP/1.1 client on asyncio protocols (``RawClient``),
because aiohttp's client costs ~0.75 ms of CPU per request on the 2-core benchmark machine,
which the server under test would lose; ``--client aiohttp`` uses aiohttp's instead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from typing import Any, cast
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import orjson
from pamqp.commands import Basic

from bench.stats import percentile, summary_ms
from smsbridge import eventloop

TO = "12025551234"
FROM = "12065550142"

# The JSON:API form Flowroute posts (same fields as smsbridge.sandbox.payloads.inbound_sms).
_TEMPLATE = (
    b'{"data":{"type":"message","id":"%s","attributes":{"amount_display":"$0.0070",'
    b'"amount_nanodollars":7000000,"body":"%s","delivery_receipts":[],"direction":"inbound",'
    b'"from":"' + FROM.encode() + b'","is_mms":false,"message_encoding":0,'
    b'"message_type":"longcode","status":"delivered","timestamp":"%s","to":"'
    + TO.encode()
    + b'"}}}'
)
_HEADERS = {"Content-Type": "application/json"}


def webhook(message_id: str, text: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.00Z", time.gmtime())
    return _TEMPLATE % (message_id.encode(), text.encode(), stamp.encode())


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need: int | None = None
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass, but behaves as one).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
            self.need = end + 4 + length
        if len(self.buffer) >= self.need:
            del self.buffer[: self.need]
            self.need = None
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection lost"))


class RawClient:
    """A minimal keep-alive HTTP/1.1 POST client on asyncio protocols: a fraction of the CPU
    of aiohttp's client per request, which matters when the generator shares 2 cores with
    the server and the broker."""

    def __init__(self, url: str, connections: int) -> None:
        split = urlsplit(url)
        self.host = split.hostname or "127.0.0.1"
        self.port = split.port or 80
        self.head = (
            f"POST {split.path or '/'} HTTP/1.1\r\nHost: {split.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.idle: asyncio.Queue[_Connection] = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(_Connection())

    async def post(self, body: bytes) -> int:
        conn = await self.idle.get()
        try:
            if conn.transport is None or conn.closed:
                loop = asyncio.get_running_loop()
                conn = _Connection()
                await loop.create_connection(lambda: conn, self.host, self.port)
            assert conn.transport is not None
            conn.waiter = asyncio.get_running_loop().create_future()
            conn.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            return await conn.waiter
        except BaseException:
            # Unknown state (a late answer would confuse the next request): start afresh.
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
            raise
        finally:
            self.idle.put_nowait(conn)

    async def close(self) -> None:
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn.transport is not None:
                conn.transport.close()


class AmqpClient:
    """Publishes the webhook body straight to the gateway's exchange and routing key, the way
    the gateway does after validation (persistent, mandatory, confirmed): the broker's floor."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await channel.get_exchange("smsbridge.internal", ensure=False)

    async def post(self, body: bytes) -> int:
        assert self.exchange is not None
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        confirm = await self.exchange.publish(message, "inbound", mandatory=True)
        return 200 if isinstance(confirm, Basic.Ack) else 503

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()


async def open_loop(
    url: str,
    rate: float,
    duration: float,
    id_prefix: str,
    *,
    connections: int = 256,
    drain: float = 60.0,
    warmup: int = 64,
    client: str = "raw",
    max_inflight: int = 10_000,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    total = max(1, round(rate * duration))
    due_lat: list[float] = []
    svc_lat: list[float] = []
    lag: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    last_ok = 0.0
    session: aiohttp.ClientSession | None = None
    raw: RawClient | AmqpClient | None = None
    if url.startswith("amqp://"):
        raw = AmqpClient(url)
        await raw.start()
    elif client == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=drain),
        )
    else:
        raw = RawClient(url, connections)

    async def post(message_id: str, text: str) -> int:
        body = webhook(message_id, text)
        if raw is not None:
            return await raw.post(body)
        assert session is not None
        async with session.post(url, data=body, headers=_HEADERS) as r:
            await r.read()
            return r.status

    try:
        # Open the connections first (warm-up ids are distinct: '<prefix>-warm-<n>').
        await asyncio.gather(
            *(post(f"{id_prefix}-warm-{i}", "warm-up") for i in range(max(warmup, connections))),
            return_exceptions=True,
        )

        # Not loop.time(): uvloop's counts whole milliseconds.
        clock = time.monotonic
        start = clock() + 0.05
        wall_start = time.time() + (start - clock())

        async def one(i: int, due: float) -> None:
            nonlocal last_ok
            begun = clock()
            text = f"t={wall_start + (due - start):.6f} a={time.time():.6f}"
            try:
                status = await post(f"{id_prefix}-{i}", text)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                return
            end = clock()
            statuses[status] += 1
            if status == 200:
                due_lat.append(end - due)
                svc_lat.append(end - begun)
                last_ok = max(last_ok, end)

        tasks: set[asyncio.Task[None]] = set()
        sent = 0
        for i in range(total):
            if len(tasks) >= max_inflight:
                break  # overloaded: offering more only makes the drain longer
            sent += 1
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(max(0.0, clock() - due))
            task = loop.create_task(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_end = clock()
        unfinished = 0
        if tasks:
            _, still = await asyncio.wait(set(tasks), timeout=drain)
            unfinished = len(still)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
    finally:
        if session is not None:
            await session.close()
        if raw is not None:
            await raw.close()

    ok = statuses.get(200, 0)
    lag.sort()
    return {
        "client": client,
        "offered": rate,
        "duration": duration,
        "planned": total,
        "sent": sent,
        "overloaded": sent < total,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "unfinished": unfinished,
        "send_rate": sent / max(send_end - start, 1e-9),
        "achieved": ok / max(last_ok - start, 1e-9) if ok else 0.0,
        "latency_ms": summary_ms(due_lat),
        "service_ms": summary_ms(svc_lat),
        "lag_ms": {"p99": percentile(lag, 99) * 1000, "max": (lag[-1] if lag else 0.0) * 1000},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", required=True, help="the webhook URL, or amqp://... to publish directly"
    )
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of sending")
    parser.add_argument("--id-prefix", required=True, help="message ids are <prefix>-<n>")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--drain", type=float, default=60.0, help="max wait after sending")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=10_000,
        help="stop offering (and report 'overloaded') when this many requests are unanswered",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="raw: minimal asyncio HTTP/1.1 client (default, cheapest); aiohttp: aiohttp's",
    )
    args = parser.parse_args()
    result = eventloop.run(
        open_loop(
            args.url,
            args.rate,
            args.duration,
            args.id_prefix,
            connections=args.connections,
            drain=args.drain,
            client=args.client,
            max_inflight=args.max_inflight,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
