"""The bridge on a 3-node RabbitMQ cluster (`[broker] urls = [...]`): kill -9 the node it is
connected to in the middle of a mixed inbound and outbound load.

The cluster is the test's own (tests/cluster.py), never the machine's shared broker. The
gateway runs in process; the resolver, media and outbound workers run as real subprocesses.
Shown:
- nothing is lost: every webhook answered 200 reaches the PBX's durable quorum queue as an
  InboundMessage, and every OutboundRequest published is sent to the sandbox and gets its
  `status.sent`;
- every component is back within seconds: its connections re-established on a surviving
  node and its consumers registered again (measured from the cluster's own listings);
- duplicates are counted and printed (run with `-s`), bounded by the in-flight window.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from schemas.messages import OUTBOUND_REQUEST_TYPE, InboundMessage, StatusEvent
from smsbridge import topology
from smsbridge.sandbox import AccountSpec, MediaSpec, Sandbox, inbound_mms, inbound_sms
from tests import cluster as rmq
from tests.cluster import Cluster, ClusterError, Connection, Node
from tests.harness import bridge, listen
from tests.procs import Setup, Tally, config_text, post, wait_for_consumer, wait_until

PBX_QUEUE = "pbx.cluster"
COMPONENTS = ("gateway", "resolver", "media", "outbound")
ACCOUNT_QUEUE = topology.account_queue("flowroute")
RECOVERY_BOUND = 30.0  # seconds; generous: measured values are a few seconds


# -- the cluster configuration -------------------------------------------------------------------


def cluster_config(urls: list[str], **kwargs: Any) -> str:
    """config_text (tests/procs.py) with `urls = [...]` instead of `url` in [broker]."""
    text = config_text(**kwargs)
    single = 'url = "${FAULT_AMQP_URL}"'
    assert single in text, "config_text's [broker] section changed"
    return text.replace(single, "urls = [" + ", ".join(f'"{u}"' for u in urls) + "]")


async def declare_pbx_queue(url: str) -> None:
    """A PBX service's durable quorum queue for every event, declared on the cluster."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        queue = await channel.declare_queue(
            PBX_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(topology.EVENTS, "#")


# -- the test's own clients: they must live through the kill too ---------------------------------


class RetryingPublisher:
    """Publishes OutboundRequests as a PBX service would (confirmed, persistent, mandatory), and
    on any failure (a nack included) publishes again (same message id) on a new connection to
    the next node: on RabbitMQ 3.10 a channel that had a publish to a quorum queue refused
    while the queue's leader was down may keep being refused."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.index = 0
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.failures: list[str] = []

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self.channel is None or self.channel.is_closed:
            await self.close()
            url = self.urls[self.index % len(self.urls)]
            self.connection = await aio_pika.connect(
                url, timeout=3, client_properties={"connection_name": "smsbt-test-publisher"}
            )
            self.channel = await self.connection.channel(publisher_confirms=True)
        return self.channel

    async def request(self, request: dict[str, Any], deadline: float = 60.0) -> None:
        message = topology.json_message(
            orjson.dumps(request), message_id=str(request["id"]), type_=OUTBOUND_REQUEST_TYPE
        )
        give_up = time.monotonic() + deadline
        while True:
            try:
                channel = await self._channel()
                exchange = await channel.get_exchange(topology.OUTBOUND, ensure=False)
                result = await exchange.publish(
                    message, topology.SEND_KEY, mandatory=True, timeout=5
                )
                if isinstance(result, Basic.Ack):
                    return
                error = f"not acked: {result!r}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.failures.append(f"{request['id']}: {error}")
            if time.monotonic() > give_up:
                raise AssertionError(f"could not publish {request['id']}: {self.failures[-5:]}")
            await self.close()
            self.index += 1  # the next node
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        self.connection = self.channel = None


class Arrivals:
    """What the PBX queue received: a Tally (duplicates) plus when each event first arrived."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.first: dict[tuple[str, str], float] = {}

    def add(self, message: AbstractIncomingMessage) -> None:
        key, event = message.routing_key or "", orjson.loads(message.body)
        self.tally.add(key, event)
        self.first.setdefault((key, event["id"]), time.monotonic())


@asynccontextmanager
async def reading_pbx_queue(url: str) -> AsyncIterator[Arrivals]:
    arrivals = Arrivals()
    async with listen(url, queue=PBX_QUEUE) as listener:

        async def pump() -> None:
            while True:
                arrivals.add(await listener.messages.get())

        task = asyncio.create_task(pump())
        try:
            yield arrivals
        finally:
            task.cancel()


# -- loads -----------------------------------------------------------------------------------


def inbound_payloads(sandbox: Sandbox, sms: int, mms: int) -> tuple[dict[str, bytes], set[str]]:
    """SMS and MMS webhooks (one small picture each, served by the sandbox), interleaved."""
    payloads: dict[str, bytes] = {}
    mms_ids: set[str] = set()
    every = max(1, (sms + mms) // max(1, mms))
    for i in range(sms + mms):
        mid = f"mdr2-{uuid.uuid4().hex}"
        if i % every == every - 1 and len(mms_ids) < mms:
            data = hashlib.sha256(mid.encode()).digest() * 64
            url = sandbox.add_media(f"p{i}.jpg", data, "image/jpeg")
            spec = MediaSpec(url, f"p{i}.jpg", "image/jpeg", len(data))
            body = inbound_mms("12025551234", "12065550142", f"cluster {i}", [spec], message_id=mid)
            mms_ids.add(mid)
        else:
            body = inbound_sms("12025551234", "12065550142", f"cluster {i}", message_id=mid)
        payloads[mid] = orjson.dumps(body)
    return payloads, mms_ids


class Load:
    """The mixed load and what became of it, filled in as it goes."""

    def __init__(self, payloads: dict[str, bytes], request_ids: list[str]) -> None:
        self.payloads = payloads
        self.request_ids = request_ids
        self.answers: dict[str, list[tuple[float, int | str]]] = {}  # webhook id -> answers
        self.first_post: dict[str, float] = {}
        self.first_publish: dict[str, float] = {}
        self.published: set[str] = set()

    def accepted(self) -> set[str]:
        return {m for m, a in self.answers.items() if a and a[-1][1] == 200}

    def complete(self, tally: Tally) -> bool:
        return (
            self.accepted() == set(self.payloads)
            and set(self.payloads) <= tally.ids("inbound.100")
            and self.published == set(self.request_ids)
            and set(self.request_ids) <= tally.ids("status.sent")
        )

    def missing(self, tally: Tally) -> str:
        refused = set(self.payloads) - self.accepted()
        lost_in = self.accepted() - tally.ids("inbound.100")
        unsent = set(self.request_ids) - tally.ids("status.sent")
        last = {str(a[-1][1]) for m in refused for a in [self.answers.get(m, [(0, "none")])]}
        return (
            f"{len(refused)} webhooks not answered 200 yet (last answers {sorted(last)}), "
            f"{len(lost_in)} answered 200 but no InboundMessage yet, "
            f"{len(set(self.request_ids) - self.published)} requests not published yet, "
            f"{len(unsent)} without status.sent yet: {sorted(unsent)[:5]}"
        )

    async def post_webhooks(
        self, session: aiohttp.ClientSession, url: str, interval: float, deadline: float
    ) -> None:
        """Post each webhook `interval` apart; resend it (as Flowroute does, but every 0.3 s)
        until it is answered 200."""

        async def one(i: int, mid: str, body: bytes) -> None:
            await asyncio.sleep(i * interval)
            self.first_post[mid] = time.monotonic()
            answers = self.answers.setdefault(mid, [])
            give_up = time.monotonic() + deadline
            while time.monotonic() < give_up:
                status, _ = await post(session, url, body, timeout=10)
                answers.append((time.monotonic(), status))
                if status == 200:
                    return
                await asyncio.sleep(0.3)

        await asyncio.gather(*(one(i, m, b) for i, (m, b) in enumerate(self.payloads.items())))

    async def publish_requests(self, publisher: RetryingPublisher, interval: float) -> None:
        for request_id in self.request_ids:
            self.first_publish[request_id] = time.monotonic()
            await publisher.request(
                {"id": request_id, "to": "+12065550142", "extension": "100", "body": request_id}
            )
            self.published.add(request_id)
            await asyncio.sleep(interval)


# -- recovery ------------------------------------------------------------------------------------


def component_of(connection: Connection) -> str | None:
    for component in COMPONENTS:
        if connection.name.startswith(f"smsbridge-{component}-"):
            return component
    return None


async def watch_recovery(
    cluster: Cluster,
    killed: Node,
    expected: dict[str, tuple[set[str], int]],
    killed_at: float,
    timeout: float = 60.0,
) -> tuple[dict[str, float], list[Connection]]:
    """Seconds after the kill at which each component has all its connections (by name) on a
    surviving node again, with at least as many consumers on them as before the kill."""
    back: dict[str, float] = {}
    conns: list[Connection] = []
    while len(back) < len(expected) and time.monotonic() - killed_at < timeout:
        try:
            conns = await cluster.aconnections()
        except ClusterError:
            await asyncio.sleep(0.2)
            continue
        now = time.monotonic() - killed_at
        for component, (names, consumers) in expected.items():
            mine = [c for c in conns if c.name in names and c.node != killed.name]
            complete = {c.name for c in mine} >= names
            if complete and sum(c.consumers for c in mine) >= consumers:
                back.setdefault(component, now)
        await asyncio.sleep(0.1)
    return back, conns


async def watch_readyz(
    session: aiohttp.ClientSession, base_url: str, stop: asyncio.Event
) -> list[tuple[float, int | str]]:
    samples: list[tuple[float, int | str]] = []
    while not stop.is_set():
        try:
            async with session.get(
                f"{base_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                status: int | str = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        samples.append((time.monotonic(), status))
        await asyncio.sleep(0.1)
    return samples


# -- the test ------------------------------------------------------------------------------------


def nacks(output: str) -> int:
    """Publishes the broker refused, as a worker logged them."""
    return sum("Basic.Nack" in line for line in output.splitlines())


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_of_the_connected_cluster_node_loses_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    assert rmq.available(), "RabbitMQ (/usr/lib/rabbitmq/bin) and epmd are needed (./dev setup)"
    prefetch, concurrency = 50, 16
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=50))
    payloads, mms_ids = inbound_payloads(sandbox, sms=160, mms=16)
    load = Load(payloads, [f"cluster-{i:03d}" for i in range(80)])
    key = "inbound.100"
    test_started = time.monotonic()

    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(rmq.rabbitmq_cluster(3))
        formed = time.monotonic() - test_started
        urls = cluster.urls
        text = cluster_config(
            urls,
            media_dir=tmp_path / "media",
            api_url=sandbox.api_url,
            prefetch=prefetch,
            sms_per_second=50,
            concurrency=concurrency,
        )
        setup = Setup(urls[0], tmp_path, text)
        assert setup.config.broker.addresses() == urls
        await declare_pbx_queue(urls[0])

        await stack.enter_async_context(bridge(setup.config, workers=()))  # the gateway
        workers = {kind: stack.enter_context(setup.worker(kind)) for kind in COMPONENTS[1:]}
        for kind, queue in (
            ("resolver", topology.INBOUND_QUEUE),
            ("media", topology.MEDIA_QUEUE),
            ("outbound", topology.OUTBOUND_QUEUE),
            ("outbound", ACCOUNT_QUEUE),
        ):
            await wait_for_consumer(urls[0], queue, timeout=60, worker=workers[kind])

        # Where is the bridge? Kill the node that holds most of its connections.
        before = [c for c in await cluster.aconnections() if component_of(c)]
        expected: dict[str, tuple[set[str], int]] = {}
        for c in before:
            names, consumers = expected.get(component_of(c) or "", (set(), 0))
            expected[component_of(c) or ""] = (names | {c.name}, consumers + c.consumers)
        assert set(expected) == set(COMPONENTS), before
        on_node = {n.name: sum(c.node == n.name for c in before) for n in cluster.nodes}
        target = cluster.node(max(on_node, key=lambda n: on_node[n]))
        leaders = await asyncio.to_thread(cluster.ctl, target, "list_queues", "name", "leader")
        leaders_on_target = sum(
            line.split("\t")[-1].strip() == target.name for line in leaders.splitlines()[1:]
        )
        survivor = next(n for n in cluster.nodes if n is not target)

        arrivals = await stack.enter_async_context(reading_pbx_queue(survivor.url))
        tally = arrivals.tally
        session = await stack.enter_async_context(aiohttp.ClientSession())
        publisher = RetryingPublisher(urls)  # starts on the first node, like the bridge
        stack.push_async_callback(publisher.close)

        load_started = time.monotonic()
        tasks = [
            asyncio.create_task(load.post_webhooks(session, setup.webhook_url, 0.04, 150)),
            asyncio.create_task(load.publish_requests(publisher, 0.06)),
        ]

        async def stop_load() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(stop_load)
        assert await wait_until(
            lambda: len(tally.ids(key)) >= 30 and len(tally.ids("status.sent")) >= 15, 60
        ), f"the load did not get going: {load.missing(tally)}"

        # -- kill -9 ----------------------------------------------------------------------
        stop_readyz = asyncio.Event()
        readyz = asyncio.create_task(watch_readyz(session, setup.base_url, stop_readyz))
        seen_at_kill = (len(tally.ids(key)), len(tally.ids("status.sent")))
        killed_at = time.monotonic()
        await cluster.kill9(target)
        back, conns_after = await watch_recovery(cluster, target, expected, killed_at)
        stop_readyz.set()
        samples = await readyz

        # Everything must get through on the two surviving nodes...
        complete = await wait_until(lambda: load.complete(tally), 45)
        missing_without_node = "" if complete else load.missing(tally)
        waited_without_node = time.monotonic() - killed_at
        # ...then the node comes back and rejoins (and whatever was stuck may move again).
        rejoined = await cluster.start(target)
        running = await asyncio.to_thread(cluster.running_nodes)
        complete_after_restart = complete or await wait_until(lambda: load.complete(tally), 30)
        await asyncio.sleep(2.0)  # late twins
        done_at = time.monotonic()
        outputs = {kind: w.output() for kind, w in workers.items()}
        missing_at_end = load.missing(tally)

    # -- figures ----------------------------------------------------------------------------
    accepted = load.accepted()
    sends: dict[str, int] = {}
    for message in sandbox.messages:
        body = str(message.attributes.get("body"))
        sends[body] = sends.get(body, 0) + 1
    sent_twice = sum(n - 1 for n in sends.values())
    refusals: dict[str, int] = {}
    late_refusals = 0  # answers other than 200 more than 10 s after the kill
    for answers in load.answers.values():
        for at, status in answers:
            if status != 200:
                refusals[str(status)] = refusals.get(str(status), 0) + 1
                late_refusals += at - killed_at > 10
    readyz_down = [t - killed_at for t, s in samples if s != 200]

    new_in = [
        arrivals.first[(key, m)] - killed_at
        for m in accepted
        if load.first_post[m] > killed_at and (key, m) in arrivals.first
    ]
    new_out = [
        arrivals.first[("status.sent", r)] - killed_at
        for r in load.request_ids
        if load.first_publish.get(r, 0) > killed_at and ("status.sent", r) in arrivals.first
    ]
    worst_in = max(
        (
            arrivals.first[(key, m)] - load.first_post[m]
            for m in accepted
            if (key, m) in arrivals.first
        ),
        default=float("nan"),
    )
    worst_out = max(
        (
            arrivals.first[("status.sent", r)] - load.first_publish[r]
            for r in load.request_ids
            if ("status.sent", r) in arrivals.first
        ),
        default=float("nan"),
    )
    dup_in, dup_sent = tally.duplicates(key), tally.duplicates("status.sent")
    without_node = "" if complete else f": {missing_without_node}"
    print(
        f"\ncluster kill -9: cluster formed in {formed:.1f} s "
        f"(nodes booted in {cluster.timings['boot']:.1f} s, joined at "
        f"{cluster.timings['formed']:.1f} s); killed {target.name} holding "
        f"{on_node[target.name]} of {len(before)} bridge connections and {leaders_on_target} "
        f"queue leaders, {killed_at - load_started:.1f} s into the load ({seen_at_kill[0]} "
        f"InboundMessages, {seen_at_kill[1]} status.sent so far)\n"
        f"  back on a surviving node (connections and consumers, polled with rabbitmqctl, "
        f"~1 s resolution): "
        + ", ".join(f"{c} {back.get(c, float('nan')):.1f} s" for c in COMPONENTS)
        + f"\n  gateway /readyz not 200 in {len(readyz_down)} samples "
        f"({min(readyz_down, default=0):.1f}-{max(readyz_down, default=0):.1f} s after the "
        f"kill); flow resumed: first new InboundMessage "
        f"{min(new_in, default=float('nan')):.1f} s, first new status.sent "
        f"{min(new_out, default=float('nan')):.1f} s after the kill; slowest end to end: "
        f"inbound {worst_in:.1f} s, outbound {worst_out:.1f} s\n"
        f"  inbound: {len(payloads)} webhooks ({len(mms_ids)} MMS), {len(accepted)} answered "
        f"200, answers other than 200: {refusals} ({late_refusals} of them more than 10 s after "
        f"the kill), {len(tally.ids(key))} InboundMessages, duplicates={dup_in} "
        f"(prefetch {prefetch})\n"
        f"  outbound: {len(load.request_ids)} requests ({len(publisher.failures)} publish "
        f"retries by the test), {len(sandbox.messages)} sends (sent twice={sent_twice}), "
        f"{len(tally.ids('status.sent'))} status.sent, duplicates={dup_sent} "
        f"(concurrency {concurrency})\n"
        f"  publishes refused (Basic.Nack) in worker logs: "
        + ", ".join(f"{k} {nacks(v)}" for k, v in outputs.items())
        + f"\n  all through on the 2 surviving nodes: {complete} (waited "
        f"{waited_without_node:.0f} s after the kill){without_node}"
        f"\n  {target.name} restarted and rejoined in {rejoined:.1f} s; all through by the end: "
        f"{complete_after_restart}; whole test {done_at - test_started:.0f} s"
    )

    def report() -> str:
        tails = "\n".join(f"--- {k}\n{v[-2500:]}" for k, v in outputs.items())
        return f"connections after the kill: {conns_after}\n{tails}"

    assert seen_at_kill[0] < len(payloads) and seen_at_kill[1] < len(load.request_ids), (
        "the kill happened in the middle of the load"
    )
    assert running == sorted(n.name for n in cluster.nodes)
    # Every component came back on a surviving node, within the bound.
    assert set(back) == set(COMPONENTS), f"not back: {set(COMPONENTS) - set(back)}\n{report()}"
    assert max(back.values()) < RECOVERY_BOUND, (back, report())
    # 0 lost, without the killed node: every webhook answered 200 and arrived; every request
    # was sent and got its status.sent.
    assert complete, (
        f"not all through on the surviving nodes {waited_without_node:.0f} s after the kill: "
        f"{missing_without_node}; after the node came back: "
        f"{'all through' if complete_after_restart else missing_at_end} (all through only "
        f"once the node is back: some publishing channel kept being refused while it was "
        f"away)\n{report()}"
    )
    assert tally.ids(key) == set(payloads) == accepted
    for mid in mms_ids:
        inbound_message = InboundMessage.model_validate(tally.events[(key, mid)])
        assert [item.error for item in inbound_message.media] == [None], inbound_message.media
    assert set(sends) == set(load.request_ids)
    assert tally.ids("status.sent") == set(load.request_ids)
    assert tally.ids("status.failed") == set()
    for request_id in load.request_ids:
        event = StatusEvent.model_validate(tally.events[("status.sent", request_id)])
        assert sandbox.message(event.provider_id or "") is not None
    # Nothing twice: no InboundMessage, no send. A status.sent may repeat (the same event,
    # message_id included) when its publish had to be retried.
    assert dup_in == 0
    assert sent_twice == 0
    assert dup_sent <= concurrency
    assert all("sandbox-secret" not in out for out in outputs.values())
