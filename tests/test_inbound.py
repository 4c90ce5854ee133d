"""The inbound path end to end: Flowroute webhook -> gateway -> RabbitMQ -> resolver/media
-> InboundMessage on smsbridge.events, against the real broker and the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from schemas.messages import InboundMessage
from smsbridge import topology
from smsbridge.config import Config
from smsbridge.sandbox import MediaSpec, Sandbox, inbound_mms
from tests.harness import bridge, drain, fixture, listen, make_config, webhook_url

pytestmark = pytest.mark.asyncio


async def post(session: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any]) -> int:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        return r.status


@pytest.mark.parametrize(
    ("name", "to", "destination", "body", "sent_at"),
    [
        (
            "inbound-sms.jsonapi.json",
            "+12025551234",
            "100",
            "Is the office open on Saturday?",
            "2026-11-20T17:03:11.520000Z",
        ),
        ("inbound-sms.compact.json", "+12025551234", "100", "Running 10 min late", None),
        (
            "inbound-sms.unicode.json",
            "+18335550111",
            "200",
            "Gracias 👍 — à demain",
            "2026-11-20T17:05:00Z",
        ),
    ],
)
async def test_flowroute_sms_payload_arrives_as_inbound_message(
    config: Config, name: str, to: str, destination: str, body: str, sent_at: str | None
) -> None:
    raw = fixture(name)
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), raw) == 200
        key, message = await events.next_json()
    assert key == f"inbound.{destination}"
    parsed = InboundMessage.model_validate(message)  # the contract's schema
    assert parsed.to == to
    assert parsed.from_ == "+12065550142"
    assert parsed.body == body
    assert parsed.destination == destination
    assert parsed.provider == "flowroute"
    assert message["sent_at"] == sent_at
    assert message["id"] == orjson.loads(raw).get("id", orjson.loads(raw).get("data", {}).get("id"))
    original = orjson.loads(raw)
    attributes = original["data"]["attributes"] if "data" in original else original
    for field, value in attributes.items():
        assert message["provider_attributes"][field] == value
    assert parsed.media == []


async def test_amqp_properties_follow_the_contract(config: Config) -> None:
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), fixture("inbound-sms.jsonapi.json"))
        message = await events.next()
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert message.type == "smsbridge.inbound_message.v1"
    assert message.message_id == "mdr2-0b6f2c4a9d8e4f3b8a1c2d3e4f5a6b7c"


DRIFT: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("amount as string", {"amount_nanodollars": "7000000"}, {}),
    ("amount as float", {"amount_nanodollars": 7000000.0, "amount_display": "$0.0070"}, {}),
    ("null body", {"body": None}, {"body": ""}),
    ("empty status", {"status": ""}, {}),
    (
        "timestamp 00Z",
        {"timestamp": "2026-11-20T17:10:42.000000Z"},
        {"sent_at": "2026-11-20T17:10:42Z"},
    ),
    (
        "timestamp 980000Z",
        {"timestamp": "2026-11-20T17:10:42.980000Z"},
        {"sent_at": "2026-11-20T17:10:42.980000Z"},
    ),
    (
        "timestamp offset",
        {"timestamp": "2026-11-20T17:10:42+00:00"},
        {"sent_at": "2026-11-20T17:10:42Z"},
    ),
    ("garbage timestamp", {"timestamp": "yesterday"}, {"sent_at": None}),
    ("plus numbers", {"to": "+12025551234", "from": "+12065550142"}, {}),
    ("extra attribute", {"carrier_hint": {"x": 1}, "segments": 2}, {}),
]


async def test_drifting_payloads_arrive_as_correct_inbound_messages(config: Config) -> None:
    base = orjson.loads(fixture("inbound-sms.jsonapi.json"))
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            for i, (_name, change, _expect) in enumerate(DRIFT):
                payload = orjson.loads(orjson.dumps(base))
                payload["data"]["id"] = f"mdr2-drift{i:027d}"
                payload["data"]["attributes"].update(change)
                assert await post(session, webhook_url(config), payload) == 200, _name
        got = {m["id"]: m for _, m in await events.collect(len(DRIFT))}
    for i, (name, change, expect) in enumerate(DRIFT):
        message = got[f"mdr2-drift{i:027d}"]
        InboundMessage.model_validate(message)
        assert message["to"] == "+12025551234", name
        assert message["from"] == "+12065550142", name
        for field, value in expect.items():
            assert message[field] == value, name
        for field, value in change.items():
            assert message["provider_attributes"][field] == value, name


async def test_duplicate_webhook_is_published_once(config: Config) -> None:
    raw = fixture("inbound-sms.jsonapi.json")
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            # Flowroute's resends (sequential) and an impatient burst (concurrent).
            statuses = [await post(session, webhook_url(config), raw) for _ in range(3)]
            statuses += await asyncio.gather(
                *(post(session, webhook_url(config), raw) for _ in range(5))
            )
        assert statuses == [200] * 8
        await events.next_json()
        assert await events.quiet(1.0) == []


async def test_resolver_publishes_a_redelivered_id_once(config: Config) -> None:
    """Two gateway replicas may both accept the same resend: the resolver still publishes once."""
    raw = fixture("inbound-sms.jsonapi.json")
    other = make_config(
        config.broker.addresses()[0], config.media.dir, api_url="http://127.0.0.1:9/v2.2"
    )
    async with (
        bridge(config),
        bridge(other, workers=()),
        listen(config.broker.addresses()[0]) as events,
    ):
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), raw) == 200
            assert await post(session, webhook_url(other), raw) == 200
        await events.next_json()
        assert await events.quiet(1.0) == []


async def test_number_without_configuration_goes_to_unrouted(config: Config) -> None:
    payload = orjson.loads(fixture("inbound-sms.jsonapi.json"))
    payload["data"]["attributes"]["to"] = "13125550199"
    async with (
        bridge(config),
        listen(config.broker.addresses()[0], pattern="inbound.*") as ev,
    ):
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), payload) == 200
        key, message = await ev.next_json()
    assert key == "inbound.unrouted"
    assert message["destination"] is None
    assert message["number_name"] is None
    assert message["to"] == "+13125550199"
    assert message["provider"] == "flowroute"  # the prefix's only provider


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("flowrouteinbound", b"{not json", 400, "not JSON"),
        ("flowrouteinbound", b'{"hello": "world"}', 422, "not a Flowroute message"),
        ("flowrouteinbound", b'{"data": {"type": "message", "id": "x"}}', 422, "attributes"),
        ("flowrouteinbound", b"[1, 2]", 422, "not a JSON object"),
        ("flowrouteinbound", b"x" * (1024 * 1024 + 10), 413, "body over"),
        ("nosuchprefix", b'{"to": "1"}', 404, "unknown URL prefix"),
    ],
)
async def test_refused_webhook_gets_its_status_and_is_quarantined(
    config: Config, path: str, body: bytes, status: int, reason: str
) -> None:
    url = f"http://{config.gateway.listen}/{path}"
    amqp = config.broker.addresses()[0]
    async with bridge(config), listen(amqp) as events, aiohttp.ClientSession() as session:
        async with session.post(url, data=body) as resp:
            assert resp.status == status
            assert reason in (await resp.json())["error"]
        assert await events.quiet(0.5) == []
    kept = await drain(amqp, topology.QUARANTINE_QUEUE)
    assert len(kept) == 1
    headers = kept[0].headers or {}
    assert reason in str(headers[topology.H_REASON])
    assert headers["x-smsbridge-http-status"] == status
    if status != 413:
        assert kept[0].body == body


async def test_source_outside_allow_list_gets_403(amqp_url: str, tmp_path: Path) -> None:
    config = make_config(amqp_url, tmp_path, extra_gateway='allow_ips = ["52.88.246.140"]')
    async with bridge(config), aiohttp.ClientSession() as session:
        assert await post(session, webhook_url(config), fixture("inbound-sms.compact.json")) == 403
        # A spoofed X-Forwarded-For is ignored: 127.0.0.1 is not a trusted proxy.
        headers = {"X-Forwarded-For": "52.88.246.140"}
        async with session.post(
            webhook_url(config), data=fixture("inbound-sms.compact.json"), headers=headers
        ) as resp:
            assert resp.status == 403


async def test_trusted_proxy_forwarded_address_is_allowed(amqp_url: str, tmp_path: Path) -> None:
    config = make_config(
        amqp_url,
        tmp_path,
        extra_gateway='allow_ips = ["52.88.246.140/32"]\ntrusted_proxies = ["127.0.0.1"]',
    )
    async with bridge(config), aiohttp.ClientSession() as session:
        headers = {"X-Forwarded-For": "52.88.246.140"}
        async with session.post(
            webhook_url(config), data=fixture("inbound-sms.compact.json"), headers=headers
        ) as resp:
            assert resp.status == 200


async def test_broker_down_answers_503_promptly(tmp_path: Path) -> None:
    config = make_config("amqp://guest:guest@127.0.0.1:1/", tmp_path)  # nothing listens there
    from smsbridge import runner

    running = await runner.start(config, True, [])
    try:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            status = await post(session, webhook_url(config), fixture("inbound-sms.jsonapi.json"))
            elapsed = time.monotonic() - started
            async with session.get(f"http://{config.gateway.listen}/readyz") as resp:
                ready = resp.status
            async with session.get(f"http://{config.gateway.listen}/healthz") as resp:
                healthy = resp.status
    finally:
        await running.stop()
    assert status == 503
    assert elapsed < 5.0  # "within a couple of seconds": generous for a shared machine
    assert ready == 503
    assert healthy == 200


async def test_every_200_arrives_when_the_gateway_connection_is_killed(config: Config) -> None:
    """Kill the gateway's publishing connection in the middle of a burst: every webhook
    answered 200 arrives as an InboundMessage; the others got 503 (Flowroute resends)."""
    from tests.harness import rabbitmqctl

    amqp = config.broker.addresses()[0]
    base = orjson.loads(fixture("inbound-sms.jsonapi.json"))
    async with bridge(config, workers=()), listen(amqp, pattern="inbound.*") as events:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> tuple[str, int]:
                payload = orjson.loads(orjson.dumps(base))
                payload["data"]["id"] = f"mdr2-kill{i:028d}"
                await asyncio.sleep(i * 0.004)
                return payload["data"]["id"], await post(session, webhook_url(config), payload)

            burst = asyncio.gather(*(one(i) for i in range(400)))
            await asyncio.sleep(0.6)
            vhost = amqp.rsplit("/", 1)[1]
            await asyncio.to_thread(_close_gateway_connection, vhost, rabbitmqctl)
            results = await burst
        accepted = {mid for mid, status in results if status == 200}
        assert {status for _, status in results} <= {200, 503}
        assert accepted
        async with bridge(config, gateway=False, workers=("resolver",)):
            seen: set[str] = set()
            while not accepted <= seen:
                _, message = await events.next_json(timeout=20)
                seen.add(message["id"])
    assert accepted <= seen


def _close_gateway_connection(vhost: str, rabbitmqctl: Any) -> None:
    import subprocess

    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "vhost", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if vhost in line and "smsbridge-gateway-pub" in line:
            rabbitmqctl("close_connection", line.split("\t")[0], "test kills the gateway")


async def test_mms_media_is_stored_and_served_byte_identical(
    config: Config, sandbox: Sandbox
) -> None:
    photo = bytes(range(256)) * 300
    note = "Café ☕ at 10?".encode()
    specs = [
        MediaSpec(
            sandbox.add_media("p.jpg", photo, "image/jpeg"), "photo.jpg", "image/jpeg", len(photo)
        ),
        MediaSpec(
            sandbox.add_media("n.txt", note, "text/plain"), "note.txt", "text/plain", len(note)
        ),
    ]
    payload = inbound_mms("12025551234", "12065550142", None, specs)
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), payload) == 200
            key, message = await events.next_json()
            assert key == "inbound.100"
            parsed = InboundMessage.model_validate(message)
            assert parsed.body == ""
            assert [m.file_name for m in parsed.media] == ["photo.jpg", "note.txt"]
            for item, data, ctype in zip(
                parsed.media, (photo, note), ("image/jpeg", "text/plain"), strict=True
            ):
                assert item.error is None
                assert item.url is not None
                assert item.url.startswith(f"{config.gateway.public_url}/media/")
                assert item.size == len(data)
                assert item.sha256 == hashlib.sha256(data).hexdigest()
                assert item.content_type == ctype
                async with session.get(item.url) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith(ctype)
                    assert await resp.read() == data
            async with session.get(f"http://{config.gateway.listen}/media/{'A' * 43}") as resp:
                assert resp.status == 404
            async with session.get(f"http://{config.gateway.listen}/media/..%2Fetc") as resp:
                assert resp.status == 404


async def test_blocked_and_oversized_media_arrive_with_errors(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    config = make_config(amqp_url, tmp_path, extra_media="max_bytes = 100000")
    ok = sandbox.add_media("ok.png", b"\x89PNG" + b"0" * 100, "image/png")
    port = sandbox.url.rsplit(":", 1)[1]
    specs = [
        MediaSpec(ok, "ok.png", "image/png", 104),
        # 127.0.0.2 is loopback but not in allow_networks: blocked before any connection.
        MediaSpec(f"http://127.0.0.2:{port}/media/ok.png", "blocked.png", "image/png", 104),
        MediaSpec(f"{sandbox.url}/media/_big?size=5000000", "big.bin", "video/mp4", 5000000),
        MediaSpec(f"{sandbox.url}/media/_expired/x.jpg", "expired.jpg", "image/jpeg", 10),
    ]
    payload = inbound_mms("12025551234", "12065550142", "see attached", specs)
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        async with aiohttp.ClientSession() as session:
            assert await post(session, webhook_url(config), payload) == 200
        _, message = await events.next_json(timeout=30)
    media = InboundMessage.model_validate(message).media
    assert message["body"] == "see attached"
    assert media[0].url is not None and media[0].error is None
    assert media[1].url is None and "blocked" in (media[1].error or "")
    assert media[2].url is None and "too large" in (media[2].error or "")
    assert media[3].url is None and "403" in (media[3].error or "")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == [
        media[0].url.rsplit("/", 1)[1]
    ]


async def test_poison_message_is_parked_and_the_resolver_carries_on(config: Config) -> None:
    amqp = config.broker.addresses()[0]
    async with bridge(config), listen(amqp) as events:
        # A malformed envelope sneaks into the resolver's queue (not via the gateway).
        await events.channel.default_exchange.publish(
            topology.json_message(b'{"webhook": {"nope": 1}}', message_id="poison"),
            topology.INBOUND_QUEUE,
        )
        async with aiohttp.ClientSession() as session:
            assert (
                await post(session, webhook_url(config), fixture("inbound-sms.compact.json")) == 200
            )
        _, message = await events.next_json()
        assert message["id"] == "mdr2-7d1e5a2b3c4d4e5f8a9b0c1d2e3f4a5b"
    parked = await drain(amqp, topology.parked_queue("inbound"))
    assert [m.message_id for m in parked] == ["poison"]
    assert "unreadable webhook" in str((parked[0].headers or {})[topology.H_REASON])


async def test_metrics_count_outcomes(config: Config) -> None:
    async with bridge(config), aiohttp.ClientSession() as session:
        await post(session, webhook_url(config), fixture("inbound-sms.compact.json"))
        await post(session, webhook_url(config), b"nope")
        async with session.get(f"http://{config.gateway.listen}/metrics") as resp:
            text = await resp.text()
    assert 'smsbridge_webhook_requests_total{outcome="accepted"}' in text
    assert 'smsbridge_webhook_requests_total{outcome="bad_json"}' in text
    assert "smsbridge_publish_confirm_seconds_bucket" in text


async def test_inbound_sms_from_sandbox_in_both_forms(config: Config, sandbox: Sandbox) -> None:
    async with bridge(config), listen(config.broker.addresses()[0]) as events:
        for form in ("jsonapi", "compact"):
            result = await sandbox.post_inbound(
                webhook_url(config), kind="sms", form=form, to="12025551234", body=f"hi {form}"
            )
            assert result.statuses == [200]
            _, message = await events.next_json()
            assert message["id"] == result.message_id
            assert message["body"] == f"hi {form}"


async def test_graceful_shutdown_finishes_requests_in_flight(config: Config) -> None:
    """Stopping the gateway mid-burst: every request it answered 200 was stored; none of the
    requests in flight is cut off without an answer once the handler started."""
    from smsbridge import runner

    amqp = config.broker.addresses()[0]
    base = orjson.loads(fixture("inbound-sms.jsonapi.json"))
    running = await runner.start(config, True, [])
    from gateway.state import BROKER

    assert running.gateway is not None
    await running.gateway.app[BROKER].wait_connected(15)
    results: list[tuple[str, int | str]] = []
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            payload = orjson.loads(orjson.dumps(base))
            payload["data"]["id"] = f"mdr2-stop{i:028d}"
            await asyncio.sleep(i * 0.003)
            try:
                status: int | str = await post(session, webhook_url(config), payload)
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            results.append((payload["data"]["id"], status))

        burst = [asyncio.create_task(one(i)) for i in range(300)]
        await asyncio.sleep(0.5)
        await running.stop()
        await asyncio.gather(*burst)
    accepted = {mid for mid, status in results if status == 200}
    assert accepted, results[:5]
    assert all(status in (200, 503) or isinstance(status, str) for _, status in results)
    async with listen(amqp) as events, bridge(config, gateway=False, workers=("resolver",)):
        seen: set[str] = set()
        while not accepted <= seen:
            _, message = await events.next_json(timeout=20)
            seen.add(message["id"])
    assert accepted <= seen
