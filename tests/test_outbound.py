"""The outbound path: OutboundRequest on smsbridge.outbound -> Flowroute (the sandbox, over
real HTTP) -> status events, with retries, rate limits, held accounts and receipts."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from schemas.messages import OUTBOUND_REQUEST_TYPE, StatusEvent
from smsbridge import receipt_token, topology
from smsbridge.config import Config
from smsbridge.ops import parked, send
from smsbridge.sandbox import AccountSpec, Sandbox
from tests.harness import Listener, bridge, drain, listen, make_config

OUTBOUND = ("outbound",)


async def publish(amqp: str, request: dict[str, Any]) -> None:
    await send(amqp, request)


async def statuses_for(
    events: Listener, request_id: str, until: str, timeout: float = 20
) -> list[dict[str, Any]]:
    """Status events of one request, up to and including the first `until`."""
    seen: list[dict[str, Any]] = []
    while True:
        key, event = await events.next_json(timeout)
        StatusEvent.model_validate(event)
        assert key == f"status.{event['status']}"
        if event["id"] == request_id:
            seen.append(event)
            if event["status"] == until:
                return seen


async def test_sms_reaches_flowroute_with_auth_and_body_then_delivery_statuses(
    config: Config, sandbox: Sandbox
) -> None:
    amqp = config.broker.addresses()[0]
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(
            amqp, {"id": "req-1", "to": "+1 206 555 0142", "extension": "100", "body": "hi"}
        )
        seen = await statuses_for(events, "req-1", "delivered")
    assert [e["status"] for e in seen] == ["sent", "progress", "delivered"]
    sent, level1, level2 = seen
    assert sent["provider_id"].startswith("mdr2-") and sent["attempts"] == 1
    assert level1["level"] == 1 and level1["provider_status"] == "smsc submit"
    assert level2["level"] == 2 and level2["provider_status"] == "delivery success"
    assert level2["provider_status_code"] == 1000
    assert level2["provider_id"] == sent["provider_id"]
    [message] = sandbox.messages
    assert message.auth_user == "sandbox-access"
    assert message.content_type.startswith("application/vnd.api+json")
    attrs = message.attributes
    assert attrs["to"] == "12065550142" and attrs["from"] == "12025551234"  # no '+'
    assert attrs["body"] == "hi"
    assert attrs["dlr_callback"].startswith(f"{config.gateway.public_url}/flowroute/dlr/")
    assert "is_mms" not in attrs


async def test_mms_reaches_flowroute_with_media(config: Config, sandbox: Sandbox) -> None:
    amqp = config.broker.addresses()[0]
    url = sandbox.add_media("map.png", b"\x89PNG map", "image/png")
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(
            amqp, {"id": "mms-1", "to": "12065550142", "from": "+12025551234", "media_urls": [url]}
        )
        seen = await statuses_for(events, "mms-1", "sent")
    assert seen[-1]["provider_id"] == sandbox.messages[0].id
    attrs = sandbox.messages[0].attributes
    assert attrs["is_mms"] is True
    assert attrs["media_urls"] == [url]
    assert "body" not in attrs


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_transient_errors_are_retried_until_sent(
    config: Config, sandbox: Sandbox, status: int
) -> None:
    amqp = config.broker.addresses()[0]
    sandbox.set_fault(status, count=2, retry_after="0" if status == 429 else None)
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(amqp, {"id": "r", "to": "12065550142", "extension": "101", "body": "x"})
        seen = await statuses_for(events, "r", "sent")
    assert seen[0]["status"] == "sent"
    assert seen[0]["attempts"] == 3
    assert len(sandbox.messages) == 1


async def test_outage_longer_than_quick_retries_goes_through_retry_queues(
    config: Config, sandbox: Sandbox
) -> None:
    amqp = config.broker.addresses()[0]
    sandbox.set_fault(503, count=5)  # 3 quick attempts, then a broker retry round, then sent
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(amqp, {"id": "slow", "to": "12065550142", "extension": "100", "body": "x"})
        seen = await statuses_for(events, "slow", "sent", timeout=30)
    assert seen[0]["status"] == "sent" and seen[0]["attempts"] == 6
    assert len(sandbox.messages) == 1


async def test_retries_end_failed_and_parked_after_max_age(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    config = make_config(amqp_url, tmp_path, api_url=sandbox.api_url, extra_outbound="".join([]))
    config = config.model_copy(
        update={"outbound": config.outbound.model_copy(update={"max_age_seconds": 1.0})}
    )
    sandbox.set_fault(503)
    async with bridge(config, workers=OUTBOUND), listen(amqp_url, pattern="status.*") as events:
        await publish(
            amqp_url, {"id": "doomed", "to": "12065550142", "extension": "100", "body": "x"}
        )
        seen = await statuses_for(events, "doomed", "failed", timeout=30)
    assert "gave up after" in seen[-1]["reason"] and "503" in seen[-1]["reason"]
    [kept] = await drain(amqp_url, topology.parked_queue("outbound"))
    assert kept.message_id == "doomed"


async def test_flowroute_422_fails_and_parks_with_its_detail(
    config: Config, sandbox: Sandbox
) -> None:
    amqp = config.broker.addresses()[0]
    big = "https://files.example.com/big.mov"
    sandbox.declare_media_size(big, 5_000_000)
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(
            amqp, {"id": "big", "to": "12065550142", "extension": "100", "media_urls": [big]}
        )
        seen = await statuses_for(events, "big", "failed")
    assert "767840 byte limit" in seen[-1]["reason"]
    assert seen[-1]["attempts"] == 1
    [kept] = await drain(amqp, topology.parked_queue("outbound"))
    assert "767840" in str((kept.headers or {})[topology.H_REASON])


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"id": "a", "to": "12065550142", "body": "x"}, "one of 'from' and 'extension'"),
    ({"id": "b", "to": "12065550142", "extension": "100"}, "'body' is required"),
    (
        {"id": "c", "to": "12065550142", "from": "+13125550000", "body": "x"},
        "not a configured number",
    ),
    (
        {"id": "d", "to": "12065550142", "from": "+12025551234", "extension": "200", "body": "x"},
        "may not send from",
    ),
    ({"id": "e", "to": "12065550142", "extension": "999", "body": "x"}, "no configured number"),
    ({"id": "f", "to": "call me", "extension": "100", "body": "x"}, "'to'"),
    ({"id": "g" * 129, "to": "12065550142", "extension": "100", "body": "x"}, "id"),
    ({"id": "h", "to": "12065550142", "extension": "100", "media_urls": ["ftp://x/y"]}, "http"),
]


async def test_invalid_requests_fail_with_a_reason_and_are_parked(
    config: Config, sandbox: Sandbox
) -> None:
    amqp = config.broker.addresses()[0]
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.failed") as events:
        for request, _ in INVALID:
            await publish(amqp, request)
        # Not JSON at all: the message id names it.
        await events.channel.default_exchange.publish(
            topology.json_message(
                b"\xff not json", message_id="raw-1", type_=OUTBOUND_REQUEST_TYPE
            ),
            topology.OUTBOUND_QUEUE,
        )
        failed = {e["id"]: e for _, e in await events.collect(len(INVALID) + 1)}
    for request, reason in INVALID:
        event = failed[request["id"][:128]]
        assert reason in event["reason"], (request, event["reason"])
        assert event["reason"].startswith("invalid request")
    assert "not JSON" in failed["raw-1"]["reason"]
    assert sandbox.messages == []
    assert len(await drain(amqp, topology.parked_queue("outbound"))) == len(INVALID) + 1


async def test_bad_keys_hold_the_account_without_failing_its_backlog(
    config: Config, sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    amqp = config.broker.addresses()[0]
    sandbox.set_account(AccountSpec("sandbox-access", "rotated-secret"))
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        for i in range(20):
            await publish(
                amqp, {"id": f"held-{i}", "to": "12065550142", "extension": "100", "body": "x"}
            )
        await asyncio.sleep(3.0)
        assert await events.quiet(0.1) == []  # nothing failed, nothing sent
        # The first in-flight burst (at most one second's allowance) meets the 401, then one
        # probe at a time with growing backoff: far fewer attempts than the 20 waiting.
        attempts_while_held = sandbox.stats()["attempts"]
        assert 1 <= attempts_while_held <= 8
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{config.gateway.listen}/metrics") as resp:
                assert 'smsbridge_account_held{account="flowroute"} 1.0' in await resp.text()
        sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret"))
        sent: list[dict[str, Any]] = []
        while len(sent) < 20:
            _, event = await events.next_json(timeout=40)
            assert event["status"] != "failed"
            if event["status"] == "sent":
                sent.append(event)
    assert sorted(e["id"] for e in sent) == sorted(f"held-{i}" for i in range(20))
    out = capfd.readouterr()
    assert "sandbox-secret" not in out.out + out.err
    assert base64.b64encode(b"sandbox-access:sandbox-secret").decode() not in out.out + out.err


async def test_redelivered_request_is_not_sent_twice(config: Config, sandbox: Sandbox) -> None:
    amqp = config.broker.addresses()[0]
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.sent") as events:
        request = {"id": "once", "to": "12065550142", "extension": "100", "body": "x"}
        await publish(amqp, request)
        _, first = await events.next_json()
        await publish(amqp, request)
        # Not sent again; its status.sent is repeated (events are at least once).
        _, again = await events.next_json()
        assert await events.quiet(1.0) == []
    assert again["id"] == "once" and again["provider_id"] == first["provider_id"]
    assert len(sandbox.messages) == 1


async def test_forged_or_missing_receipt_token_is_refused(config: Config) -> None:
    amqp = config.broker.addresses()[0]
    good = receipt_token.sign(
        b"test-dlr-secret-0123456789", receipt_token.ReceiptRef("r1", "flowroute", 1)
    )
    forged = receipt_token.sign(b"guessed-secret", receipt_token.ReceiptRef("r1", "flowroute", 1))
    payload, mac = good.split(".")
    altered = receipt_token.sign(b"x", receipt_token.ReceiptRef("r2", "flowroute", 1)).split(".")[0]
    receipt = (Path(__file__).parent / "fixtures" / "dlr.jsonapi.json").read_bytes()
    base = f"http://{config.gateway.listen}/flowroute/dlr"
    async with bridge(config, workers=()), listen(amqp, pattern="status.*") as events:
        async with aiohttp.ClientSession() as session:
            for url in (
                base,
                f"{base}/",
                f"{base}/{forged}",
                f"{base}/{altered}.{mac}",
                f"{base}/junk",
            ):
                async with session.post(url, data=receipt) as resp:
                    assert resp.status == 403, url
            assert await events.quiet(0.5) == []
            async with session.post(f"{base}/{good}", data=receipt) as resp:
                assert resp.status == 200
            async with session.post(f"{base}/{payload}.{mac}", data=b"{}") as resp:
                assert resp.status == 422
        key, event = await events.next_json()
    assert key == "status.progress"  # "message buffered" is not final
    assert event["id"] == "r1" and event["provider_status_code"] == 1003


async def test_compact_undelivered_receipt(config: Config) -> None:
    amqp = config.broker.addresses()[0]
    token = receipt_token.sign(
        b"test-dlr-secret-0123456789", receipt_token.ReceiptRef("r9", "flowroute", 2)
    )
    body = {
        "type": "delivery_receipt",
        "id": "mdr2-1",
        "attributes": {"status": "delivery failure", "status_code": "1012"},
    }
    async with bridge(config, workers=()), listen(amqp, pattern="status.*") as events:
        async with aiohttp.ClientSession() as session:
            url = f"http://{config.gateway.listen}/flowroute/dlr/{token}"
            async with session.post(url, data=orjson.dumps(body)) as resp:
                assert resp.status == 200
        key, event = await events.next_json()
    assert key == "status.undelivered"
    assert event["reason"] == "delivery failure" and event["provider_status_code"] == "1012"
    assert event["attempts"] == 2


async def test_parked_requests_can_be_requeued(config: Config, sandbox: Sandbox) -> None:
    amqp = config.broker.addresses()[0]
    sandbox.set_fault(422, count=1, detail="Unregistered 10DLC number")
    async with bridge(config, workers=OUTBOUND), listen(amqp, pattern="status.*") as events:
        await publish(amqp, {"id": "fixme", "to": "12065550142", "extension": "100", "body": "x"})
        seen = await statuses_for(events, "fixme", "failed")
        assert "10DLC" in seen[-1]["reason"]
        listed, _ = await parked(amqp, "outbound", requeue=False)
        assert [p["message_id"] for p in listed] == ["fixme"]
        assert "10DLC" in listed[0]["reason"]
        requeued, _ = await parked(amqp, "outbound", requeue=True, ids={"fixme"})
        assert len(requeued) == 1
        seen = await statuses_for(events, "fixme", "sent")
    assert seen[-1]["attempts"] == 1
    assert (await parked(amqp, "outbound", requeue=False))[0] == []


def _write_config(config: Config, path: Path, sandbox: Sandbox) -> None:
    gw = config.gateway
    path.write_text(
        f"""
[broker]
url = "{config.broker.addresses()[0]}"
[gateway]
listen = "{gw.listen}"
public_url = "{gw.public_url}"
dlr_secret = "test-dlr-secret-0123456789"
[media]
dir = "{config.media.dir}"
[logging]
format = "json"
[[providers]]
name = "flowroute"
api_url = "{sandbox.api_url}"
access_key = "sandbox-access"
secret_key = "${{TEST_SECRET}}"
sms_per_second = 5
[[numbers]]
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100"]
destination = "100"
"""
    )


@pytest.mark.slow
async def test_rate_is_never_exceeded_with_two_worker_processes_and_failover(
    config: Config, sandbox: Sandbox, tmp_path: Path
) -> None:
    amqp = config.broker.addresses()[0]
    cfg = tmp_path / "smsbridge.toml"
    _write_config(config, cfg, sandbox)
    env = {**os.environ, "TEST_SECRET": "sandbox-secret"}
    cmd = [sys.executable, "-m", "smsbridge.cli", "--config", str(cfg), "worker", "outbound"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    # The first replica to consume an account queue is its single active consumer.
    workers = [start()]
    await asyncio.sleep(4)
    workers.append(start())
    try:
        async with listen(amqp, pattern="status.sent") as events:
            await asyncio.sleep(3)  # the standby is consuming too
            n = 40
            for i in range(n):
                await publish(
                    amqp,
                    {"id": f"rate-{i}", "to": "12065550142", "extension": "100", "body": str(i)},
                )
            first = await events.collect(15, timeout=30)
            workers[0].kill()  # the active replica dies: the standby takes over
            rest: list[tuple[str, dict[str, Any]]] = []
            # A request the killed replica sent but had not acked is sent again: its
            # status.sent arrives twice, so wait for the ids, not for a count.
            while {e["id"] for _, e in first + rest} != {f"rate-{i}" for i in range(n)}:
                rest.append(await events.next_json(timeout=60))
    finally:
        for proc in workers:
            proc.kill()
            output = proc.communicate()[0].decode()
            assert "sandbox-secret" not in output
    ids = {e["id"] for _, e in first + rest}
    assert ids == {f"rate-{i}" for i in range(n)}
    stats = sandbox.stats()
    account = stats["accounts"]["sandbox-access"]
    assert account["max_per_second"]["sms"] <= 5
    assert stats["rate_limited"] == 0
    # A kill between Flowroute's 202 and the status publish may resend at most the in-flight few.
    assert len(sandbox.messages) <= n + 5
