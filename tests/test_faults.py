"""Fault tests (issue 4): show that nothing is lost.

- workers killed with SIGKILL in the middle of a load, as real subprocesses, then restarted;
- RabbitMQ stopped and started (`rabbitmqctl stop_app` / `start_app`) in the middle of a load;
- a two-minute Flowroute outage;
- a poison message in each work queue.

Duplicates are counted and printed (run with `-s` to see them) and asserted to be bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import prometheus_client
import pytest

from schemas.messages import InboundMessage, StatusEvent
from smsbridge import topology
from smsbridge.sandbox import AccountSpec, MediaSpec, Sandbox, inbound_mms, inbound_sms
from tests.harness import bridge, drain, listen
from tests.procs import (
    Setup,
    SlowAnswers,
    Tally,
    broker_outage,
    close_connections,
    config_text,
    consumer_count,
    declare_pbx_queue,
    outbound_request,
    post,
    post_load,
    publisher,
    queue_report,
    read_pbx_queue,
    sends_per_request,
    sms_payloads,
    tallying,
    wait_for_consumer,
    wait_until,
)

ACCOUNT_QUEUE = topology.account_queue("flowroute")


# -- 1. kill -9 of each worker kind in the middle of a load --------------------------------------


@pytest.mark.slow
async def test_resolver_killed_mid_load_loses_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    prefetch = 50
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, prefetch=prefetch),
    )
    payloads = sms_payloads(300, "resolver load")
    key = "inbound.100"
    async with (
        bridge(setup.config, workers=()),
        listen(amqp_url, pattern="inbound.*") as listener,
        tallying(listener) as tally,
        aiohttp.ClientSession() as session,
    ):
        with setup.worker("resolver") as resolver:
            await wait_for_consumer(amqp_url, topology.INBOUND_QUEUE, worker=resolver)
            load = asyncio.create_task(post_load(session, setup.webhook_url, payloads, 0.01))
            assert await wait_until(lambda: len(tally.ids(key)) >= 100, 30)
            resolver.kill()
            seen_at_kill = len(tally.ids(key))
            resolver.start()
            answers = await load
            accepted = {mid for mid, a in answers.items() if a[-1][0] == 200}
            assert accepted == set(payloads), "the gateway was not disturbed: all accepted"
            assert await wait_until(lambda: accepted <= tally.ids(key), 60)
            await asyncio.sleep(1.5)  # late twins
            output = resolver.output()
    duplicates = tally.duplicates(key)
    print(
        f"\nresolver kill -9: {len(accepted)} accepted, {seen_at_kill} seen before the kill, "
        f"{tally.total('inbound.')} InboundMessages, duplicates={duplicates} (prefetch {prefetch})"
    )
    assert seen_at_kill < len(payloads), "the kill happened in the middle of the load"
    assert tally.ids(key) == set(payloads)
    assert duplicates <= prefetch
    for event in list(tally.events.values())[:5]:
        InboundMessage.model_validate(event)
    assert "sandbox-secret" not in output and "fault-dlr-secret" not in output


@pytest.mark.slow
async def test_media_worker_killed_mid_load_loses_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    media_prefetch = min(setup.config.broker.prefetch, 32)  # what MediaWorker.consumer uses
    n = 40
    payloads: dict[str, bytes] = {}
    content: dict[str, bytes] = {}  # file name -> bytes
    for i in range(n):
        mid = f"mdr2-{uuid.uuid4().hex}"
        photo = hashlib.sha256(mid.encode()).digest() * 1000  # 32 kB, distinct per message
        note = f"note of message {i}".encode()
        specs = []
        for name, data, ctype in (
            (f"p{i}.jpg", photo, "image/jpeg"),
            (f"n{i}.txt", note, "text/plain"),
        ):
            sandbox.add_media(name, data, ctype)
            content[name] = data
            # Slow downloads (0.3 s) keep several messages in the worker when it is killed.
            url = f"{sandbox.url}/media/_slow/{name}?delay=0.3"
            specs.append(MediaSpec(url, name, ctype, len(data)))
        payloads[mid] = orjson.dumps(
            inbound_mms("12025551234", "12065550142", f"mms {i}", specs, message_id=mid)
        )
    key = "inbound.100"
    async with (
        bridge(setup.config, workers=("resolver",)),
        listen(amqp_url, pattern="inbound.*") as listener,
        tallying(listener) as tally,
        aiohttp.ClientSession() as session,
    ):
        with setup.worker("media") as media:
            await wait_for_consumer(amqp_url, topology.MEDIA_QUEUE, worker=media)
            load = asyncio.create_task(post_load(session, setup.webhook_url, payloads, 0.06))
            assert await wait_until(lambda: len(tally.ids(key)) >= 10, 30)
            media.kill()
            seen_at_kill = len(tally.ids(key))
            media.start()
            answers = await load
            accepted = {mid for mid, a in answers.items() if a[-1][0] == 200}
            assert accepted == set(payloads)
            assert await wait_until(lambda: accepted <= tally.ids(key), 60)
            await asyncio.sleep(1.5)
            # Every item was fetched, stored whole and is served by the gateway.
            for mid in accepted:
                message = InboundMessage.model_validate(tally.events[(key, mid)])
                assert len(message.media) == 2
                for item in message.media:
                    assert item.error is None and item.url is not None, item
                    data = content[item.file_name or ""]
                    assert item.size == len(data)
                    assert item.sha256 == hashlib.sha256(data).hexdigest()
                    async with session.get(item.url) as resp:
                        assert resp.status == 200
                        assert await resp.read() == data
            output = media.output()
    downloads = {
        path: hits for path, hits in sandbox.media.hits.items() if path.startswith("/media/_slow/")
    }
    refetched = sum(hits - 1 for hits in downloads.values())
    duplicates = tally.duplicates(key)
    print(
        f"\nmedia kill -9: {n} MMS, {seen_at_kill} delivered before the kill, "
        f"items fetched again={refetched} (of {len(downloads)}), "
        f"duplicate InboundMessages={duplicates}"
    )
    assert seen_at_kill < n, "the kill happened in the middle of the load"
    assert len(downloads) == 2 * n
    # Only what the killed worker had in flight is fetched again...
    assert refetched <= 2 * media_prefetch
    # ...and the resolver (one instance, never restarted) still publishes each id once.
    assert duplicates == 0
    assert "sandbox-secret" not in output


@pytest.mark.slow
async def test_outbound_worker_killed_mid_load_loses_nothing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    concurrency = 16
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=50))
    ids = [f"kill-{i:03d}" for i in range(60)]
    # Flowroute accepts each send at once but its answer takes 0.3 s to come back: the kill
    # finds sends accepted but not yet known to the worker (the only window for a resend).
    async with SlowAnswers(sandbox.api_url, delay=0.3) as flowroute:
        setup = Setup(
            amqp_url,
            tmp_path,
            config_text(
                media_dir=tmp_path / "media",
                api_url=flowroute.api_url,
                sms_per_second=50,
                prefetch=concurrency,
                concurrency=concurrency,
            ),
        )
        async with (
            bridge(setup.config, workers=()),  # the gateway takes the delivery receipts
            listen(amqp_url, pattern="status.*") as listener,
            tallying(listener) as tally,
            publisher(amqp_url) as pub,
        ):
            with setup.worker("outbound") as worker:
                await wait_for_consumer(amqp_url, ACCOUNT_QUEUE, worker=worker)
                for request_id in ids:
                    await pub.request(outbound_request(request_id))
                assert await wait_until(lambda: len(tally.ids("status.sent")) >= 15, 30)
                worker.kill()
                sent_at_kill = len(tally.ids("status.sent"))
                accepted_at_kill = len(sandbox.messages)
                worker.start()
                assert await wait_until(lambda: tally.ids("status.sent") >= set(ids), 60), (
                    sorted(set(ids) - tally.ids("status.sent")),
                    worker.output()[-3000:],
                )
                await asyncio.sleep(1.5)
                output = worker.output()
    sends = sends_per_request(sandbox)
    sent_twice = sum(n - 1 for n in sends.values())
    status_duplicates = tally.duplicates("status.sent")
    print(
        f"\noutbound kill -9: {len(ids)} requests, {sent_at_kill} status.sent before the kill, "
        f"{accepted_at_kill - sent_at_kill} accepted by Flowroute but unconfirmed at the kill, "
        f"Flowroute sends={len(sandbox.messages)} (sent twice={sent_twice}), "
        f"duplicate status.sent={status_duplicates}, "
        f"rate_limited={sandbox.stats()['rate_limited']} (concurrency {concurrency})"
    )
    assert sent_at_kill < len(ids), "the kill happened in the middle of the load"
    assert set(sends) == set(ids)
    assert tally.ids("status.failed") == set()
    # A second send only for what the killed replica had in flight.
    assert sent_twice <= concurrency
    assert status_duplicates <= concurrency
    for request_id in ids:
        event = StatusEvent.model_validate(tally.events[("status.sent", request_id)])
        assert sandbox.message(event.provider_id or "") is not None
    assert "sandbox-secret" not in output


# -- 2. RabbitMQ stopped and started in the middle of a load -------------------------------------

OUTAGE_SECONDS = 6.0


async def outage_during(
    session: aiohttp.ClientSession, setup: Setup, started: float, timeline: dict[str, float]
) -> list[int]:
    """stop_app, ~OUTAGE_SECONDS of outage while polling /readyz, start_app (always)."""
    ready: list[int] = []
    timeline["stop"] = time.monotonic() - started
    async with broker_outage():
        timeline["stopped"] = time.monotonic() - started
        while time.monotonic() - started < timeline["stop"] + OUTAGE_SECONDS:
            async with session.get(f"{setup.base_url}/readyz") as resp:
                ready.append(resp.status)
            await asyncio.sleep(0.5)
        timeline["start"] = time.monotonic() - started
    timeline["started"] = time.monotonic() - started

    async def is_ready() -> bool:
        async with session.get(f"{setup.base_url}/readyz") as resp:
            return resp.status == 200

    assert await wait_until(is_ready, 60), "the gateway reconnects on its own"
    timeline["ready"] = time.monotonic() - started
    return ready


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_gateway_through_a_broker_restart_answers_503_and_loses_no_200(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Webhooks keep coming (25/s) while RabbitMQ is stopped for ~6 s. The gateway answers 503
    promptly, never 200 for a message it did not store, and accepts again on its own once the
    broker is back. Every 200 arrives as an InboundMessage (a resolver started afterwards
    delivers them: see the next test for workers living through the restart)."""
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    await declare_pbx_queue(amqp_url)
    payloads = sms_payloads(400, "outage load")
    timeline: dict[str, float] = {}
    key = "inbound.100"
    async with bridge(setup.config, workers=()), aiohttp.ClientSession() as session:
        started = time.monotonic()
        load = asyncio.create_task(post_load(session, setup.webhook_url, payloads, 0.04, 1))
        await asyncio.sleep(3.0)
        ready_during_outage = await outage_during(session, setup, started, timeline)
        first_pass = await load
        timeline["load done"] = time.monotonic() - started
        # Flowroute resends what was not answered 200; the gateway takes them now.
        retry = {mid: payloads[mid] for mid, a in first_pass.items() if a[-1][0] != 200}
        resent = await post_load(session, setup.webhook_url, retry, 0.005) if retry else {}
        async with bridge(setup.config, gateway=False, workers=("resolver",)):
            tally = await read_pbx_queue(
                amqp_url, lambda t: t.ids(key) >= set(payloads), timeout=60
            )
    statuses = Counter(a[0][0] for a in first_pass.values())
    slowest = max(a[0][1] for a in first_pass.values())
    accepted_first = {mid for mid, a in first_pass.items() if a[0][0] == 200}
    print(
        f"\nbroker stop_app/start_app (gateway): timeline "
        f"{ ({k: round(v, 1) for k, v in timeline.items()}) }, first answers {dict(statuses)}, "
        f"slowest answer {slowest:.2f} s, resent {len(retry)}, "
        f"duplicate InboundMessages={tally.duplicates(key)}"
    )
    # During the outage: 503 (never a hang, never an error page).
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, "the outage was seen by the gateway"
    assert statuses[200] > 0
    assert slowest < 5.0, f"a webhook took {slowest:.1f} s to be answered"
    assert ready_during_outage and set(ready_during_outage) == {503}
    # After it, the same gateway accepts again, with no restart.
    assert {a[-1][0] for a in resent.values()} <= {200}
    # Never a 200 for a message that was not stored: every first-pass 200 arrived...
    assert accepted_first <= tally.ids(key)
    # ...and so did the rest, after Flowroute's resends. Once each: the resolver dedupes.
    assert tally.ids(key) == set(payloads)
    assert tally.duplicates(key) == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_workers_resume_on_their_own_after_a_broker_restart(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Gateway, resolver and outbound worker run through a RabbitMQ stop/start, with sends
    pending (Flowroute failing) across it. Without any restart: every webhook answered 200
    arrives, every request is sent exactly once and gets its status.sent."""
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    await declare_pbx_queue(amqp_url)
    before, after = sms_payloads(100, "before"), sms_payloads(100, "after")
    batch_a = [f"before-{i}" for i in range(10)]  # sent before the outage
    batch_b = [f"during-{i}" for i in range(10)]  # pending (Flowroute failing) across it
    batch_c = [f"after-{i}" for i in range(10)]  # published after it
    requests = set(batch_a + batch_b + batch_c)
    timeline: dict[str, float] = {}
    key = "inbound.100"
    async with (
        bridge(setup.config, workers=("resolver", "outbound")),
        aiohttp.ClientSession() as session,
    ):
        started = time.monotonic()
        answers = await post_load(session, setup.webhook_url, before, 0.005)
        async with publisher(amqp_url) as pub:
            for request_id in batch_a:
                await pub.request(outbound_request(request_id))
            assert await wait_until(lambda: len(sandbox.messages) == len(batch_a), 20)
            await asyncio.sleep(1.0)  # their status.sent are confirmed
            # Flowroute fails until after the outage: batch B keeps retrying through it, and
            # Flowroute accepts nothing while the broker is down.
            sandbox.set_fault(503)
            for request_id in batch_b:
                await pub.request(outbound_request(request_id))
        await asyncio.sleep(1.0)
        await outage_during(session, setup, started, timeline)
        sandbox.clear_faults()
        answers.update(await post_load(session, setup.webhook_url, after, 0.005))
        async with publisher(amqp_url) as pub:
            for request_id in batch_c:
                await pub.request(outbound_request(request_id))
        assert {a[-1][0] for a in answers.values()} == {200}
        work_queues = (topology.INBOUND_QUEUE, topology.OUTBOUND_QUEUE, ACCOUNT_QUEUE)

        async def consuming() -> bool:
            counts = [await consumer_count(amqp_url, q) for q in work_queues]
            return min(counts) > 0

        resumed = await wait_until(consuming, 30)
        queues = await asyncio.to_thread(queue_report, amqp_url)
        print(f"\nbroker stop_app/start_app (workers): timeline {timeline}\n{queues}")
        assert resumed, f"the workers did not resume consuming:\n{queues}"

        def complete(tally: Tally) -> bool:
            return tally.ids(key) >= set(before) | set(after) and (
                tally.ids("status.sent") >= requests
            )

        tally = await read_pbx_queue(amqp_url, complete, timeout=60)
    sends = sends_per_request(sandbox)
    print(
        f"duplicate InboundMessages={tally.duplicates(key)}, "
        f"duplicate status.sent={tally.duplicates('status.sent')}, sends={len(sandbox.messages)}"
    )
    assert tally.ids(key) == set(before) | set(after)
    assert tally.duplicates(key) == 0
    assert tally.ids("status.sent") >= requests
    assert tally.ids("status.failed") == set()
    assert set(sends) == requests and set(sends.values()) == {1}, sends


def handled(outcome: str) -> float:
    """The outbound worker's smsbridge_messages_handled counter (in-process workers)."""
    labels = {"worker": "outbound", "outcome": outcome}
    return (
        prometheus_client.REGISTRY.get_sample_value("smsbridge_messages_handled_total", labels)
        or 0.0
    )


async def test_status_sent_survives_losing_the_publishing_connection_after_a_send(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Flowroute accepts the sends, then the outbound worker's publishing connection is lost
    before it can publish status.sent: the requests are not sent again, and their
    status.sent is still published (once the connection is back)."""
    ids = ["blip-0", "blip-1", "blip-2"]
    async with SlowAnswers(sandbox.api_url) as flowroute:
        flowroute.gate.clear()
        setup = Setup(
            amqp_url,
            tmp_path,
            config_text(media_dir=tmp_path / "media", api_url=flowroute.api_url),
        )
        async with (
            bridge(setup.config, workers=("outbound",)),
            listen(amqp_url, pattern="status.*") as listener,
            tallying(listener) as tally,
            publisher(amqp_url) as pub,
        ):
            for request_id in ids:
                await pub.request(outbound_request(request_id))
            # Accepted by Flowroute; its answers are held back.
            assert await wait_until(lambda: len(sandbox.messages) == len(ids), 20)
            assert await close_connections(amqp_url, "smsbridge-outbound-pub") == 1
            await asyncio.sleep(0.2)
            flowroute.gate.set()  # Flowroute's 202s arrive while the connection is down
            assert await wait_until(lambda: tally.ids("status.sent") >= set(ids), 30)
            await asyncio.sleep(1.0)
    assert sends_per_request(sandbox) == dict.fromkeys(ids, 1)
    for request_id in ids:
        event = StatusEvent.model_validate(tally.events[("status.sent", request_id)])
        assert sandbox.message(event.provider_id or "") is not None
    print(f"\npublishing connection lost: duplicate status.sent={tally.duplicates('status.sent')}")


# -- 3. a two-minute Flowroute outage ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(330)
async def test_flowroute_outage_of_two_minutes_sends_everything_once_afterwards(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Flowroute answers 503 for 120 s. The retry policy ([5, 10, 20] s tiers, 600 s max age)
    keeps every request going through it; after it, each is sent exactly once."""
    outage = 120.0
    delays = (5.0, 10.0, 20.0)
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(
            media_dir=tmp_path / "media",
            api_url=sandbox.api_url,
            sms_per_second=20,
            retry_delays=delays,
            max_age_seconds=600,
        ),
    )
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    ids = [f"outage-{i:02d}" for i in range(20)]
    sent_at: dict[str, float] = {}
    async with (
        bridge(setup.config, workers=("outbound",)),
        listen(amqp_url, pattern="status.*") as listener,
        tallying(listener) as tally,
        publisher(amqp_url) as pub,
    ):
        fault = sandbox.set_fault(503, seconds=outage)
        outage_ends = time.monotonic() + outage
        for request_id in ids:
            await pub.request(outbound_request(request_id))

        def all_sent() -> bool:
            now = time.monotonic()
            for request_id in tally.ids("status.sent"):
                sent_at.setdefault(request_id, now)
            return len(sent_at) == len(ids)

        # The longest tier is 20 s: after the outage, one round at most (plus its quick tries).
        assert await wait_until(all_sent, outage + max(delays) + 40, interval=0.5), sorted(
            set(ids) - set(sent_at)
        )
        await asyncio.sleep(2.0)  # late twins
    sends = sends_per_request(sandbox)
    first, last = min(sent_at.values()) - outage_ends, max(sent_at.values()) - outage_ends
    attempts = [e["attempts"] for (k, _), e in tally.events.items() if k == "status.sent"]
    print(
        f"\nFlowroute outage {outage:.0f} s: {fault.hits} attempts answered 503, sends after it "
        f"from +{first:.1f} s to +{last:.1f} s, attempts per request {min(attempts)}-"
        f"{max(attempts)}, duplicate status.sent={tally.duplicates('status.sent')}, "
        f"sent twice={sum(n - 1 for n in sends.values())}"
    )
    assert first > -1.0, "nothing was sent during the outage"
    assert last < max(delays) + 30
    assert fault.hits >= len(ids) * 3 * 4, "retries continued through the outage"
    assert min(attempts) > 3 * 4
    assert tally.ids("status.failed") == set()
    assert sends == dict.fromkeys(ids, 1), "none lost, none sent twice"
    assert tally.ids("status.sent") == set(ids)
    assert tally.duplicates("status.sent") == 0, "status.sent once per id"


async def test_a_broker_retry_round_makes_one_copy_and_one_status_sent(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """One transient failure round (3 quick attempts) -> one copy in the first tier queue
    -> one more attempt -> sent, one status.sent."""
    setup = Setup(
        amqp_url,
        tmp_path,
        config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, retry_delays=(1, 3)),
    )
    sandbox.set_fault(503, count=3)
    async with (
        bridge(setup.config, workers=("outbound",)),
        listen(amqp_url, pattern="status.*") as listener,
        tallying(listener) as tally,
        publisher(amqp_url) as pub,
    ):
        await pub.request(outbound_request("one-round"))
        assert await wait_until(lambda: "one-round" in tally.ids("status.sent"), 20)
        await asyncio.sleep(4.0)  # past the longest tier
    attempts = sandbox.stats()["attempts"]
    print(
        f"\none retry round: {attempts} attempts at Flowroute, "
        f"status.sent {tally.counts[('status.sent', 'one-round')]} times"
    )
    assert sends_per_request(sandbox) == {"one-round": 1}
    assert tally.counts[("status.sent", "one-round")] == 1
    assert attempts == 4


# -- 4. a poison message in each queue -----------------------------------------------------------

POISON: dict[str, tuple[str, list[bytes], str]] = {
    # queue: (parking stage, poison bodies, reason expected in x-smsbridge-reason)
    topology.INBOUND_QUEUE: (
        "inbound",
        [b"\xff\xfe{ not json", b'{"webhook": 42}', b'{"no": "webhook"}'],
        "unreadable webhook",
    ),
    topology.MEDIA_QUEUE: (
        "media",
        [b"\xff\xfe{ not json", b'{"webhook": {"data": []}}', b"[1, 2, 3]"],
        "unreadable webhook",
    ),
    topology.OUTBOUND_QUEUE: (
        "outbound",
        [b"\xff\xfe{ not json", b'{"id": 7, "to": ["x"]}', b'"just a string"'],
        "invalid request",
    ),
    ACCOUNT_QUEUE: (
        "outbound",
        [
            b"\xff\xfe{ not json",
            b'{"id": "x", "to": "+12065550142"}',
            b'{"id": "y", "to": "+1", "from": "+1", "media_urls": 7}',
        ],
        "unreadable send job",
    ),
}


@pytest.mark.parametrize("queue", list(POISON))
async def test_poison_message_is_parked_with_its_reason_and_the_queue_keeps_flowing(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, queue: str
) -> None:
    stage, bodies, reason = POISON[queue]
    setup = Setup(
        amqp_url, tmp_path, config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url)
    )
    poison_ids = [f"poison-{i}" for i in range(len(bodies))]
    async with (
        bridge(setup.config, workers=("resolver", "media", "outbound")),
        listen(amqp_url) as listener,
        tallying(listener) as tally,
        publisher(amqp_url) as pub,
        aiohttp.ClientSession() as session,
    ):
        for poison_id, body in zip(poison_ids, bodies, strict=True):
            await pub.raw(queue, body, poison_id)
        # A good message after the poison: it goes through.
        if stage == "outbound":
            await pub.request(outbound_request("good-1"))
            done = lambda: "good-1" in tally.ids("status.sent")  # noqa: E731
        else:
            mid = f"mdr2-{uuid.uuid4().hex}"
            media = [
                MediaSpec(
                    sandbox.add_media("ok.png", b"\x89PNG ok", "image/png"),
                    "ok.png",
                    "image/png",
                    7,
                )
            ]
            payload = (
                inbound_mms("12025551234", "12065550142", "good", media, message_id=mid)
                if stage == "media"
                else inbound_sms("12025551234", "12065550142", "good", message_id=mid)
            )
            status, _ = await post(session, setup.webhook_url, orjson.dumps(payload))
            assert status == 200
            done = lambda: mid in tally.ids("inbound.100")  # noqa: E731
        assert await wait_until(done, 20), "the good message went through"
        if queue == topology.OUTBOUND_QUEUE:
            # An invalid request also gets its status.failed (named by message_id when the body
            # has no usable id).
            assert await wait_until(lambda: tally.ids("status.failed") >= set(poison_ids), 10)
    parked = await drain(amqp_url, topology.parked_queue(stage))
    assert sorted(m.message_id or "" for m in parked) == poison_ids
    for message in parked:
        headers = message.headers or {}
        assert reason in str(headers[topology.H_REASON]), headers
        assert headers[topology.H_STAGE] == stage
        assert message.body == bodies[poison_ids.index(message.message_id or "")]
    if queue == topology.OUTBOUND_QUEUE:
        for poison_id in poison_ids:
            assert tally.events[("status.failed", poison_id)]["reason"].startswith(reason)
