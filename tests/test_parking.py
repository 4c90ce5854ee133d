"""Requeuing parked messages (smsbridge/parking.py), through the console's API and the CLI's
code path, against a real RabbitMQ vhost: a walk bounded by what was parked when it began, a
publish that waits for the broker's confirm however long it takes, and one bad message that
does not sink the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import envelope, ops, topology
from tests.console_harness import Console, bearer, console_config, park, running_console
from tests.harness import queue_depth

API = "/api/v1"
PARKED_INBOUND = topology.parked_queue("inbound")


@pytest.fixture
async def console(amqp_url: str, ledger_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(console_config(amqp_url, ledger_url, tmp_path)) as running:
        yield running


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` holds; the bound only turns a hang into a failure."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def requeue(console: Console, stage: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{console.url}{API}/parked/{stage}/requeue",
            json=body,
            headers=bearer(),
            # Before the fix the walk never ended: fail instead of waiting for pytest's timeout.
            timeout=aiohttp.ClientTimeout(total=45),
        ) as response:
            return response.status, orjson.loads(await response.read())


async def parked_ids(console: Console) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{console.url}{API}/parked", headers=bearer()) as response:
            assert response.status == 200
            return [p["id"] for p in (await response.json())["parked"]]


@dataclass
class Reparker:
    """A worker that finds every inbound message still bad and parks it again at once."""

    seen: list[str] = field(default_factory=list)


@asynccontextmanager
async def reparker(amqp_url: str) -> AsyncIterator[Reparker]:
    found = Reparker()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        parking = await channel.get_exchange(topology.PARKING)
        queue = await channel.get_queue(topology.INBOUND_QUEUE)

        async def handle(message: AbstractIncomingMessage) -> None:
            found.seen.append(message.message_id or "")
            headers = {
                topology.H_REASON: "still bad",
                topology.H_STAGE: "inbound",
                topology.H_PARKED_AT: envelope.now_rfc3339(),
                topology.H_ORIGINAL_EXCHANGE: message.exchange or "",
                topology.H_ORIGINAL_KEY: message.routing_key or "",
            }
            await parking.publish(
                topology.copy_message(message, headers), routing_key="inbound", mandatory=True
            )
            await message.ack()

        tag = await queue.consume(handle)
        try:
            yield found
        finally:
            await queue.cancel(tag)


async def settled(amqp_url: str, found: Reparker, parked: int) -> None:
    """Wait until the worker has parked again everything it was given (`parked` in all)."""

    async def done() -> bool:
        return (
            await queue_depth(amqp_url, PARKED_INBOUND) == parked
            and await queue_depth(amqp_url, topology.INBOUND_QUEUE) == 0
        )

    await eventually(done, f"{parked} parked again")


async def park_inbound(amqp_url: str, count: int, prefix: str = "bad") -> list[str]:
    ids = [f"{prefix}-{i:02d}" for i in range(count)]
    for message_id in ids:
        await park(amqp_url, "inbound", {"id": message_id}, message_id, "invalid")
    return ids


# -- a bounded walk -----------------------------------------------------------------------------


async def test_requeue_all_ends_while_a_worker_parks_them_again(
    console: Console, amqp_url: str
) -> None:
    ids = await park_inbound(amqp_url, 20)
    async with reparker(amqp_url) as found:
        status, answer = await requeue(console, "inbound", {"all": True})
        assert (status, answer) == (200, {"requeued": 20, "not_requeued": []})
        await settled(amqp_url, found, 20)
    # Each was published once: what the worker parked again was left for another requeue.
    assert sorted(found.seen) == ids
    assert sorted(await parked_ids(console)) == ids


async def test_requeue_of_one_id_ends_while_a_worker_parks_it_again(
    console: Console, amqp_url: str
) -> None:
    ids = await park_inbound(amqp_url, 3)
    async with reparker(amqp_url) as found:
        status, answer = await requeue(console, "inbound", {"ids": [ids[1]]})
        assert (status, answer) == (200, {"requeued": 1, "not_requeued": []})
        await settled(amqp_url, found, 3)
    assert found.seen == [ids[1]]
    assert sorted(await parked_ids(console)) == ids


async def test_the_cli_requeue_ends_while_a_worker_parks_them_again(amqp_url: str) -> None:
    """`smsbridge parked requeue inbound --all` runs the same walk (smsbridge/ops.py)."""
    ids = await park_inbound(amqp_url, 5)
    async with reparker(amqp_url) as found:
        shown, _ = await asyncio.wait_for(ops.parked(amqp_url, "inbound", requeue=True), 45)
        assert sorted(item["message_id"] for item in shown) == ids
        await settled(amqp_url, found, 5)
    assert sorted(found.seen) == ids


# -- publishing: no timeout, and one bad message --------------------------------------------------


async def test_a_requeue_waits_for_the_confirm_instead_of_timing_out(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    """A confirm slower than `publish_timeout` (a memory alarm) must not leave the message both
    parked and published: the requeue waits for the confirm, then removes it from parking."""
    config = console_config(amqp_url, ledger_url, tmp_path)
    # Every confirm is "late" with this timeout.
    async with running_console(config, publish_timeout=1e-6) as console:
        ids = await park_inbound(amqp_url, 3)
        status, answer = await requeue(console, "inbound", {"all": True})
        assert (status, answer) == (200, {"requeued": 3, "not_requeued": []})
        assert await parked_ids(console) == []
    assert await queue_depth(amqp_url, topology.INBOUND_QUEUE) == len(ids)


async def test_an_unroutable_message_stays_parked_and_the_others_are_requeued(
    console: Console, amqp_url: str
) -> None:
    await park(amqp_url, "inbound", {"id": "a"}, "a", "invalid")
    # Its original routing key no longer leads anywhere (a queue was removed, say).
    await park(
        amqp_url, "inbound", {"id": "lost"}, "lost", "invalid", original=(topology.INTERNAL, "gone")
    )
    await park(amqp_url, "inbound", {"id": "b"}, "b", "invalid")
    status, answer = await requeue(console, "inbound", {"all": True})
    assert status == 200, answer
    assert answer["requeued"] == 2
    [left] = answer["not_requeued"]
    assert left["id"] == "lost" and "unroutable" in left["reason"]
    assert await parked_ids(console) == ["lost"]
    assert await queue_depth(amqp_url, topology.INBOUND_QUEUE) == 2


async def test_a_broker_failure_part_way_says_how_many_were_requeued(
    console: Console, amqp_url: str
) -> None:
    await park(amqp_url, "inbound", {"id": "first"}, "first", "invalid")
    # Published to an exchange that is gone, the broker closes the publishing channel: nobody
    # can say any more whether a publish in flight was stored, so the requeue stops there.
    await park(
        amqp_url, "inbound", {"id": "doomed"}, "doomed", "invalid", original=(topology.RETRY, "x")
    )
    await park(amqp_url, "inbound", {"id": "last"}, "last", "invalid")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(topology.RETRY)
    status, answer = await requeue(console, "inbound", {"all": True})
    assert status == 503, answer
    assert "1 requeued" in answer["error"] and "doomed" in answer["error"]
    assert await queue_depth(amqp_url, topology.INBOUND_QUEUE) == 1
    await eventually(
        lambda: _parked_now(console, ["doomed", "last"]), "the rest back in the parking queue"
    )


async def _parked_now(console: Console, expected: list[str]) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{console.url}{API}/parked", headers=bearer()) as response:
            if response.status == 503:  # the console's publishing channel is reopening
                return False
            assert response.status == 200
            parked = (await response.json())["parked"]
    return sorted(p["id"] for p in parked) == expected
