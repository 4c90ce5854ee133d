"""A graceful stop of the outbound worker ends well inside an orchestrator's grace period
(compose gives 40 s before its SIGKILL), however many accounts are busy: every consumer
stops at once, deliveries waiting for a rate slot are given back at once, and sends already
in flight finish and are recorded (so nothing is sent twice after the restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from smsbridge import topology
from smsbridge.sandbox import AccountSpec, Sandbox
from tests.procs import (
    Setup,
    config_text,
    declare_pbx_queue,
    parked_counts,
    publisher,
    queue_report,
    read_pbx_queue,
    sends_per_request,
    wait_for_consumer,
    wait_until,
)

ACCOUNTS = 5


def several_accounts(base: str) -> str:
    """`base` (one provider, one number) plus ACCOUNTS - 1 more providers, each with a
    number whose source is extension 10<i>."""
    extra = ""
    for i in range(1, ACCOUNTS):
        extra += f"""
[[providers]]
name = "account{i}"
type = "flowroute"
api_url = "{{api_url}}"
access_key = "access-{i}"
secret_key = "secret-{i}"
sms_per_second = 1

[[numbers]]
name = "Line {i}"
number = "+1202555130{i}"
provider = "account{i}"
url_prefix = "flowrouteinbound"
source = ["30{i}"]
destination = "30{i}"
"""
    return base + extra


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_stop_with_several_busy_accounts_ends_well_inside_the_grace_period(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    for i in range(1, ACCOUNTS):
        sandbox.set_account(AccountSpec(f"access-{i}", f"secret-{i}", sms_per_second=1))
    sandbox.set_fault(latency_ms=1500)  # a send is in flight at the stop
    text = config_text(media_dir=tmp_path / "media", api_url=sandbox.api_url, sms_per_second=1)
    setup = Setup(amqp_url, tmp_path, several_accounts(text).replace("{api_url}", sandbox.api_url))
    requests = [
        ({"id": f"stop-{i}-{n}", "to": "+12065550142", "body": f"stop-{i}-{n}"}, i)
        for i in range(ACCOUNTS)
        for n in range(12)
    ]
    await declare_pbx_queue(amqp_url)
    with setup.worker("outbound") as worker:
        for name in ["flowroute", *(f"account{i}" for i in range(1, ACCOUNTS))]:
            await wait_for_consumer(amqp_url, topology.account_queue(name), worker=worker)
        async with publisher(amqp_url) as pub:
            for request, i in requests:
                request["extension"] = "100" if i == 0 else f"30{i}"
                await pub.request(request)
        # Every account has started and has a backlog waiting for its next slot.
        assert await wait_until(lambda: len(sandbox.messages) >= ACCOUNTS * 2, 30)
        # In a thread: the sandbox answering the sends in flight runs on this event loop.
        took = await asyncio.to_thread(worker.terminate, 90)
        sent_before_restart = len(sandbox.messages)
        worker.start()
        ids = {request["id"] for request, _ in requests}
        tally = await read_pbx_queue(amqp_url, lambda t: ids <= t.ids("status.sent"), timeout=120)
        parked = await parked_counts(amqp_url)
        report = queue_report(amqp_url)
    print(
        f"\nSIGTERM with {ACCOUNTS} busy accounts at 1 SMS/s and sends of 1.5 s in flight: "
        f"stopped in {took:.1f} s; {sent_before_restart} sent before the restart"
    )
    assert took < 20, "well inside compose's 40 s grace period"
    assert sent_before_restart < len(requests)
    assert tally.ids("status.sent") >= ids
    assert sends_per_request(sandbox) == dict.fromkeys(ids, 1), "nothing sent twice"
    assert sum(parked.values()) == 0, report
