"""One accepted send per request, and every failure reported and kept, whatever happens between
a POST and the ack: a lost answer whose delivery receipt came, a status.failed the broker
refused, a stop during a quick retry's wait, quiet hours that begin while a request waits
for its rate slot, a request id that pretends to be one of the bridge's own replies.

Real RabbitMQ (a fresh vhost), real PostgreSQL (a fresh database) where the ledger is on, and
the sandbox over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aio_pika
import aiohttp
import orjson
import pytest

from smsbridge import clock, topology
from smsbridge.broker import Broker
from smsbridge.once import MemorySendClaims, SendClaim
from smsbridge.sandbox import AccountSpec, Sandbox
from tests.harness import bridge, drain, listen, make_config, queue_depth
from tests.procs import (
    Tally,
    full_pbx_queue,
    ledger_section,
    outbound_request,
    publisher,
    sends_per_request,
    wait_until,
)
from workers.consumer import Consumer
from workers.outbound import OutboundWorker
from workers.outbound.intake import tell_failed

ACCOUNT_QUEUE = topology.account_queue("flowroute")
PARKED = topology.parked_queue("outbound")


@asynccontextmanager
async def status_events(amqp_url: str) -> AsyncIterator[tuple[Tally, list[dict[str, object]]]]:
    """Every status event (tallied), and each copy with its AMQP message id."""
    copies: list[dict[str, object]] = []
    async with listen(amqp_url, pattern="status.*") as listener:

        async def keep() -> None:
            while True:
                message = await listener.messages.get()
                copies.append({"message_id": message.message_id, **orjson.loads(message.body)})
                tally.add(message.routing_key or "", orjson.loads(message.body))

        tally = Tally()
        task = asyncio.create_task(keep())
        try:
            yield tally, copies
        finally:
            task.cancel()


async def test_a_send_whose_answer_was_lost_but_whose_receipt_came_is_not_sent_again(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    """Flowroute accepts the send and posts its delivery receipt, but the answer to the POST
    is lost: the receipt (recorded on the request's row) says it was accepted. Looking it up
    in Flowroute's records used to skip the request's own record, because the receipt had
    put its provider id among those "known to belong to other requests": it was sent again."""
    config = make_config(
        amqp_url,
        tmp_path / "media",
        api_url=sandbox.api_url,
        extra_outbound="reconcile_after = 2",
        extra=ledger_section(ledger_url),
    )
    sandbox.set_fault(count=1, accept_then_drop=True)
    async with (
        bridge(config, workers=("outbound",)),
        status_events(amqp_url) as (tally, _),
        publisher(amqp_url) as pub,
    ):
        await pub.request(outbound_request("lost-answer"))
        assert await wait_until(lambda: tally.ids("status.sent") == {"lost-answer"}, 30)
        await asyncio.sleep(3)  # what a second send would need to show up
    assert sends_per_request(sandbox) == {"lost-answer": 1}
    [message] = sandbox.messages
    assert tally.events[("status.sent", "lost-answer")]["provider_id"] == message.id
    assert tally.duplicates("status.sent") == 0


@pytest.mark.parametrize("ledger", ["off", "on"])
async def test_a_failure_whose_status_publish_was_refused_is_reported_the_same_and_parked(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str, ledger: str
) -> None:
    """Flowroute refuses the request for good (422). Its status.failed cannot be stored at
    first (a PBX queue refuses it), so the sender runs again: it used to find the request
    settled, publish a different status.failed ("failed or was blocked before", 0 attempts)
    and ack it without parking it."""
    config = make_config(
        amqp_url,
        tmp_path / "media",
        api_url=sandbox.api_url,
        extra=ledger_section(ledger_url if ledger == "on" else None),
    )
    sandbox.set_fault(422, count=1, detail="Invalid destination number")
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await topology.declare(channel)
        full = await full_pbx_queue(channel, "pbx.full", "status.failed")
        async with (
            bridge(config, workers=("outbound",)),
            status_events(amqp_url) as (tally, copies),
            publisher(amqp_url) as pub,
        ):
            await pub.request(outbound_request("refused"))
            assert await wait_until(lambda: tally.ids("status.failed") == {"refused"}, 30)
            await asyncio.sleep(1.5)  # the sender waits and tries again; nothing is parked
            assert await queue_depth(amqp_url, PARKED) == 0
            await full.delete(if_unused=False, if_empty=False)
            assert await wait_until(lambda: queue_depth(amqp_url, PARKED), 30), (
                "the failed request is parked"
            )
            await asyncio.sleep(0.5)
    reasons = {str(c["reason"]) for c in copies}
    assert reasons == {"Flowroute refused: HTTP 422: Invalid destination number"}
    assert len({c["message_id"] for c in copies}) == 1, "the same event each time"
    assert {c["attempts"] for c in copies} == {1}
    [parked] = await drain(amqp_url, PARKED)
    assert (parked.headers or {})[topology.H_REASON] == reasons.pop()


async def test_a_stop_during_a_quick_retrys_wait_gives_the_delivery_back_at_once(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Flowroute answers 503 with Retry-After: 30. The sender waits before its next quick
    retry; a stop used to wait for that sleep (up to the stop timeout, 20 s) before the
    delivery went back."""
    config = make_config(amqp_url, tmp_path / "media", api_url=sandbox.api_url)
    sandbox.set_fault(503, retry_after="30")
    running = bridge(config, workers=("outbound",))
    async with publisher(amqp_url) as pub:
        await running.__aenter__()
        stopped = False
        try:
            await pub.request(outbound_request("retrying"))
            assert await wait_until(lambda: sandbox.stats()["attempts"] >= 1, 20)
            await asyncio.sleep(0.5)  # in the quick retry's 30 s wait
            started = time.monotonic()
            await running.__aexit__(None, None, None)
            stopped = True
            took = time.monotonic() - started
        finally:
            if not stopped:
                await running.__aexit__(None, None, None)
    print(f"\nstop during a 30 s Retry-After wait took {took:.1f} s")
    assert took < 10, "the wait was cut short"
    assert await queue_depth(amqp_url, ACCOUNT_QUEUE) == 1, "given back, not lost"
    assert sends_per_request(sandbox) == {}


async def test_quiet_hours_that_begin_while_requests_wait_for_a_slot_hold_them(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """At 1 SMS/s, eight requests made at 20:59:57.5 wait up to 8 s for their slots. Quiet
    hours begin at 21:00: those whose slot comes after that wait for 08:00; they used to be
    sent because the policy was only read before the wait."""
    night = ZoneInfo("America/New_York")
    config = make_config(
        amqp_url,
        tmp_path / "media",
        api_url=sandbox.api_url,
        sms_per_second=1,
        policy="night",
        extra="""
[[policies]]
name = "night"
quiet_hours = { start = "21:00", end = "08:00", timezone = "America/New_York" }
""",
    )
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=1))
    requests = [f"evening-{i}" for i in range(8)]
    clock.travel(datetime(2026, 6, 1, 20, 59, 57, 500_000, tzinfo=night))
    try:
        async with (
            bridge(config, workers=("outbound",)),
            status_events(amqp_url) as (tally, copies),
            publisher(amqp_url) as pub,
        ):
            for request_id in requests:
                await pub.request(outbound_request(request_id))
            assert await wait_until(
                lambda: tally.ids("status.sent") | tally.ids("status.progress") >= set(requests),
                30,
            )
            await asyncio.sleep(1.0)
    finally:
        clock.travel(None)
    sent = tally.ids("status.sent")
    waiting = {str(c["id"]) for c in copies if c["reason"] == "quiet hours"}
    print(f"\n{len(sent)} sent before 21:00, {len(waiting)} held for quiet hours")
    assert 1 <= len(sent) <= 3, "nothing sent after 21:00"
    assert waiting == set(requests) - sent
    assert len(sandbox.messages) == len(sent)


async def test_a_request_id_reserved_for_the_bridges_replies_is_refused(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    """`auto-` ids belong to the bridge's replies to STOP, START and HELP, which no opt-out
    and no quiet hours hold back. A PBX request with such an id (with or without the reply
    header) is refused: it could otherwise reach someone who opted out, or collide with a
    reply's id."""
    config = make_config(
        amqp_url, tmp_path / "media", api_url=sandbox.api_url, extra=ledger_section(ledger_url)
    )
    async with (
        bridge(config, workers=("outbound",)),
        status_events(amqp_url) as (tally, copies),
        publisher(amqp_url) as pub,
    ):
        await pub.request(outbound_request("auto-mine"))
        forged = topology.json_message(
            orjson.dumps(outbound_request("auto-mdr2-0123")),
            message_id="auto-mdr2-0123",
            headers={topology.H_AUTO_REPLY: "stop"},
        )
        exchange = await pub.channel.get_exchange(topology.OUTBOUND, ensure=False)
        await exchange.publish(forged, topology.SEND_KEY, mandatory=True, timeout=10)
        await pub.request(outbound_request("ordinary"))
        assert await wait_until(
            lambda: (
                tally.ids("status.failed") == {"auto-mine", "auto-mdr2-0123"}
                and "ordinary" in tally.ids("status.sent")
            ),
            30,
        )
    for copy in copies:
        if copy["status"] == "failed":
            assert "reserved for the bridge's replies" in str(copy["reason"])
    assert sends_per_request(sandbox) == {"ordinary": 1}


async def test_a_request_parked_for_a_bug_still_gets_its_status_failed(
    amqp_url: str, tmp_path: Path
) -> None:
    """The outbound consumers' park hook: a handler that fails unexpectedly (a bug) parks the
    request, and the PBX hears status.failed with the same reason; before, it heard
    nothing."""
    config = make_config(amqp_url, tmp_path / "media")
    broker = Broker(config.broker.addresses(), "bug-test")

    async def buggy(_message: aio_pika.abc.AbstractIncomingMessage) -> str:
        raise ZeroDivisionError("a bug")

    consumer = Consumer(
        broker,
        topology.OUTBOUND_QUEUE,
        "outbound",
        buggy,
        prefetch=10,
        on_park=lambda message, reason: tell_failed(broker, message, reason),
    )
    broker.on_connect(consumer.start)
    await broker.start()
    try:
        await broker.wait_connected(15)
        async with status_events(amqp_url) as (tally, copies), publisher(amqp_url) as pub:
            await pub.request(outbound_request("buggy"))
            assert await wait_until(lambda: tally.ids("status.failed") == {"buggy"}, 20)
            assert await wait_until(lambda: queue_depth(amqp_url, PARKED), 20)
    finally:
        await consumer.stop()
        await broker.close()
    assert "ZeroDivisionError: a bug" in str(copies[0]["reason"])


async def test_resuming_a_paused_consumer_counts_as_reopening_it(amqp_url: str) -> None:
    """An account's consumer paused while its keys were refused may be the active one when it
    resumes (the other replica died meanwhile): its limiter must be primed as after a
    reopen, or it could send a second's worth on top of the dead replica's last second."""
    config = make_config(amqp_url, Path("/tmp"))
    broker = Broker(config.broker.addresses(), "resume-test")
    opened: list[float] = []

    async def never(_message: aio_pika.abc.AbstractIncomingMessage) -> str:
        return "ignored"

    consumer = Consumer(
        broker,
        topology.OUTBOUND_QUEUE,
        "outbound",
        never,
        prefetch=1,
        on_open=lambda: opened.append(1.0),
    )
    broker.on_connect(consumer.start)
    await broker.start()
    try:
        await broker.wait_connected(15)
        assert await wait_until(lambda: len(opened) == 1, 10)
        await consumer.pause()
        await consumer.resume()
        assert len(opened) == 2
    finally:
        await consumer.stop()
        await broker.close()


class SlowFirstRecords(MemorySendClaims):
    """Claims whose first five attempt records take 0.9 s (a ledger that stalls for a moment),
    the rest none."""

    def __init__(self) -> None:
        super().__init__(ttl=600)
        self.slow = 5

    async def attempting(self, claim: SendClaim, attempt: int) -> None:
        if self.slow > 0:
            self.slow -= 1
            await asyncio.sleep(0.9)


async def send_through(
    amqp_url: str, worker: OutboundWorker, requests: list[str], within: float
) -> None:
    """Start `worker` (built on its own Broker), have every request in `requests` sent
    through it, and stop it."""
    broker = worker.broker
    await worker.start()
    consumers = worker.consumers()

    async def consume() -> None:
        for consumer in consumers:
            await consumer.start()

    broker.on_connect(consume)
    await broker.start()
    try:
        await broker.wait_connected(15)
        async with status_events(amqp_url) as (tally, _), publisher(amqp_url) as pub:
            for request_id in requests:
                await pub.request(outbound_request(request_id))
            assert await wait_until(lambda: tally.ids("status.sent") == set(requests), within)
    finally:
        await asyncio.gather(*(consumer.stop() for consumer in consumers))
        await worker.close()
        await broker.close()


def busiest_second(sandbox: Sandbox) -> int:
    """The most attempts the sandbox received in any one second."""
    times = sorted(m.received_at for m in sandbox.messages)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    print(f"\nmost attempts in any one second: {busiest}")
    return busiest


async def test_a_slow_attempt_record_never_lets_a_burst_into_the_next_second(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """At 5 SMS/s, the first five attempts' records stall 0.9 s after their slots. Posted
    regardless, they used to land within a few milliseconds of the next five (10 in a
    second); now an attempt whose record took longer than the slot's margin takes another
    slot first."""
    config = make_config(amqp_url, tmp_path / "media", api_url=sandbox.api_url)
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=100))
    worker = OutboundWorker(
        config, Broker(config.broker.addresses(), "outbound"), SlowFirstRecords()
    )
    await send_through(amqp_url, worker, [f"burst-{i}" for i in range(15)], 30)
    assert busiest_second(sandbox) <= 5


async def test_an_older_send_of_the_same_text_is_never_taken_for_an_in_doubt_one(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Seven minutes ago the same text went to the same person from Flowroute's portal. A
    request's POST is lost on the way (never accepted): its look-up used to take the portal's
    record for its own, and the text was never sent. Only a record from the attempt's time
    on can be its send."""
    config = make_config(
        amqp_url, tmp_path / "media", api_url=sandbox.api_url, extra_outbound="reconcile_after = 2"
    )
    portal = {
        "data": {
            "type": "message",
            "attributes": {"to": "12065550142", "from": "12025551234", "body": "same-text"},
        }
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sandbox.api_url}/messages",
            data=orjson.dumps(portal),
            headers={"Content-Type": "application/vnd.api+json"},
            auth=aiohttp.BasicAuth("sandbox-access", "sandbox-secret"),
        ) as resp:
            assert resp.status == 202, await resp.text()
    [portal_send] = sandbox.messages
    portal_send.received_at -= 7 * 60
    sandbox.set_fault(count=1, drop=True)  # closed before it was accepted: in doubt
    async with (
        bridge(config, workers=("outbound",)),
        status_events(amqp_url) as (tally, _),
        publisher(amqp_url) as pub,
    ):
        await pub.request(outbound_request("same-text"))
        assert await wait_until(lambda: tally.ids("status.sent") == {"same-text"}, 30)
    assert sends_per_request(sandbox) == {"same-text": 2}, "the portal's and the request's"
    provider_id = tally.events[("status.sent", "same-text")]["provider_id"]
    assert provider_id != portal_send.id
    assert provider_id == sandbox.messages[1].id


class _SlowOptOutCheck:
    """The opt-out list's answer, 0.9 s late for the first five checks made after a rate slot
    (a busy ledger); those made before any wait (the first 1.5 s) are quick."""

    def __init__(self) -> None:
        self.slow = 5
        self.first: float | None = None

    async def __call__(self, ours: str, theirs: str) -> bool:
        now = time.monotonic()
        self.first = self.first or now
        if now - self.first > 1.5 and self.slow > 0:
            self.slow -= 1
            await asyncio.sleep(0.9)
        return False


async def test_a_slow_opt_out_check_after_the_slot_never_lets_a_burst_into_the_next_second(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    """At 5 SMS/s, twenty requests: those that waited over 2 s for their slot check the
    opt-out list again, and the first five checks take 0.9 s. The margin used to be counted
    from after that check: posted 0.9 s after their slots, they landed with the next five
    (10 in a second). The margin is counted from the slot's start now."""
    config = make_config(
        amqp_url,
        tmp_path / "media",
        api_url=sandbox.api_url,
        policy="stop",
        extra='[[policies]]\nname = "stop"\nopt_out = true\n' + ledger_section(ledger_url),
    )
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=100))
    # Memory claims; the check below stands in for the opt-out list's.
    worker = OutboundWorker(config, Broker(config.broker.addresses(), "outbound"))
    worker.sender.opted_out = _SlowOptOutCheck()
    requests = [f"checked-{i}" for i in range(20)]
    await send_through(amqp_url, worker, requests, 40)
    assert busiest_second(sandbox) <= 5
    assert sends_per_request(sandbox) == dict.fromkeys(requests, 1)
