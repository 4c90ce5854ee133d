"""Fuzzing (hypothesis) against a running bridge: webhook bodies posted to the gateway, and
OutboundRequest bodies published to the outbound worker.

The bridge (gateway, resolver, media and outbound workers, the sandbox) is started once per
module in a background thread's event loop; each hypothesis example is sent through it from
the synchronous test. After the examples, the checks that matter: the gateway stays healthy
and everything it answered 200 arrives; the outbound worker still sends, and every fuzzed
request got a status.sent or a status.failed (or was parked).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import OUTBOUND_REQUEST_TYPE, InboundMessage
from smsbridge import topology
from smsbridge.sandbox import AccountSpec, Sandbox, inbound_sms
from tests.harness import FIXTURES, bridge, drain, listen, rabbitmqctl
from tests.procs import Publisher, Setup, Tally, config_text, publisher, tallying, wait_until

T = TypeVar("T")

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Running:
    """A bridge running in a background thread's event loop, driven from sync code."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = AsyncExitStack()
        self.vhost = f"smsbridge-test-{uuid.uuid4().hex[:12]}"
        self.amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.sandbox = await self.stack.enter_async_context(
            Sandbox(
                accounts=[AccountSpec("sandbox-access", "sandbox-secret", 200, 200)],
                resend_interval=0.05,
            )
        )
        text = config_text(
            media_dir=self.tmp / "media",
            api_url=self.sandbox.api_url,
            sms_per_second=200,
            mms_per_second=200,
        ).replace("fetch_timeout = 10", "fetch_timeout = 3")
        self.setup = Setup(self.amqp_url, self.tmp, text)
        await self.stack.enter_async_context(
            bridge(self.setup.config, workers=("resolver", "media", "outbound"))
        )
        listener = await self.stack.enter_async_context(listen(self.amqp_url))
        self.tally: Tally = await self.stack.enter_async_context(tallying(listener))
        self.publisher: Publisher = await self.stack.enter_async_context(publisher(self.amqp_url))
        self.session = await self.stack.enter_async_context(aiohttp.ClientSession())

    def start(self) -> None:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.thread.start()
        self.run(self._start())

    def stop(self) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            rabbitmqctl("delete_vhost", self.vhost)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(
            self.setup.webhook_url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=20),
        ) as resp:
            return resp.status, await resp.read()

    async def get(self, path: str) -> int:
        async with self.session.get(self.setup.base_url + path) as resp:
            await resp.read()
            return resp.status

    async def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.2)
        return bool(predicate())


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    bg = Running(tmp_path_factory.mktemp("fuzz"))
    bg.start()
    try:
        yield bg
    finally:
        bg.stop()


# -- strategies ----------------------------------------------------------------------------------

SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
ANY_TEXT = st.text(max_size=40)  # lone surrogates too: json.dumps writes them as \ud800
HUGE = st.sampled_from([10_000, 200_000, 1_040_000, 1_048_600, 1_500_000]).map(lambda n: "x" * n)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(SAFE_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def _paths(node: Any) -> Iterator[tuple[Any, Any]]:
    """(container, key) for every value inside `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _paths(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield node, index
            yield from _paths(value)


@st.composite
def mutated_webhooks(draw: st.DrawFn, media_url: str) -> Any:
    """A Flowroute payload from tests/fixtures with a fresh id and 0-4 mutations."""
    name = draw(
        st.sampled_from(
            [
                "inbound-sms.jsonapi.json",
                "inbound-sms.compact.json",
                "inbound-sms.unicode.json",
                "inbound-mms.jsonapi.json",
            ]
        )
    )
    doc = _fixture(name)
    message_id = f"mdr2-{draw(st.uuids()).hex}"
    if "data" in doc:
        doc["data"]["id"] = message_id
    else:
        doc["id"] = message_id
    for item in doc.get("included", []):
        item["attributes"]["url"] = media_url  # never the real S3
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_paths(doc))
        if not paths:
            break
        container, key = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["drop", "junk", "huge", "unicode", "nest", "null", "number"]))
        if op == "drop":
            del container[key]
        elif op == "junk":
            container[key] = draw(JSON_VALUES)
        elif op == "huge":
            container[key] = draw(HUGE)
        elif op == "unicode":
            container[key] = draw(ANY_TEXT)
        elif op == "nest":
            container[key] = {"a": [container[key], draw(JSON_VALUES)], "b": {"c": {}}}
        elif op == "null":
            container[key] = None
        else:
            container[key] = draw(st.integers(-(2**63), 2**63) | st.floats(allow_nan=False))
    return doc


@st.composite
def webhook_bodies(draw: st.DrawFn, media_url: str) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "corrupt"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    doc = draw(JSON_VALUES) if kind == "json" else draw(mutated_webhooks(media_url))
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "corrupt":  # invalid UTF-8 or truncated JSON
        at = draw(st.integers(0, len(raw)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"", b"\x00"]))
        raw = raw[:at] + junk + raw[at + draw(st.integers(0, 3)) :]
    return raw


def _webhook_id(body: bytes) -> str | None:
    """The id a Flowroute webhook body carries (JSON:API or compact), if any."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    value = data.get("id") if isinstance(data, dict) else doc.get("id")
    return value if isinstance(value, str) else None


# -- 1. webhook bodies ---------------------------------------------------------------------------


def test_fuzzed_webhooks_never_get_a_5xx_and_every_200_arrives(running: Running) -> None:
    media_url = running.sandbox.add_media("fuzz.png", b"\x89PNG fuzz", "image/png")
    accepted: dict[str, bytes] = {}  # id -> body, for bodies answered {"status": "accepted"}
    statuses: dict[int, int] = {}

    @SETTINGS
    @given(body=webhook_bodies(media_url))
    def one(body: bytes) -> None:
        status, answer = running.run(running.post(body))
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500 or status == 503, (status, answer, body[:300])
        assert status in (200, 400, 413, 422, 503), (status, answer, body[:300])
        if status == 200 and orjson.loads(answer)["status"] == "accepted":
            message_id = _webhook_id(body)
            assert message_id is not None, body[:300]
            accepted[message_id] = body

    one()
    # The gateway is healthy and still accepts a plain message.
    assert running.run(running.get("/healthz")) == 200
    assert running.run(running.get("/readyz")) == 200
    good = f"mdr2-{uuid.uuid4().hex}"
    body = orjson.dumps(inbound_sms("12025551234", "12065550142", "still here", message_id=good))
    assert running.run(running.post(body))[0] == 200
    # Every 200 becomes an InboundMessage (routed or unrouted): 200 never means "dropped later".
    expected = set(accepted) | {good}
    tally = running.tally
    arrived = running.run(running.wait(lambda: expected <= tally.prefixed("inbound."), 60), 90)
    parked = running.run(drain(running.amqp_url, topology.parked_queue("inbound")))
    parked += running.run(drain(running.amqp_url, topology.parked_queue("media")))
    print(
        f"\nwebhook fuzz: answers {dict(sorted(statuses.items()))}, {len(accepted)} accepted, "
        f"{len(parked)} parked"
    )
    assert parked == [], [(m.message_id, (m.headers or {}).get(topology.H_REASON)) for m in parked]
    assert arrived, sorted(expected - tally.prefixed("inbound."))[:10]
    for message_id in expected:
        key = next(k for k, i in tally.counts if i == message_id and k.startswith("inbound."))
        InboundMessage.model_validate(tally.events[(key, message_id)])


# -- 2. OutboundRequest bodies -------------------------------------------------------------------

NUMBERS = st.sampled_from(
    ["+12065550142", "12065550142", "(206) 555-0142", "+442071838750", "+1", "call me", "", "0"]
)
FIELD = {
    "to": NUMBERS | ANY_TEXT | JSON_VALUES,
    "from": st.sampled_from(["+12025551234", "12025551234", "+13125550000"]) | JSON_VALUES,
    "extension": st.sampled_from(["100", "101", "200", "999"]) | JSON_VALUES,
    "body": ANY_TEXT | HUGE.map(lambda s: s[:200_000]) | JSON_VALUES,
    "media_urls": st.lists(
        st.sampled_from(
            [
                "http://127.0.0.1:9/x.png",
                "https://files.example.com/a.jpg",
                "ftp://x/y",
                "http://127.0.0.1:1/media/../../etc/passwd",
            ]
        )
        | ANY_TEXT,
        max_size=12,
    )
    | JSON_VALUES,
}


VALID_REQUESTS: list[dict[str, Any]] = [
    {"to": "+12065550142", "extension": "100", "body": "hello"},
    {"to": "12065550142", "from": "+12025551234", "body": "héllo 👍"},
    {"to": "+1 206 555 0142", "from": "+12025551234", "extension": "101", "body": "x"},
    {"to": "+12065550142", "extension": "100", "media_urls": ["https://files.example.com/a.jpg"]},
]


@st.composite
def outbound_bodies(draw: st.DrawFn) -> tuple[str, Any]:
    """(how the id is given, a request: a valid one with 0-3 fields replaced or dropped,
    extra junk fields, or plain junk JSON / bytes)."""
    kind = draw(st.sampled_from(["request"] * 8 + ["json", "bytes"]))
    if kind == "bytes":
        return "none", draw(st.binary(max_size=500))
    if kind == "json":
        return "none", draw(JSON_VALUES)
    request = dict(draw(st.sampled_from(VALID_REQUESTS)))
    for name in draw(st.lists(st.sampled_from(sorted(FIELD)), max_size=3, unique=True)):
        if draw(st.booleans()):
            request[name] = draw(FIELD[name])
        else:
            request.pop(name, None)
    if draw(st.integers(0, 3)) == 0:
        request.update(draw(st.dictionaries(SAFE_TEXT, JSON_VALUES, max_size=3)))
    id_mode = draw(st.sampled_from(["unique"] * 6 + ["long", "empty", "junk", "none"]))
    return id_mode, request


def _expected_id(body: bytes, message_id: str) -> str:
    """The id its status event must carry (docs/contract.md: the request's id, else the AMQP
    message_id when the body has no usable one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return message_id
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
        return str(doc["id"][:128])
    return message_id


def test_fuzzed_outbound_requests_all_end_sent_or_failed(running: Running) -> None:
    counter = itertools.count()
    expected: dict[str, str] = {}  # status id -> AMQP message_id

    @SETTINGS
    @given(case=outbound_bodies())
    def one(case: tuple[str, Any]) -> None:
        id_mode, request = case
        n = next(counter)
        message_id = f"fz-msg-{n}"
        if isinstance(request, dict):
            request = dict(request)
            request.pop("id", None)
            if id_mode == "unique":
                request["id"] = f"fz-{n}"
            elif id_mode == "long":  # over 128 characters: cut to 128 in the status event
                request["id"] = f"fz-{n}-" + "x" * 300
            elif id_mode == "empty":
                request["id"] = ""
            elif id_mode == "junk":
                request["id"] = [n]
        if isinstance(request, bytes):
            body = request
        else:
            body = json.dumps(request).encode("utf-8", "surrogatepass")
        status_id = _expected_id(body, message_id)
        assert status_id not in expected
        expected[status_id] = message_id
        message = topology.json_message(body, message_id=message_id, type_=OUTBOUND_REQUEST_TYPE)

        async def publish() -> None:
            exchange = await running.publisher.channel.get_exchange(topology.OUTBOUND, ensure=False)
            await exchange.publish(message, topology.SEND_KEY, mandatory=True, timeout=10)

        running.run(publish())

    one()
    tally = running.tally

    def outcome_for_all() -> bool:
        done = tally.ids("status.sent") | tally.ids("status.failed")
        return set(expected) <= done

    finished = running.run(running.wait(outcome_for_all, 60), 90)
    # The worker is alive: a valid request is still sent.
    good = {"id": f"fz-good-{uuid.uuid4().hex}", "to": "+12065550142", "extension": "100"}
    good["body"] = "still sending"
    running.run(running.publisher.request(good))
    sent_good = running.run(running.wait(lambda: good["id"] in tally.ids("status.sent"), 30), 40)
    parked = running.run(drain(running.amqp_url, topology.parked_queue("outbound")))
    parked_ids = {m.message_id for m in parked}
    sent, failed = tally.ids("status.sent"), tally.ids("status.failed")
    missing = {i: m for i, m in expected.items() if i not in sent | failed and m not in parked_ids}
    parked_only = {i for i, m in expected.items() if i not in sent | failed and m in parked_ids}
    both = set(expected) & sent & failed
    print(
        f"\noutbound fuzz: {len(expected)} requests, {len(set(expected) & sent)} sent, "
        f"{len(set(expected) & failed)} failed, {len(parked)} parked, "
        f"parked without a status={len(parked_only)}, sent and failed={len(both)}"
    )
    assert sent_good, "the outbound worker still sends"
    # Every request ends sent or failed (docs/contract.md), nothing merely parked; every failed
    # one is kept in the parking queue.
    assert missing == {}, list(missing.items())[:10]
    assert parked_only == set(), sorted(parked_only)[:10]
    assert parked_ids == {expected[i] for i in set(expected) & failed}
    assert both == set(), sorted(both)[:10]
    assert finished
    # Flowroute got exactly one message per status.sent (and the good one).
    assert len(running.sandbox.messages) == len(set(expected) & sent) + 1
    # Every failed request got a readable reason.
    for request_id in set(expected) & failed:
        assert tally.events[("status.failed", request_id)]["reason"], request_id


# -- found by the fuzzing above ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["valid request", "invalid request", "webhook"])
async def test_a_128_character_non_ascii_id_is_handled(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, case: str
) -> None:
    long_id = "é" * 128  # 128 characters (within the contract), 256 bytes
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    async with (
        bridge(setup.config, workers=("resolver", "outbound")),
        listen(amqp_url) as listener,
        tallying(listener) as tally,
        publisher(amqp_url) as pub,
        aiohttp.ClientSession() as session,
    ):
        if case == "webhook":
            body = orjson.dumps(inbound_sms("12025551234", "12065550142", "hi", message_id=long_id))
            async with session.post(setup.webhook_url, data=body) as resp:
                status = resp.status
            assert status != 503, "a 503 for a message that can never be stored"
            key = "inbound.100"
        else:
            request = {"id": long_id, "to": "+12065550142", "extension": "100", "body": "hi"}
            if case == "invalid request":
                del request["body"]
            # (The PBX cannot use the id as the AMQP message_id either: it is over 255 bytes.)
            body = orjson.dumps(request)
            await pub.raw(topology.OUTBOUND_QUEUE, body, "long-id", OUTBOUND_REQUEST_TYPE)
            key = "status.sent" if case == "valid request" else "status.failed"
        await wait_until(lambda: long_id in tally.ids(key), 8)
    assert long_id in tally.ids(key), f"no {key} for the request"
