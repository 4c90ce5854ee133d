"""Test harness: real RabbitMQ (a fresh vhost per test), the sandbox over real HTTP, and the
bridge's components started in process exactly as `smsbridge run` starts them."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from smsbridge import runner, topology
from smsbridge.config import Config, parse_config

FIXTURES = Path(__file__).parent / "fixtures"
BROKER_HOST = "127.0.0.1:5672"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class VhostPool:
    """Fresh vhosts for the tests, made and removed in batches: `rabbitmqctl` boots an Erlang
    VM per call (about a second), once per batch instead of three times per test."""

    BATCH = 16

    def __init__(self) -> None:
        self._free: list[str] = []
        self._used: list[str] = []
        self._lock = threading.Lock()
        self._cleaner: threading.Thread | None = None
        atexit.register(self.close)

    @staticmethod
    def _eval(body: str, names: list[str]) -> None:
        listed = ",".join(f'<<"{n}">>' for n in names)
        rabbitmqctl("eval", f"lists:foreach(fun(V) -> {body} end, [{listed}]), ok.")

    def take(self) -> str:
        with self._lock:
            if not self._free:
                names = [f"smsbridge-test-{uuid.uuid4().hex[:12]}" for _ in range(self.BATCH)]
                self._eval(
                    'ok = rabbit_vhost:add(V, <<"tests">>), '
                    "ok = rabbit_auth_backend_internal:set_permissions("
                    '<<"guest">>, V, <<".*">>, <<".*">>, <<".*">>, <<"tests">>)',
                    names,
                )
                self._free = names
            return self._free.pop()

    def release(self, name: str) -> None:
        with self._lock:
            self._used.append(name)
            if len(self._used) < self.BATCH or (self._cleaner and self._cleaner.is_alive()):
                return
            batch, self._used = self._used, []
        self._cleaner = threading.Thread(target=self._delete, args=(batch,), daemon=True)
        self._cleaner.start()

    def _delete(self, names: list[str]) -> None:
        # When the broker is down, leftovers carry the smsbridge-test- prefix.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._eval('rabbit_vhost:delete(V, <<"tests">>)', names)

    def close(self) -> None:
        if self._cleaner is not None:
            self._cleaner.join(60)
        leftovers = self._used + self._free
        self._used, self._free = [], []
        if leftovers:
            self._delete(leftovers)


VHOSTS = VhostPool()


@asynccontextmanager
async def fresh_vhost() -> AsyncIterator[str]:
    name = await asyncio.to_thread(VHOSTS.take)
    try:
        yield f"amqp://guest:guest@{BROKER_HOST}/{name}"
    finally:
        VHOSTS.release(name)


def make_config(
    amqp_url: str,
    media_dir: Path,
    *,
    api_url: str = "http://127.0.0.1:9/v2.2",
    port: int | None = None,
    extra_gateway: str = "",
    extra_media: str = "",
    extra_outbound: str = "",
    extra: str = "",
    sms_per_second: float = 5,
    policy: str = "",
) -> Config:
    port = port or free_port()
    text = f"""
[broker]
url = "{amqp_url}"
publish_timeout = 2.0

[gateway]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
dlr_secret = "test-dlr-secret-0123456789"
{extra_gateway}

[media]
dir = "{media_dir}"
allow_networks = ["127.0.0.1/32"]
allow_any_port = true
{extra_media}

[outbound]
retry_delays = [0.5, 1.0]
max_age_seconds = 30
{extra_outbound}

[[providers]]
name = "flowroute"
type = "flowroute"
api_url = "{api_url}"
access_key = "sandbox-access"
secret_key = "sandbox-secret"
sms_per_second = {sms_per_second}
mms_per_second = 1

[[numbers]]
name = "Main line"
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100", "101"]
destination = "100"
policy = "{policy}"

[[numbers]]
name = "Toll free"
number = "+18335550111"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["200"]
destination = "200"
{extra}
"""
    return parse_config(text, env={})


def webhook_url(config: Config, prefix: str = "flowrouteinbound") -> str:
    return f"http://{config.gateway.listen}/{prefix}"


@asynccontextmanager
async def bridge(
    config: Config, *, gateway: bool = True, workers: tuple[str, ...] = ("resolver", "media")
) -> AsyncIterator[runner.Running]:
    running = await runner.start(config, gateway, list(workers))
    try:
        for broker in running.brokers:
            await broker.wait_connected(15)
        if running.gateway is not None:
            from gateway.state import BROKER

            await running.gateway.app[BROKER].wait_connected(15)
        yield running
    finally:
        await running.stop()


class Listener:
    """A PBX service's queue bound to an exchange: collects what the bridge publishes."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue):
        self.channel = channel
        self.queue = queue
        self.messages: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def next(self, timeout: float = 10.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def next_json(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        message = await self.next(timeout)
        return message.routing_key or "", orjson.loads(message.body)

    async def collect(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        return [await self.next_json(timeout) for _ in range(n)]

    async def quiet(self, seconds: float = 0.5) -> list[AbstractIncomingMessage]:
        """Whatever else arrives within `seconds` (for 'nothing more was published')."""
        await asyncio.sleep(seconds)
        extra = []
        while not self.messages.empty():
            extra.append(self.messages.get_nowait())
        return extra


@asynccontextmanager
async def listen(
    amqp_url: str, exchange: str = topology.EVENTS, pattern: str = "#", queue: str | None = None
) -> AsyncIterator[Listener]:
    """Bind a queue (`queue` to consume an existing one instead) and collect its messages."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        q: AbstractQueue
        if queue is None:
            q = await channel.declare_queue(exclusive=True)
            await q.bind(exchange, pattern)
        else:
            q = await channel.get_queue(queue, ensure=False)
        listener = Listener(channel, q)

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            await listener.messages.put(message)

        await q.consume(on_message)
        yield listener


async def queue_depth(amqp_url: str, name: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def drain(amqp_url: str, name: str) -> list[AbstractIncomingMessage]:
    """Take every message out of a queue (e.g. a parking queue), acking them."""
    out = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=False)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            await message.ack()
            out.append(message)
    return out


def jsonable(message: AbstractIncomingMessage) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.body)
    return body
