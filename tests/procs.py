"""Helpers for the fault tests: workers as real subprocesses, a TOML configuration whose secrets
come from environment variables, a confirmed publisher, and RabbitMQ outages."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiohttp
import orjson
from aiohttp import web

from schemas.messages import OUTBOUND_REQUEST_TYPE
from smsbridge import topology
from smsbridge.config import Config, parse_config
from smsbridge.sandbox import Sandbox, inbound_sms
from tests.harness import Listener, free_port, listen

# Secrets are written as ${VAR} in the file and given to the processes in their environment.
SECRETS = {
    "FAULT_AMQP_URL": "",  # set per test (the vhost's URL carries the broker password)
    "FAULT_ACCESS_KEY": "sandbox-access",
    "FAULT_SECRET_KEY": "sandbox-secret",
    "FAULT_DLR_SECRET": "fault-dlr-secret-0123456789",
}
ROOT = Path(__file__).resolve().parent.parent


def config_text(
    *,
    media_dir: Path,
    api_url: str,
    port: int | None = None,
    prefetch: int = 200,
    sms_per_second: float = 5,
    mms_per_second: float = 1,
    retry_delays: tuple[float, ...] = (0.5, 1.0),
    max_age_seconds: float = 30,
    concurrency: int = 256,
    ledger_url: str | None = None,
    request_timeout: float = 15,
    reconcile_after: float = 30,
) -> str:
    """The TOML of a bridge pointed at the sandbox; secrets are ${VAR} references."""
    port = port or free_port()
    delays = ", ".join(str(d) for d in retry_delays)
    ledger = f'\n[ledger]\nurl = "{ledger_url}"\n' if ledger_url else ""
    return (
        ledger
        + f"""
[broker]
url = "${{FAULT_AMQP_URL}}"
prefetch = {prefetch}
publish_timeout = 2.0

[gateway]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
dlr_secret = "${{FAULT_DLR_SECRET}}"

[media]
dir = "{media_dir}"
allow_networks = ["127.0.0.1/32"]
allow_any_port = true
fetch_timeout = 10

[outbound]
retry_delays = [{delays}]
max_age_seconds = {max_age_seconds}
concurrency = {concurrency}
request_timeout = {request_timeout}
reconcile_after = {reconcile_after}

[logging]
level = "info"
format = "json"

[[providers]]
name = "flowroute"
type = "flowroute"
api_url = "{api_url}"
access_key = "${{FAULT_ACCESS_KEY}}"
secret_key = "${{FAULT_SECRET_KEY}}"
sms_per_second = {sms_per_second}
mms_per_second = {mms_per_second}

[[numbers]]
name = "Main line"
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100", "101"]
destination = "100"
"""
    )


def secrets_env(amqp_url: str) -> dict[str, str]:
    return {**SECRETS, "FAULT_AMQP_URL": amqp_url}


class Setup:
    """One configuration, both as a file (for subprocesses) and parsed (for in-process parts)."""

    def __init__(self, amqp_url: str, tmp_path: Path, text: str) -> None:
        self.amqp_url = amqp_url
        self.tmp_path = tmp_path
        self.path = tmp_path / "smsbridge.toml"
        self.path.write_text(text)
        self.env = secrets_env(amqp_url)
        self.config: Config = parse_config(text, env=self.env)

    @property
    def webhook_url(self) -> str:
        return f"http://{self.config.gateway.listen}/flowrouteinbound"

    @property
    def base_url(self) -> str:
        return f"http://{self.config.gateway.listen}"

    def worker(self, kind: str, name: str | None = None) -> WorkerProcess:
        return WorkerProcess(self, kind, name)


class WorkerProcess:
    """`python -m smsbridge.cli --config <toml> worker <kind>` (or `gateway`) as a real
    process. `name` tells replicas of one kind apart (log files).

    Its output goes to a file (a pipe nobody reads would fill up and block the worker).
    Use as a context manager: the process is killed on exit whatever happened.
    """

    def __init__(self, setup: Setup, kind: str, name: str | None = None) -> None:
        self.setup = setup
        self.kind = kind
        self.name = name or kind
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log_path = self.setup.tmp_path / f"{self.name}-{self.starts}.log"
        self.log_paths.append(log_path)
        command = ["gateway"] if self.kind == "gateway" else ["worker", self.kind]
        cmd = [sys.executable, "-m", "smsbridge.cli", "--config", str(self.setup.path), *command]
        env = {**os.environ, **self.setup.env}
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM (what an orchestrator sends first) and wait; returns the seconds it took."""
        started = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no acks, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


async def consumer_count(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)


async def wait_for_consumer(
    amqp_url: str, queue: str, timeout: float = 30.0, worker: WorkerProcess | None = None
) -> None:
    """Until something consumes `queue` (a worker subprocess is up and consuming)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker is not None and not worker.alive():
            raise AssertionError(f"{worker.kind} worker exited:\n{worker.output()[-3000:]}")
        try:
            if await consumer_count(amqp_url, queue) > 0:
                return
        except aio_pika.exceptions.AMQPError:
            pass  # not declared yet
        await asyncio.sleep(0.2)
    raise AssertionError(f"nothing consumes {queue} after {timeout} s")


class Publisher:
    """One confirmed channel for publishing many OutboundRequests (or raw poison)."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel

    async def request(self, request: dict[str, Any]) -> None:
        message = topology.json_message(
            orjson.dumps(request), message_id=str(request["id"]), type_=OUTBOUND_REQUEST_TYPE
        )
        exchange = await self.channel.get_exchange(topology.OUTBOUND, ensure=False)
        await exchange.publish(message, topology.SEND_KEY, mandatory=True, timeout=10)

    async def raw(self, queue: str, body: bytes, message_id: str, type_: str | None = None) -> None:
        """Straight into a queue with the default exchange, as a buggy publisher might."""
        message = topology.json_message(body, message_id=message_id, type_=type_)
        await self.channel.default_exchange.publish(message, queue, mandatory=True, timeout=10)


@asynccontextmanager
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        yield Publisher(channel)


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, timeout: float = 20.0
) -> tuple[int | str, float]:
    """POST a webhook; (status or the exception's name, seconds it took)."""
    started = time.monotonic()
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            await resp.read()
            status: int | str = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    return status, time.monotonic() - started


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return done.stdout


@asynccontextmanager
async def broker_outage() -> AsyncIterator[None]:
    """`rabbitmqctl stop_app` on entry; `start_app` + `await_startup` on exit, always.

    Disrupts the shared broker for everyone: keep the body short (seconds)."""
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        yield
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup", "--timeout", "120")


async def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll an async or sync predicate until it is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        await asyncio.sleep(interval)
    return False


class SlowAnswers:
    """A loopback proxy to the sandbox's API that forwards each send at once but holds
    Flowroute's answer for `delay` seconds, and while `gate` is clear: a worker killed (or
    disconnected) meanwhile has had its message accepted by Flowroute without knowing it."""

    def __init__(self, target_api_url: str, delay: float = 0.0) -> None:
        self.target = target_api_url
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.api_url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        async with self._session.post(f"{self.target}/messages", data=body, headers=headers) as r:
            answer = await r.read()
            status, content_type = r.status, r.headers.get("Content-Type", "application/json")
        await asyncio.sleep(self.delay)
        await self.gate.wait()
        return web.Response(status=status, body=answer, headers={"Content-Type": content_type})

    async def _forward_get(self, request: web.Request) -> web.Response:
        """Reads (the key probe, the message records) go through unhindered."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        url = f"{self.target}/messages"
        async with self._session.get(url, params=request.query, headers=headers) as r:
            answer = await r.read()
            status, content_type = r.status, r.headers.get("Content-Type", "application/json")
        # The next page's link points at the sandbox: keep following through us.
        answer = answer.replace(self.target.encode(), self.api_url.encode())
        return web.Response(status=status, body=answer, headers={"Content-Type": content_type})

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v2.2/messages", self._forward)
        app.router.add_get("/v2.2/messages", self._forward_get)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.api_url = f"http://127.0.0.1:{port}/v2.2"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def queue_report(amqp_url: str) -> str:
    """Ready/unacked messages and consumers of every queue of the vhost (for failure messages)."""
    vhost = amqp_url.rsplit("/", 1)[1]
    return rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "consumers"
    )


class Tally:
    """Events seen, by (routing key, id): the counts show duplicates."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.events: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, key: str, event: dict[str, Any]) -> None:
        self.counts[(key, event["id"])] += 1
        self.events.setdefault((key, event["id"]), event)

    def ids(self, key: str) -> set[str]:
        return {i for k, i in self.counts if k == key}

    def prefixed(self, prefix: str) -> set[str]:
        return {i for k, i in self.counts if k.startswith(prefix)}

    def duplicates(self, key: str) -> int:
        return sum(n - 1 for (k, _), n in self.counts.items() if k == key)

    def total(self, prefix: str) -> int:
        return sum(n for (k, _), n in self.counts.items() if k.startswith(prefix))


@asynccontextmanager
async def tallying(listener: Listener) -> AsyncIterator[Tally]:
    tally = Tally()

    async def pump() -> None:
        while True:
            message = await listener.messages.get()
            tally.add(message.routing_key or "", orjson.loads(message.body))

    task = asyncio.create_task(pump())
    try:
        yield tally
    finally:
        task.cancel()


async def close_connections(amqp_url: str, name: str | None = None, prefix: str = "") -> int:
    """Close (server side, as a network blip would) the vhost's connections whose
    client-provided name is `name`, or starts with `prefix`."""
    vhost = amqp_url.rsplit("/", 1)[1]
    out = await asyncio.to_thread(
        rabbitmqctl, "list_connections", "pid", "vhost", "client_properties"
    )
    closed = 0
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[1] != vhost:
            continue
        found = re.search(r'"connection_name",(?:"longstr",)?"([^"]*)"', fields[2])
        given = found.group(1) if found else ""
        if (name is not None and given == name) or (prefix and given.startswith(prefix)):
            try:
                await asyncio.to_thread(rabbitmqctl, "close_connection", fields[0], "fault test")
            except subprocess.CalledProcessError:
                continue  # gone already
            closed += 1
    return closed


def _eval(expression: str) -> str:
    return rabbitmqctl("eval", expression).strip()


@asynccontextmanager
async def memory_alarm() -> AsyncIterator[None]:
    """A memory alarm on the shared broker (every publishing connection is blocked), lifted
    on exit whatever happens."""
    before = await asyncio.to_thread(_eval, "vm_memory_monitor:get_vm_memory_high_watermark().")
    try:
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.000001")
        yield
    finally:
        value = before if before and before[0].isdigit() else "0.4"
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", value)


@asynccontextmanager
async def consumer_timeout(milliseconds: int) -> AsyncIterator[None]:
    """A short consumer timeout on the shared broker, for channels opened inside the block;
    restored on exit."""
    before = await asyncio.to_thread(_eval, "application:get_env(rabbit, consumer_timeout).")
    try:
        await asyncio.to_thread(
            _eval, f"application:set_env(rabbit, consumer_timeout, {milliseconds})."
        )
        yield
    finally:
        value = before.removeprefix("{ok,").removesuffix("}") if before.startswith("{ok,") else ""
        restore = (
            f"application:set_env(rabbit, consumer_timeout, {value})."
            if value.isdigit()
            else "application:unset_env(rabbit, consumer_timeout)."
        )
        await asyncio.to_thread(_eval, restore)


async def post_until_accepted(
    session: aiohttp.ClientSession,
    url: str,
    payloads: dict[str, bytes],
    interval: float,
    give_up_after: float = 180.0,
    resend_every: float = 1.0,
) -> dict[str, list[int | str]]:
    """Post each payload `interval` apart and resend it (as Flowroute does, but for longer)
    until it is answered 200; returns each id's answers."""

    async def one(i: int, mid: str, body: bytes) -> tuple[str, list[int | str]]:
        await asyncio.sleep(i * interval)
        answers: list[int | str] = []
        deadline = time.monotonic() + give_up_after
        while time.monotonic() < deadline:
            status, _ = await post(session, url, body, timeout=10)
            answers.append(status)
            if status == 200:
                break
            await asyncio.sleep(resend_every)
        return mid, answers

    results = await asyncio.gather(*(one(i, m, b) for i, (m, b) in enumerate(payloads.items())))
    return dict(results)


async def parked_counts(amqp_url: str) -> dict[str, int]:
    """Messages in every parking queue (and the unroutable queue) of the vhost."""
    names = [topology.parked_queue(stage) for stage in topology.STAGES]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        out = {}
        for name in names:
            declared = await channel.declare_queue(name, passive=True)
            out[name] = int(declared.declaration_result.message_count or 0)
    return out


# -- a PBX service's durable queue (survives broker restarts) -------------------------------------

PBX_QUEUE = "pbx.faults"


async def declare_pbx_queue(amqp_url: str) -> None:
    """A PBX service's durable quorum queue for every event: it outlives broker restarts."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        queue = await channel.declare_queue(
            PBX_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(topology.EVENTS, "#")


def ledger_section(ledger_url: str | None) -> str:
    """The `[ledger]` section of a configuration, or nothing without a ledger."""
    return f'\n[ledger]\nurl = "{ledger_url}"\n' if ledger_url else ""


async def full_pbx_queue(
    channel: aio_pika.abc.AbstractChannel, name: str, pattern: str
) -> aio_pika.abc.AbstractQueue:
    """A PBX queue bound to `pattern` that refuses every publish (`reject-publish`, full)."""
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await queue.bind(topology.EVENTS, pattern)
    # Quorum queues refuse only once over their limit: one message fills it.
    await channel.default_exchange.publish(aio_pika.Message(b"{}"), name)
    return queue


async def read_pbx_queue(
    amqp_url: str, done: Callable[[Tally], bool], timeout: float, settle: float = 1.5
) -> Tally:
    """Consume the PBX queue until `done(tally)`, then `settle` more seconds for late twins."""
    async with listen(amqp_url, queue=PBX_QUEUE) as listener, tallying(listener) as tally:
        await wait_until(lambda: done(tally), timeout)
        await asyncio.sleep(settle)
    return tally


# -- loads (shared by the fault tests) ------------------------------------------------------

Answer = tuple[int | str, float]


def sms_payloads(n: int, tag: str) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        mid = f"mdr2-{uuid.uuid4().hex}"
        out[mid] = orjson.dumps(
            inbound_sms("12025551234", "12065550142", f"{tag} {i}", message_id=mid)
        )
    return out


async def post_load(
    session: aiohttp.ClientSession,
    url: str,
    payloads: dict[str, bytes],
    interval: float,
    resend: int = 5,
) -> dict[str, list[Answer]]:
    """Post each payload, `interval` apart, resending (like Flowroute) until a 200.
    Returns each id's answers: (status, seconds it took)."""

    async def one(i: int, mid: str, body: bytes) -> tuple[str, list[Answer]]:
        await asyncio.sleep(i * interval)
        answers: list[Answer] = []
        for _ in range(resend):
            status, elapsed = await post(session, url, body)
            answers.append((status, elapsed))
            if status == 200:
                break
            await asyncio.sleep(0.5)
        return mid, answers

    results = await asyncio.gather(*(one(i, m, b) for i, (m, b) in enumerate(payloads.items())))
    return dict(results)


def outbound_request(request_id: str) -> dict[str, Any]:
    # The body names the request: the sandbox's records show each send of it.
    return {"id": request_id, "to": "+12065550142", "extension": "100", "body": request_id}


def sends_per_request(sandbox: Sandbox) -> Counter[str]:
    return Counter(str(m.attributes.get("body")) for m in sandbox.messages)


async def queue_state(amqp_url: str, name: str) -> tuple[int, int, int]:
    """(ready, unacked, consumers) of a queue, from `rabbitmqctl list_queues`."""
    vhost = amqp_url.rsplit("/", 1)[1]
    out = await asyncio.to_thread(
        rabbitmqctl,
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    )
    for line in out.splitlines():
        fields = line.split("\t")
        if fields and fields[0] == name and len(fields) == 4:
            return int(fields[1]), int(fields[2]), int(fields[3])
    raise AssertionError(f"no queue {name} in {out}")


async def parked_reasons(amqp_url: str) -> list[tuple[str, str, str]]:
    """(stage, message id, reason) of every parked message, left in place (for failure
    messages)."""
    from smsbridge.ops import parked

    out = []
    for stage in topology.STAGES:
        listed, _ = await parked(amqp_url, stage, requeue=False)
        for item in listed:
            out.append((stage, str(item["message_id"]), str(item["reason"])))
    return out
