"""A connection blip must not resend or republish.

Two things happen when the broker closes a worker's connections under load:
- aiormq cancels the consumer tasks of a channel that closes: a send cancelled after
  Flowroute accepted it, but before its answer, was sent again by the redelivery;
- a publish whose confirm is lost with its connection may or may not have been stored: the
  resolver published such InboundMessages again.
Each test closes the worker's connections (publishing and consuming, as a network blip or a
broker-side close would) again and again while it is busy, then counts.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika
import orjson
import pytest

from smsbridge import envelope, topology
from smsbridge.sandbox import AccountSpec, Sandbox, inbound_sms
from tests.harness import bridge
from tests.procs import (
    Setup,
    SlowAnswers,
    close_connections,
    config_text,
    declare_pbx_queue,
    outbound_request,
    parked_counts,
    publisher,
    read_pbx_queue,
    sends_per_request,
    wait_until,
)


async def prefill_inbound(amqp_url: str, count: int) -> set[str]:
    """`count` webhooks in smsbridge.inbound, as the gateway stores them."""
    ids = set()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        internal = await channel.get_exchange(topology.INTERNAL, ensure=False)
        for i in range(count):
            mid = f"mdr2-{uuid.uuid4().hex}"
            ids.add(mid)
            raw = orjson.dumps(
                inbound_sms("12025551234", "12065550142", f"blip {i}", message_id=mid)
            )
            body = envelope.wrap(raw, "flowrouteinbound", envelope.now_rfc3339())
            message = topology.json_message(body, message_id=mid, type_=envelope.TYPE)
            await internal.publish(message, topology.INBOUND_KEY, timeout=10)
    return ids


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_closing_the_resolvers_connections_while_it_drains_publishes_each_message_once(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    await declare_pbx_queue(amqp_url)
    ids = await prefill_inbound(amqp_url, 3000)
    closed = 0
    async with bridge(setup.config, gateway=False, workers=("resolver",)):
        tally_task = asyncio.create_task(
            read_pbx_queue(amqp_url, lambda t: ids <= t.ids("inbound.100"), 180, settle=3)
        )
        for _ in range(8):
            await asyncio.sleep(0.5)
            closed += await close_connections(amqp_url, prefix="smsbridge-resolver-")
        tally = await tally_task
        parked = await parked_counts(amqp_url)
    print(
        f"\n{closed} resolver connections closed while it drained {len(ids)} webhooks: "
        f"{len(tally.ids('inbound.100'))} InboundMessages, "
        f"duplicates {tally.duplicates('inbound.100')}"
    )
    assert closed >= 5, "the blips happened"
    assert tally.ids("inbound.100") == ids, "0 lost"
    assert tally.duplicates("inbound.100") == 0, "0 duplicate InboundMessages"
    assert sum(parked.values()) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_closing_the_outbound_workers_connections_mid_send_sends_each_message_once(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Flowroute takes the sends at once but its answers are held back until the worker's
    connections have been closed: each round, every send in flight is accepted and
    unanswered at the moment of the blip."""
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=50))
    rounds, per_round = 6, 20
    async with SlowAnswers(sandbox.api_url) as flowroute:
        setup = Setup(
            amqp_url,
            tmp_path,
            config_text(
                media_dir=tmp_path / "media",
                api_url=flowroute.api_url,
                sms_per_second=50,
                max_age_seconds=600,
            ),
        )
        await declare_pbx_queue(amqp_url)
        requests: list[str] = []
        closed = 0
        async with bridge(setup.config, gateway=False, workers=("outbound",)):
            for round_ in range(rounds):
                flowroute.gate.clear()
                batch = [f"blip-{round_}-{i}" for i in range(per_round)]
                requests += batch
                async with publisher(amqp_url) as pub:
                    for request_id in batch:
                        await pub.request(outbound_request(request_id))
                expected = len(requests)
                assert await wait_until(lambda n=expected: len(sandbox.messages) >= n, 30)
                closed += await close_connections(amqp_url, prefix="smsbridge-outbound-")
                await asyncio.sleep(1.5)  # reconnected; redeliveries meet the sends in flight
                flowroute.gate.set()
            tally = await read_pbx_queue(
                amqp_url, lambda t: set(requests) <= t.ids("status.sent"), 120, settle=3
            )
            parked = await parked_counts(amqp_url)
    sends = sends_per_request(sandbox)
    print(
        f"\n{closed} outbound connections closed with {per_round} sends in flight each time: "
        f"{len(sends)}/{len(requests)} sent, {sum(sends.values()) - len(sends)} sent twice, "
        f"duplicate status.sent {tally.duplicates('status.sent')}"
    )
    assert closed >= rounds, "the blips happened"
    assert sends == dict.fromkeys(requests, 1), "0 lost, 0 duplicate sends"
    assert tally.ids("status.sent") >= set(requests)
    assert sum(parked.values()) == 0
