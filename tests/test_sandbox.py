"""Tests of smsbridge.sandbox over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from smsbridge.sandbox import (
    AccountSpec,
    Sandbox,
    big_bytes,
    dlr,
    inbound_mms,
    inbound_sms,
    media_bytes,
)
from smsbridge.sandbox.payloads import MediaSpec

MDR2 = re.compile(r"^mdr2-[0-9a-f]{32}$")
AUTH = aiohttp.encode_basic_auth("sandbox-access", "sandbox-secret")
JSONAPI = {"Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}
TO, FROM = "12065550142", "12025551234"


def sms(body: str | None = "Your appointment is confirmed", **extra: Any) -> dict[str, Any]:
    return {
        "data": {"type": "message", "attributes": {"to": TO, "from": FROM, "body": body, **extra}}
    }


class Receiver:
    """A tiny webhook / receipt receiver answering scripted statuses (then ``default``)."""

    def __init__(self, answers: list[int] | None = None, default: int = 200) -> None:
        self.answers = list(answers or [])
        self.default = default
        self.posts: list[tuple[dict[str, Any], str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._posted = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append((await request.json(), request.content_type))
        self._posted.set()
        status = self.answers.pop(0) if self.answers else self.default
        return web.Response(status=status, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/flowrouteinbound"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.posts) < n:
                self._posted.clear()
                await self._posted.wait()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    accounts = {
        "sandbox-access": AccountSpec("sandbox-access", "sandbox-secret", mms_per_second=50),
        "mms-acct": AccountSpec("mms-acct", "mms-secret", sms_per_second=5, mms_per_second=1),
    }
    async with Sandbox(accounts=accounts, resend_interval=0.02, dlr_delay=0.01) as sb:
        yield sb


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-here"


async def send(
    client: aiohttp.ClientSession,
    sb: Sandbox,
    body: Any,
    *,
    auth: str | None = AUTH,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = dict(headers or JSONAPI)
    if auth is not None:
        headers["Authorization"] = auth
    async with client.post(f"{sb.api_url}/messages", data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None), resp.headers


# -- sending --------------------------------------------------------------------------------------


async def test_send_sms_202_records_message(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.url)
    assert sandbox.api_url == sandbox.url + "/v2.2"
    status, answer, _ = await send(client, sandbox, sms())
    assert status == 202
    mid = answer["data"]["id"]
    assert MDR2.match(mid)
    assert answer["data"]["type"] == "message"
    assert answer["data"]["links"]["self"] == f"{sandbox.api_url}/messages/{mid}"

    [msg] = sandbox.messages
    assert msg.id == mid and msg.account == "sandbox-access" and msg.auth_user == "sandbox-access"
    assert msg.attributes == sms()["data"]["attributes"]
    assert msg.kind == "sms" and msg.form == "jsonapi"

    async with client.get(f"{sandbox.url}/_sandbox/messages") as resp:
        listed = await resp.json()
    assert [m["id"] for m in listed] == [mid]
    assert listed[0]["attributes"]["body"] == "Your appointment is confirmed"

    async with client.get(
        f"{sandbox.api_url}/messages/{mid}", headers={"Authorization": AUTH}
    ) as resp:
        assert resp.status == 200
        record = await resp.json(content_type=None)
    assert record["data"]["attributes"]["to"] == TO
    async with client.get(
        f"{sandbox.api_url}/messages/mdr2-{'0' * 32}", headers={"Authorization": AUTH}
    ) as resp:
        assert resp.status == 404


async def test_compact_form_with_application_json(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    body = {"to": TO, "from": FROM, "body": "compact"}
    status, answer, _ = await send(
        client, sandbox, body, headers={"Content-Type": "application/json"}
    )
    assert status == 202 and MDR2.match(answer["data"]["id"])
    assert sandbox.messages[0].form == "compact"
    assert sandbox.messages[0].attributes == body


async def test_bad_credentials_401(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    status, answer, _ = await send(
        client, sandbox, sms(), auth=aiohttp.encode_basic_auth("sandbox-access", "wrong")
    )
    assert status == 401
    [err] = answer["errors"]
    assert err["status"] == 401 and err["title"] == "Unauthorized"
    assert err["detail"] == "Invalid credentials" and len(err["id"]) == 36
    status, _, _ = await send(client, sandbox, sms(), auth=None)
    assert status == 401
    assert sandbox.messages == []


@pytest.mark.parametrize("field,value", [("to", "+12065550142"), ("from", "1206555"), ("to", 1)])
async def test_bad_number_422(
    sandbox: Sandbox, client: aiohttp.ClientSession, field: str, value: Any
) -> None:
    body = sms()
    body["data"]["attributes"][field] = value
    status, answer, _ = await send(client, sandbox, body)
    assert status == 422
    assert answer["errors"][0]["status"] == 422 and field in answer["errors"][0]["detail"]
    assert sandbox.messages == []


async def test_missing_body_422_and_malformed_400(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    body = sms()
    del body["data"]["attributes"]["body"]
    status, answer, _ = await send(client, sandbox, body)
    assert status == 422 and "body" in answer["errors"][0]["detail"]
    status, answer, _ = await send(client, sandbox, b'{"data": {')
    assert status == 400 and answer["errors"][0]["status"] == 400


async def test_oversized_mms_422(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    small = sandbox.add_media("a.jpg", b"x" * 700_000, "image/jpeg")
    second = sandbox.add_media("b.jpg", b"y" * 100_000, "image/jpeg")
    body = sms("Here is the map", is_mms=True, media_urls=[small, second])
    status, answer, _ = await send(client, sandbox, body)
    assert status == 422
    assert answer["errors"][0]["detail"] == (
        f'Error fetching media: File at "{second}" is over 767840 byte limit.'
    )
    big = f"{sandbox.url}/media/_big?size=800000"
    status, answer, _ = await send(client, sandbox, sms(None, is_mms=True, media_urls=[big]))
    assert status == 422 and big in answer["errors"][0]["detail"]
    status, answer, _ = await send(client, sandbox, sms(None, is_mms=True, media_urls=[small]))
    assert status == 202
    assert sandbox.messages[-1].kind == "mms"


async def test_rate_limit_429(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    results = await asyncio.gather(*(send(client, sandbox, sms(f"n{i}")) for i in range(12)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {202, 429}
    assert statuses.count(429) >= 1
    # a sub-second burst touches at most two one-second windows of 5
    assert 5 <= statuses.count(202) <= 10
    limited = next(r for r in results if r[0] == 429)
    assert limited[1]["errors"][0]["status"] == 429

    stats = sandbox.stats()
    acct = stats["accounts"]["sandbox-access"]
    assert acct["attempts"]["sms"] == 12
    assert acct["rate_limited"]["sms"] == statuses.count(429) == stats["rate_limited"]
    assert acct["max_per_second"]["sms"] >= 6  # 12 attempts in <= 2 windows; 429s count too
    assert acct["max_per_second"]["mms"] == 0

    mms_auth = aiohttp.encode_basic_auth("mms-acct", "mms-secret")
    url = sandbox.add_media("p.png", b"png", "image/png")
    mms = sms("pic", is_mms=True, media_urls=[url])
    mms_results = await asyncio.gather(
        *(send(client, sandbox, mms, auth=mms_auth) for _ in range(3))
    )
    assert [r[0] for r in mms_results].count(429) >= 1
    assert sandbox.stats()["accounts"]["mms-acct"]["max_per_second"]["mms"] >= 2


# -- delivery receipts ----------------------------------------------------------------------------


async def test_dlr_levels_posted(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, answer, _ = await send(client, sandbox, sms(dlr_callback=receiver.url))
    assert status == 202
    mid = answer["data"]["id"]
    await receiver.wait_for(2)
    (first, ctype1), (second, ctype2) = receiver.posts
    assert ctype1 == ctype2 == "application/json"
    assert first["data"]["type"] == "delivery_receipt" and first["data"]["id"] == mid
    assert first["data"]["attributes"]["level"] == 1
    assert first["data"]["attributes"]["status"] == "smsc submit"
    assert first["data"]["attributes"]["status_code"] is None
    assert second["data"]["attributes"]["level"] == 2
    assert second["data"]["attributes"]["status"] == "delivery success"
    assert second["data"]["attributes"]["status_code"] == 1000
    assert second["data"]["attributes"]["body"] == "Your appointment is confirmed"
    assert second["data"]["links"]["related"].endswith(f"/v2.2/messages/{mid}")
    await sandbox.wait_idle()
    assert [(r.level, r.status) for r in sandbox.receipts] == [(1, 200), (2, 200)]
    message = sandbox.message(mid)
    assert message is not None and message.status == "delivery success"
    assert sandbox.stats()["receipts"]["posted"] == 2


async def test_dlr_failure_outcome_and_failed_posts_recorded(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    sandbox.set_dlr_outcome("message buffered", 1003, "Message accepted by Carrier")
    failing = Receiver(default=500)
    await failing.start()
    try:
        await send(client, sandbox, sms(dlr_callback=failing.url))
        await send(client, sandbox, sms(dlr_callback=closed_port_url()))
        await sandbox.wait_idle()
        await failing.wait_for(2)
    finally:
        await failing.stop()
    final = failing.posts[1][0]["data"]["attributes"]
    assert (final["status"], final["status_code"]) == ("message buffered", 1003)
    statuses = sorted((r.status or 0) for r in sandbox.receipts)
    assert statuses == [0, 0, 500, 500]
    assert all(r.error for r in sandbox.receipts if r.status is None)
    assert sandbox.stats()["receipts"]["failed"] == 4
    # the server still works
    status, _, _ = await send(client, sandbox, sms())
    assert status == 202


# -- faults ---------------------------------------------------------------------------------------


async def test_fault_503_count_over_http(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    fault = {"status": 503, "count": 2, "retry_after": "2"}
    async with client.post(f"{sandbox.url}/_sandbox/faults", json=fault) as resp:
        assert resp.status == 200
    for _ in range(2):
        status, answer, headers = await send(client, sandbox, sms())
        assert status == 503 and headers["Retry-After"] == "2"
        assert answer["errors"][0]["status"] == 503
    status, _, headers = await send(client, sandbox, sms())
    assert status == 202 and "Retry-After" not in headers
    assert sandbox.stats()["faulted"] == 2

    async with client.post(f"{sandbox.url}/_sandbox/faults", json={"status": 500}) as resp:
        assert resp.status == 200
    assert (await send(client, sandbox, sms()))[0] == 500
    async with client.delete(f"{sandbox.url}/_sandbox/faults") as resp:
        assert resp.status == 200
    assert (await send(client, sandbox, sms()))[0] == 202
    async with client.post(f"{sandbox.url}/_sandbox/faults", json={"status": "x"}) as resp:
        assert resp.status == 400


async def test_fault_seconds_and_latency(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    sandbox.set_fault(500, seconds=0.15)
    assert (await send(client, sandbox, sms()))[0] == 500
    await asyncio.sleep(0.2)
    assert (await send(client, sandbox, sms()))[0] == 202
    sandbox.set_fault(latency_ms=150, count=1)
    started = time.monotonic()
    status, _, _ = await send(client, sandbox, sms())
    assert status == 202 and time.monotonic() - started >= 0.14
    started = time.monotonic()
    assert (await send(client, sandbox, sms()))[0] == 202
    assert time.monotonic() - started < 0.14


async def test_dropped_connection_raises_client_error(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    async with client.post(
        f"{sandbox.url}/_sandbox/faults", json={"drop": True, "count": 1}
    ) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientError):
        await send(client, sandbox, sms())
    assert sandbox.messages == []
    assert (await send(client, sandbox, sms()))[0] == 202
    assert sandbox.stats()["dropped"] == 1


async def test_stats_and_reset_endpoints(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    await send(client, sandbox, sms())
    await send(client, sandbox, sms(), auth=None)
    async with client.get(f"{sandbox.url}/_sandbox/stats") as resp:
        stats = await resp.json()
    assert stats["attempts"] == 2 and stats["accepted"] == 1
    assert stats["by_status"] == {"202": 1, "401": 1}
    assert stats["accounts"]["sandbox-access"]["max_per_second"]["sms"] == 1
    async with client.delete(f"{sandbox.url}/_sandbox/messages") as resp:
        assert resp.status == 200
    assert sandbox.messages == [] and sandbox.stats()["attempts"] == 0


# -- inbound webhooks -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["jsonapi", "compact"])
async def test_inbound_sms_posted(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver, form: str
) -> None:
    request = {
        "gateway_url": receiver.url,
        "kind": "sms",
        "form": form,
        "to": "+12025551234",
        "from": "12065550142",
        "body": "Running 10 min late",
    }
    async with client.post(f"{sandbox.url}/_sandbox/inbound", json=request) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["status"] == 200 and answer["attempts"] == 1
    assert MDR2.match(answer["message_id"])
    [(payload, ctype)] = receiver.posts
    assert ctype == "application/json"
    if form == "compact":
        assert payload == {
            "to": "12025551234",
            "body": "Running 10 min late",
            "from": "12065550142",
            "id": answer["message_id"],
        }
    else:
        assert payload["data"]["id"] == answer["message_id"]
        attrs = payload["data"]["attributes"]
        assert attrs["to"] == "12025551234" and attrs["direction"] == "inbound"
        assert attrs["is_mms"] is False and attrs["status"] == "delivered"
        assert attrs["message_encoding"] == 0 and attrs["message_type"] == "longcode"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\dZ", attrs["timestamp"])


async def test_inbound_mms_media_served(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    media: list[dict[str, Any]] = [
        {"name": "photo.jpg", "content_type": "image/jpeg", "size": 48213},
        {"name": "note.txt", "content_type": "text/plain", "size": 42},
    ]
    result = await sandbox.post_inbound(receiver.url, kind="mms", body=None, media=media)
    assert result.status == 200 and result.attempts == 1
    [(payload, _)] = receiver.posts
    data = payload["data"]
    assert data["attributes"]["is_mms"] is True and data["attributes"]["body"] is None
    assert data["attributes"]["status"] == ""
    refs = [r["id"] for r in data["relationships"]["media"]["data"]]
    included = payload["included"]
    assert [i["id"] for i in included] == refs and len(refs) == 2
    for item, spec in zip(included, media, strict=True):
        attrs = item["attributes"]
        assert item["type"] == "media" and item["links"]["self"].endswith(item["id"])
        assert (attrs["file_name"], attrs["mime_type"]) == (spec["name"], spec["content_type"])
        assert attrs["file_size"] == spec["size"]
        async with client.get(attrs["url"]) as resp:
            assert resp.status == 200
            assert resp.content_type == spec["content_type"]
            got = await resp.read()
        assert got == media_bytes(spec["name"], spec["size"], spec["content_type"])
    assert got.startswith(b"sandbox media")


async def test_inbound_resend_on_non_200(sandbox: Sandbox) -> None:
    flaky = Receiver(answers=[500, 503])
    await flaky.start()
    try:
        result = await sandbox.post_inbound(flaky.url, body="retry me")
        assert result.statuses == [500, 503, 200] and result.status == 200
        ids = {p["data"]["id"] for p, _ in flaky.posts}
        assert ids == {result.message_id} and len(flaky.posts) == 3
        flaky.default = 404
        result = await sandbox.post_inbound(flaky.url, form="compact")
        assert result.attempts == 5 and result.status == 404  # 1 post + 4 resends
    finally:
        await flaky.stop()
    result = await sandbox.post_inbound(closed_port_url(), max_attempts=2)
    assert result.statuses == [None, None] and len(result.errors) == 2


# -- media routes ---------------------------------------------------------------------------------


async def test_media_special_routes(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    base = f"{sandbox.url}/media"
    sandbox.add_media("file.bin", b"registered", "application/octet-stream")
    async with client.get(f"{base}/_expired/x.jpg") as resp:
        assert resp.status == 403 and b"<Code>AccessDenied</Code>" in await resp.read()
    async with client.get(f"{base}/_gone/x.jpg") as resp:
        assert resp.status == 404
    async with client.get(f"{base}/_big?size=200000") as resp:
        assert resp.status == 200 and resp.content_length is None
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.content_type == "application/octet-stream"
        assert await resp.read() == big_bytes(200_000)
    async with client.get(f"{base}/_gzipbomb?size=5000000", auto_decompress=False) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip" and len(raw) < 50_000
    assert gzip.decompress(raw) == bytes(5_000_000)
    async with client.get(
        f"{base}/_redirect", params={"to": f"{base}/file.bin"}, allow_redirects=False
    ) as resp:
        assert resp.status == 302 and resp.headers["Location"] == f"{base}/file.bin"
    flaky = [0, 0, 0]
    for i in range(3):
        async with client.get(f"{base}/_flaky/file.bin?fail=2") as resp:
            flaky[i] = resp.status
            body = await resp.read()
    assert flaky == [503, 503, 200] and body == b"registered"
    started = time.monotonic()
    async with client.get(f"{base}/_slow/file.bin?delay=0.1") as resp:
        assert resp.status == 200 and await resp.read() == b"registered"
    assert time.monotonic() - started >= 0.1
    async with client.put(
        f"{sandbox.url}/_sandbox/media/up.txt", data=b"hi", headers={"Content-Type": "text/plain"}
    ) as resp:
        url = (await resp.json())["url"]
    async with client.get(url) as resp:
        assert await resp.text() == "hi"


# -- payload builders -----------------------------------------------------------------------------


def test_payload_builders() -> None:
    uni = inbound_sms("+18335550111", "+12065550142", "Gracias 👍 — à demain")
    attrs = uni["data"]["attributes"]
    assert attrs["message_encoding"] == 8 and attrs["to"] == "18335550111"
    assert attrs["from"] == "12065550142" and MDR2.match(uni["data"]["id"])
    mms = inbound_mms(
        "12025551234", "12065550142", "hi", [MediaSpec("https://x/y.jpg", "y.jpg", "image/jpeg", 3)]
    )
    assert mms["included"][0]["attributes"]["url"] == "https://x/y.jpg"
    assert mms["data"]["attributes"]["amount_nanodollars"] == 19_500_000
    compact = dlr("mdr2-" + "a" * 32, 1, "smsc submit", None, form="compact", to="1", from_="2")
    assert compact["type"] == "delivery_receipt" and "data" not in compact
    assert "status_code" not in compact["attributes"]
    level2 = dlr("mdr2-" + "a" * 32, 2, "message buffered", 1003)
    assert level2["data"]["attributes"]["status_code_description"] == "Message accepted by Carrier"


async def test_config_endpoint_and_background_inbound(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    config = {
        "dlr_status": "delivery failure",
        "dlr_status_code": "1003",
        "accounts": [{"access_key": "new", "secret_key": "pw", "sms_per_second": 100}],
    }
    async with client.post(f"{sandbox.url}/_sandbox/config", json=config) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["dlr_status"] == "delivery failure"
    assert {"access_key": "new", "sms_per_second": 100, "mms_per_second": 1} in answer["accounts"]
    new_auth = aiohttp.encode_basic_auth("new", "pw")
    results = await asyncio.gather(
        *(send(client, sandbox, sms(), auth=new_auth) for _ in range(20))
    )
    assert {r[0] for r in results} == {202}

    request = {"gateway_url": receiver.url, "kind": "sms", "body": "bg", "wait": False}
    async with client.post(f"{sandbox.url}/_sandbox/inbound", json=request) as resp:
        assert resp.status == 202
        mid = (await resp.json())["message_id"]
    await sandbox.wait_idle()
    assert receiver.posts[0][0]["data"]["id"] == mid
    async with client.get(f"{sandbox.url}/_sandbox/inbound") as resp:
        [record] = await resp.json()
    assert record["message_id"] == mid and record["status"] == 200
