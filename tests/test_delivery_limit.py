"""Healthy messages never use up the delivery limit.

RabbitMQ 3.10 counts every return of a delivery against a quorum queue's `x-delivery-limit`
(a nack with requeue, a channel or connection closing with it unacked, the consumer timeout)
and dead-letters the message to its parking queue once the limit is reached. Three routine
situations used to do that to healthy messages, silently (no status.failed, no
InboundMessage):
- a memory alarm: publishes wait for their confirm, and requeueing after each confirm
  timeout looped a delivery round ~11 times;
- an account held (401/403) for longer than the consumer timeout: the prefetched requests
  waited unacked and each consumer-timeout close counted one;
- rolling restarts with a backlog: every graceful stop returned the prefetched deliveries.

These use the shared broker's global settings (memory watermark, consumer timeout) and
restore them on exit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from smsbridge import topology
from smsbridge.sandbox import AccountSpec, Sandbox
from tests.harness import bridge
from tests.procs import (
    Setup,
    config_text,
    consumer_timeout,
    declare_pbx_queue,
    memory_alarm,
    outbound_request,
    parked_counts,
    parked_reasons,
    post_until_accepted,
    publisher,
    queue_report,
    queue_state,
    read_pbx_queue,
    sends_per_request,
    sms_payloads,
    wait_for_consumer,
    wait_until,
)

ACCOUNT_QUEUE = topology.account_queue("flowroute")


@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_a_memory_alarm_during_a_load_parks_nothing_and_loses_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(
            media_dir=tmp_path / "media",
            api_url=sandbox.api_url,
            sms_per_second=20,
            max_age_seconds=600,
        ),
    )
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    await declare_pbx_queue(amqp_url)
    inbound = sms_payloads(300, "alarm")
    requests = [f"alarm-{i}" for i in range(200)]
    async with (
        bridge(setup.config, workers=("resolver", "media", "outbound")),
        aiohttp.ClientSession() as session,
    ):
        async with publisher(amqp_url) as pub:
            for request_id in requests:
                await pub.request(outbound_request(request_id))
        load = asyncio.create_task(post_until_accepted(session, setup.webhook_url, inbound, 0.02))
        await asyncio.sleep(1.5)  # both loads are flowing
        async with memory_alarm():
            await asyncio.sleep(60)
        answers = await load
        accepted = {mid for mid, a in answers.items() if a and a[-1] == 200}
        tally = await read_pbx_queue(
            amqp_url,
            lambda t: accepted <= t.ids("inbound.100") and set(requests) <= t.ids("status.sent"),
            timeout=120,
        )
        parked = await parked_counts(amqp_url)
        report = queue_report(amqp_url) + str((await parked_reasons(amqp_url))[:5])
    refused = sum(1 for a in answers.values() for status in a if status != 200)
    print(
        f"\nmemory alarm 60 s: {len(accepted)}/{len(inbound)} webhooks accepted "
        f"({refused} answers were 503 while blocked), "
        f"{len(tally.ids('inbound.100'))} InboundMessages "
        f"(duplicates {tally.duplicates('inbound.100')}), "
        f"{len(tally.ids('status.sent'))}/{len(requests)} sent, parked {parked}"
    )
    assert accepted == set(inbound), "Flowroute's resends got every webhook in"
    assert refused > 0, "the alarm did block publishing"
    assert sum(parked.values()) == 0, report
    assert tally.ids("inbound.100") == accepted
    assert tally.duplicates("inbound.100") == 0
    assert tally.ids("status.sent") >= set(requests)
    assert sends_per_request(sandbox) == dict.fromkeys(requests, 1)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_an_account_held_longer_than_the_consumer_timeout_parks_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Flowroute refuses the keys (401) for longer than the broker's (shortened) consumer
    timeout: the backlog waits in the account queue, not as unacked deliveries (which the
    timeout would return, counting each), and goes out once the keys work."""
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, sms_per_second=5),
    )
    requests = [f"held-{i}" for i in range(30)]
    sandbox.set_account(AccountSpec("sandbox-access", "the-keys-were-rotated"))
    await declare_pbx_queue(amqp_url)
    # RabbitMQ 3.10 checks consumer timeouts once a minute, whatever their value.
    async with consumer_timeout(1000), bridge(setup.config, workers=("outbound",)):
        async with publisher(amqp_url) as pub:
            for request_id in requests:
                await pub.request(outbound_request(request_id))
        assert await wait_until(lambda: sandbox.stats()["by_status"].get("401", 0) > 0, 20)
        await asyncio.sleep(2)
        ready, unacked, consumers = await queue_state(amqp_url, ACCOUNT_QUEUE)
        await asyncio.sleep(65)  # past a consumer-timeout check
        parked_while_held = await parked_counts(amqp_url)
        after = await queue_state(amqp_url, ACCOUNT_QUEUE)
        sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret"))  # keys fixed
        tally = await read_pbx_queue(
            amqp_url, lambda t: set(requests) <= t.ids("status.sent"), timeout=120
        )
        parked = await parked_counts(amqp_url)
        report = queue_report(amqp_url)
    print(
        f"\nheld 67 s with a 1 s consumer timeout: account queue ready/unacked/consumers "
        f"{ready}/{unacked}/{consumers}, after the timeout check {after}, parked while held "
        f"{parked_while_held}, {len(tally.ids('status.sent'))}/{len(requests)} sent afterwards"
    )
    assert unacked == 0 and consumers == 0, "nothing is held on a consumer"
    assert after[1] == 0
    assert sum(parked_while_held.values()) == 0, report
    assert sum(parked.values()) == 0, report
    assert tally.ids("status.sent") >= set(requests)
    assert "status.failed" not in {key for key, _ in tally.counts}
    assert sends_per_request(sandbox) == dict.fromkeys(requests, 1)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_rolling_restarts_with_a_backlog_park_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Twelve graceful restarts of the outbound worker while its account has a backlog that
    it sends at 1 SMS/s: the head of the queue is prefetched (and given back) every time."""
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(
            media_dir=tmp_path / "media",
            api_url=sandbox.api_url,
            sms_per_second=1,
            concurrency=40,
        ),
    )
    requests = [f"restart-{i}" for i in range(25)]
    await declare_pbx_queue(amqp_url)
    with setup.worker("outbound") as worker:
        await wait_for_consumer(amqp_url, ACCOUNT_QUEUE, worker=worker)
        async with publisher(amqp_url) as pub:
            for request_id in requests:
                await pub.request(outbound_request(request_id))
        stops = []
        for _ in range(12):
            await asyncio.sleep(1.0)
            stops.append(await asyncio.to_thread(worker.terminate))
            worker.start()
            await wait_for_consumer(amqp_url, ACCOUNT_QUEUE, worker=worker)
        sent_during_restarts = len(sends_per_request(sandbox))
        tally = await read_pbx_queue(
            amqp_url, lambda t: set(requests) <= t.ids("status.sent"), timeout=120
        )
        parked = await parked_counts(amqp_url)
        report = queue_report(amqp_url)
        output = worker.output()
    print(
        f"\n12 rolling restarts: {sent_during_restarts} sent meanwhile, "
        f"stops took {min(stops):.1f}-{max(stops):.1f} s, parked {parked}"
    )
    assert sent_during_restarts < len(requests) - 10, "most of the backlog saw every restart"
    assert sum(parked.values()) == 0, report
    assert tally.ids("status.sent") >= set(requests)
    assert sends_per_request(sandbox) == dict.fromkeys(requests, 1)
    assert "continues as a fresh copy" in output
