"""One InboundMessage per Flowroute id, and nothing healthy parked or lost, in the corners a
review of the inbound path found: a PBX queue that refuses what the bridge publishes, a claim
whose lease ran out, a delivery held longer than RabbitMQ's consumer timeout, media that fails
for a passing reason, and a body nested too deeply to be written again.

Real RabbitMQ (a fresh vhost), real PostgreSQL (a fresh database) where the ledger is on, and
the sandbox over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest

from smsbridge import topology
from smsbridge.config import LedgerConfig
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.inbound import LedgerClaims
from smsbridge.once import Claim, InboundHistory, Lease
from smsbridge.sandbox import MediaSpec, Sandbox, inbound_mms, inbound_sms
from tests.harness import bridge, free_port, listen, make_config, webhook_url
from tests.procs import consumer_timeout, full_pbx_queue, ledger_section, post


def sms(body: str) -> tuple[str, bytes]:
    mid = f"mdr2-{uuid.uuid4().hex}"
    return mid, orjson.dumps(inbound_sms("12025551234", "12065550142", body, message_id=mid))


@pytest.mark.parametrize("ledger", ["off", "on"])
async def test_a_pbx_queue_that_refuses_a_message_gives_no_other_queue_a_second_copy(
    amqp_url: str, tmp_path: Path, ledger_url: str, ledger: str
) -> None:
    """A PBX binds a full queue with `x-overflow: reject-publish` to every InboundMessage.
    RabbitMQ then nacks the resolver's publish, although every other queue (and the journal)
    kept its copy. That nack used to read as "not stored": the resolver published again and
    again, a copy more each time, and held up every later message."""
    config = make_config(
        amqp_url,
        tmp_path / "media",
        extra=ledger_section(ledger_url if ledger == "on" else None),
    )
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await topology.declare(channel)
        await full_pbx_queue(channel, "pbx.archive", "inbound.#")
        webhooks = [sms(f"refused by one queue {i}") for i in range(3)]
        async with (
            bridge(config),
            listen(amqp_url, pattern="inbound.*") as pbx,
            aiohttp.ClientSession() as session,
        ):
            for _, body in webhooks:
                assert (await post(session, webhook_url(config), body))[0] == 200
            arrived: Counter[str] = Counter()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and set(arrived) < {m for m, _ in webhooks}:
                _, event = await pbx.next_json(timeout=15)
                arrived[event["id"]] += 1
            arrived.update(orjson.loads(m.body)["id"] for m in await pbx.quiet(3.0))
    assert arrived == Counter({mid: 1 for mid, _ in webhooks})


def test_a_lease_is_not_valid_once_it_may_have_run_out_or_was_lost() -> None:
    """The resolver never starts a publish on a claim that may have run out (a renewal could
    not reach the ledger) or that a renewal found taken over."""
    fresh = Lease(Claim("a", token="t", expires=time.monotonic() + 30, lease=30))
    assert fresh.valid
    late = Lease(Claim("b", token="t", expires=time.monotonic() + 4, lease=30))
    assert not late.valid, "too close to its end for a publish to finish inside it"
    late.renewed(time.monotonic())
    assert late.valid
    late.lost = True
    assert not late.valid
    assert Lease(Claim("c")).valid, "in memory a claim never runs out"


async def test_a_renewal_or_record_after_a_takeover_says_the_claim_is_lost(
    ledger_url: str,
) -> None:
    ledger = Ledger(LedgerConfig.model_validate({"url": ledger_url}), "test")
    await ledger.start()
    try:
        await ledger.wait_available(20)
        slow = LedgerClaims(ledger, ttl=60, lease=timedelta(seconds=1))
        other = LedgerClaims(ledger, ttl=60)
        claim = await slow.claim("mdr2-lease", InboundHistory(body="hi"))
        assert await slow.renew(claim)
        await asyncio.sleep(1.5)  # its lease runs out (its renewals could not get through)
        taken = await asyncio.wait_for(other.claim("mdr2-lease", InboundHistory()), 10)
        assert taken.token and taken.in_doubt_since is not None
        assert not await slow.renew(claim)
        assert not await slow.succeeded(claim)
        assert await other.succeeded(taken)
    finally:
        await ledger.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_deliveries_held_while_the_ledger_is_away_outlast_the_consumer_timeout(
    amqp_url: str, tmp_path: Path
) -> None:
    """The ledger is unreachable, so the resolver holds its deliveries. RabbitMQ's consumer
    timeout (shortened to 5 s; RabbitMQ 3.10 checks it once a minute) used to close the
    channel and return every one of them, counting each return against the delivery limit
    (10, then parked with no reason). Held past `hold_limit_seconds`, each goes back to the
    end of its queue as a fresh copy instead, before the timeout can find it."""
    dead_ledger = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    config = make_config(amqp_url, tmp_path / "media", extra=ledger_section(dead_ledger))
    config = config.model_copy(
        update={"broker": config.broker.model_copy(update={"hold_limit_seconds": 2.0})}
    )
    webhooks = [sms(f"while the ledger is away {i}") for i in range(10)]
    async with consumer_timeout(5000):
        async with bridge(config, workers=("resolver",)), aiohttp.ClientSession() as session:
            for _, body in webhooks:
                assert (await post(session, webhook_url(config), body))[0] == 200
            await asyncio.sleep(70)  # past one of RabbitMQ's consumer-timeout checks
        # Stopped: what was held went back once. Read what the queue holds now.
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            queue = await channel.get_queue(topology.INBOUND_QUEUE, ensure=False)
            returns = {}
            while (message := await queue.get(fail=False, timeout=5)) is not None:
                headers = message.headers or {}
                count = headers.get("x-delivery-count", 0)
                carried = headers.get(topology.H_RETURNS, 0)
                returns[message.message_id] = int(str(count)) + int(str(carried))
    print(f"\nreturns counted per message after 70 s held: {sorted(returns.values())}")
    assert set(returns) == {mid for mid, _ in webhooks}, "nothing lost, nothing parked"
    assert max(returns.values()) <= 1, "only the stop gave them back; no consumer timeout"


async def test_media_that_fails_for_a_passing_reason_is_fetched_again_later(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """The media server answers 503 for a while (more than the fetcher's quick retries). The
    MMS used to reach the PBX at once with `url: null`, although Flowroute's link stays valid
    for days: now it waits in a delay queue with what it fetched, and is tried again."""
    config = make_config(
        amqp_url,
        tmp_path / "media",
        extra_media="retry_delays = [1.0]\nretry_for_seconds = 60",
    )
    good = sandbox.add_media("door.png", b"\x89PNG door", "image/png")
    sandbox.add_media("storefront.png", b"\x89PNG shop", "image/png")
    flaky = f"{sandbox.url}/media/_flaky/storefront.png?fail=4"  # 3 quick tries fail, then 1
    mid = f"mdr2-{uuid.uuid4().hex}"
    payload = inbound_mms(
        "12025551234",
        "12065550142",
        "pictures",
        [MediaSpec(good, "door.png", "image/png", 9), MediaSpec(flaky, "s.png", "image/png", 10)],
        message_id=mid,
    )
    async with (
        bridge(config),
        listen(amqp_url, pattern="inbound.*") as pbx,
        aiohttp.ClientSession() as session,
    ):
        assert (await post(session, webhook_url(config), orjson.dumps(payload)))[0] == 200
        _, event = await pbx.next_json(timeout=30)
        assert await pbx.quiet(1.0) == []
    assert event["id"] == mid
    door, storefront = event["media"]
    assert door["url"] and door["error"] is None
    assert storefront["url"] and storefront["error"] is None, storefront
    assert "retry" not in door and "retry" not in storefront
    door_fetches = sum(n for path, n in sandbox.media.hits.items() if "door.png" in path)
    assert door_fetches == 1, "what was fetched is kept between tries"


async def test_a_body_nested_too_deeply_to_be_written_again_is_refused(
    amqp_url: str, tmp_path: Path
) -> None:
    """orjson reads 1,024 levels but writes 254: such a body used to get a 200 from the
    gateway and then park in the resolver as an internal error."""
    config = make_config(amqp_url, tmp_path / "media")
    _, body = sms("deep")
    deep = b"[" * 300 + b'"bottom"' + b"]" * 300
    body = body.replace(b'"body":', b'"extra":' + deep + b',"body":', 1)
    assert orjson.loads(body)  # readable
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        status, _ = await post(session, webhook_url(config), body)
    assert status == 422
