"""Exactly once across replicas, with the ledger: components as real processes sharing one
PostgreSQL database (a fresh one per test), killed and scaled as an operator would."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from smsbridge import topology
from smsbridge.sandbox import AccountSpec, MediaSpec, Sandbox, inbound_mms, inbound_sms
from tests.harness import bridge
from tests.pg import OwnPostgres
from tests.procs import (
    Setup,
    SlowAnswers,
    config_text,
    declare_pbx_queue,
    outbound_request,
    parked_counts,
    parked_reasons,
    post,
    post_until_accepted,
    publisher,
    queue_report,
    read_pbx_queue,
    sends_per_request,
    sms_payloads,
    wait_for_consumer,
    wait_until,
)

ACCOUNT_QUEUE = topology.account_queue("flowroute")
SAME_TEXT = "Your appointment is tomorrow at 9:00"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_gateways_and_two_resolvers_publish_each_resent_message_once(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    """500 Flowroute messages, each posted 3 times at once across two gateways, two
    resolvers: the PBX gets each exactly once (without the ledger, 206-264 came twice)."""
    text = config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, ledger_url=ledger_url)
    first = Setup(amqp_url, tmp_path, text)
    (tmp_path / "g2").mkdir()
    second = Setup(
        amqp_url,
        tmp_path / "g2",
        config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, ledger_url=ledger_url),
    )
    await declare_pbx_queue(amqp_url)
    payloads = {
        mid: orjson.dumps(inbound_sms("12025551234", "12065550142", f"scale {i}", message_id=mid))
        for i, mid in enumerate(f"mdr2-{uuid.uuid4().hex}" for _ in range(500))
    }
    urls = [first.webhook_url, second.webhook_url]
    with (
        first.worker("gateway", "gateway-1") as g1,
        second.worker("gateway", "gateway-2") as g2,
        first.worker("resolver", "resolver-1") as r1,
        first.worker("resolver", "resolver-2") as r2,
    ):
        await wait_for_consumer(amqp_url, topology.INBOUND_QUEUE, worker=r1)
        for gateway in (g1, g2):
            assert await wait_until(lambda g=gateway: g.alive(), 5)
        async with aiohttp.ClientSession() as session:
            assert await wait_until(lambda: _ready(session, urls), 30)

            async def deliver(mid: str, body: bytes) -> list[int | str]:
                # Flowroute's resends, all at once, each to either gateway.
                answers = await asyncio.gather(
                    *(post(session, random.choice(urls), body) for _ in range(3))
                )
                return [status for status, _ in answers]

            results = await asyncio.gather(*(deliver(m, b) for m, b in payloads.items()))
        assert all(200 in answers for answers in results)
        tally = await read_pbx_queue(
            amqp_url, lambda t: set(payloads) <= t.ids("inbound.100"), timeout=120, settle=3
        )
        outputs = r1.output() + r2.output()
    print(
        f"\n2 gateways, 2 resolvers, 500 messages x 3 posts: "
        f"{len(tally.ids('inbound.100'))} InboundMessages, "
        f"duplicates {tally.duplicates('inbound.100')}"
    )
    assert tally.ids("inbound.100") == set(payloads)
    assert tally.duplicates("inbound.100") == 0
    assert "sandbox-secret" not in outputs


async def _ready(session: aiohttp.ClientSession, urls: list[str]) -> bool:
    for url in urls:
        base = url.rsplit("/", 1)[0]
        try:
            async with session.get(f"{base}/readyz") as resp:
                if resp.status != 200:
                    return False
        except aiohttp.ClientError:
            return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_an_outbound_replica_killed_mid_send_is_taken_over_without_a_second_send(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    """Flowroute accepts the sends at once but its answers take 1.5 s: the active replica is
    killed with sends accepted and unanswered. The standby takes the account over; what the
    dead one sent is found in Flowroute's records, the rest is sent, nothing twice. Half the
    requests say the same thing to the same person: each of Flowroute's records of that text
    is matched to one request only."""
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    async with SlowAnswers(sandbox.api_url, delay=1.5) as flowroute:
        setup = Setup(
            amqp_url,
            tmp_path,
            config_text(
                media_dir=tmp_path / "media",
                api_url=flowroute.api_url,
                sms_per_second=20,
                ledger_url=ledger_url,
                request_timeout=5,
                reconcile_after=1,
                max_age_seconds=300,
            ),
        )
        await declare_pbx_queue(amqp_url)
        requests = [f"takeover-{i}" for i in range(80)]
        same_text = set(requests[1::2])
        with setup.worker("outbound", "outbound-a") as active:
            await wait_for_consumer(amqp_url, ACCOUNT_QUEUE, worker=active)
            with setup.worker("outbound", "outbound-b") as standby:
                await asyncio.sleep(3)  # the standby is up and waiting its turn
                async with publisher(amqp_url) as pub:
                    for request_id in requests:
                        request = outbound_request(request_id)
                        if request_id in same_text:
                            request["body"] = SAME_TEXT
                        await pub.request(request)
                assert await wait_until(lambda: len(sandbox.messages) >= 30, 30)
                active.kill()
                accepted_at_kill = len(sandbox.messages)
                tally = await read_pbx_queue(
                    amqp_url, lambda t: set(requests) <= t.ids("status.sent"), timeout=150
                )
                parked = await parked_counts(amqp_url)
                output = standby.output()
    sends = sends_per_request(sandbox)
    reconciled = output.count("a send whose outcome was unknown had been accepted")
    print(
        f"\noutbound replica killed with {accepted_at_kill} accepted: standby reconciled "
        f"{reconciled} from Flowroute's records; sends per request max "
        f"{max(n for r, n in sends.items() if r != SAME_TEXT)}, of the same text "
        f"{sends[SAME_TEXT]} for {len(same_text)} requests"
    )
    distinct = [r for r in requests if r not in same_text]
    assert sends == {**dict.fromkeys(distinct, 1), SAME_TEXT: len(same_text)}, "0 doubled or lost"
    assert tally.ids("status.sent") >= set(requests)
    # Each request of the same text took its own one of Flowroute's records.
    provider_ids = {tally.events[("status.sent", r)]["provider_id"] for r in same_text}
    assert len(provider_ids) == len(same_text)
    assert provider_ids <= {m.id for m in sandbox.messages}
    assert reconciled > 0, "the in-doubt sends were looked up, not sent again"
    assert sum(parked.values()) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["resolver", "media"])
async def test_a_worker_killed_mid_load_publishes_nothing_twice(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str, kind: str
) -> None:
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(
            media_dir=tmp_path / "media",
            api_url=sandbox.api_url,
            prefetch=50,
            ledger_url=ledger_url,
        ),
    )
    await declare_pbx_queue(amqp_url)
    if kind == "resolver":
        payloads = sms_payloads(400, "kill")
        queue = topology.INBOUND_QUEUE
        others: tuple[str, ...] = ("media",)
    else:
        payloads = {}
        for i in range(60):
            mid = f"mdr2-{uuid.uuid4().hex}"
            name = f"m{i}.txt"
            sandbox.add_media(name, f"media of {i}".encode(), "text/plain")
            url = f"{sandbox.url}/media/_slow/{name}?delay=0.2"
            payloads[mid] = orjson.dumps(
                inbound_mms(
                    "12025551234",
                    "12065550142",
                    f"mms {i}",
                    [MediaSpec(url, name, "text/plain", 10)],
                    message_id=mid,
                )
            )
        queue = topology.MEDIA_QUEUE
        others = ("resolver",)
    async with bridge(setup.config, workers=others), aiohttp.ClientSession() as session:
        with setup.worker(kind) as worker:
            await wait_for_consumer(amqp_url, queue, worker=worker)
            load = asyncio.create_task(
                post_until_accepted(session, setup.webhook_url, payloads, 0.01)
            )
            tally_task = asyncio.create_task(
                read_pbx_queue(
                    amqp_url, lambda t: set(payloads) <= t.ids("inbound.100"), 150, settle=3
                )
            )
            await asyncio.sleep(1.5)
            worker.kill()
            worker.start()
            answers = await load
            tally = await tally_task
    accepted = {mid for mid, a in answers.items() if a and a[-1] == 200}
    print(
        f"\n{kind} kill -9 with the ledger: {len(tally.ids('inbound.100'))}/{len(payloads)} "
        f"InboundMessages, duplicates {tally.duplicates('inbound.100')}"
    )
    assert accepted == set(payloads)
    assert tally.ids("inbound.100") == accepted
    assert tally.duplicates("inbound.100") == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_postgresql_down_for_30_seconds_mid_load_loses_and_doubles_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """The ledger (a PostgreSQL this test owns) stops for 30 s during an inbound and outbound
    load: the gateway keeps accepting, the workers wait and carry on when it is back."""
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    async with await OwnPostgres.acreate() as pg:
        ledger_url = await pg.create_database("smsbridge")
        setup = Setup(
            amqp_url,
            tmp_path,
            config_text(
                media_dir=tmp_path / "media",
                api_url=sandbox.api_url,
                sms_per_second=20,
                ledger_url=ledger_url,
                max_age_seconds=300,
            ),
        )
        await declare_pbx_queue(amqp_url)
        inbound = sms_payloads(300, "pg down")
        requests = [f"pg-{i}" for i in range(150)]
        async with (
            bridge(setup.config, workers=("resolver", "media", "outbound")),
            aiohttp.ClientSession() as session,
        ):
            async with publisher(amqp_url) as pub:
                for request_id in requests:
                    await pub.request(outbound_request(request_id))
            load = asyncio.create_task(
                post_until_accepted(session, setup.webhook_url, inbound, 0.03)
            )
            await asyncio.sleep(2.0)
            await pg.astop("immediate")
            await asyncio.sleep(30)
            await pg.astart()
            answers = await load
            tally = await read_pbx_queue(
                amqp_url,
                lambda t: (
                    set(inbound) <= t.ids("inbound.100") and set(requests) <= t.ids("status.sent")
                ),
                timeout=150,
                settle=3,
            )
            parked = await parked_counts(amqp_url)
            report = queue_report(amqp_url) + str((await parked_reasons(amqp_url))[:5])
    accepted = {mid for mid, a in answers.items() if a and a[-1] == 200}
    refused = sum(1 for a in answers.values() for status in a if status != 200)
    print(
        f"\nPostgreSQL down 30 s: {len(accepted)}/{len(inbound)} webhooks accepted "
        f"({refused} refusals), {len(tally.ids('inbound.100'))} InboundMessages "
        f"(duplicates {tally.duplicates('inbound.100')}), "
        f"{len(sends_per_request(sandbox))}/{len(requests)} sent"
    )
    assert accepted == set(inbound) and refused == 0, "the gateway kept accepting"
    assert tally.ids("inbound.100") == accepted
    assert tally.duplicates("inbound.100") == 0
    assert sends_per_request(sandbox) == dict.fromkeys(requests, 1)
    assert tally.ids("status.sent") >= set(requests)
    assert sum(parked.values()) == 0, report
