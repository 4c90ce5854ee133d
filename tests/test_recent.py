"""RecentIds: which Flowroute message ids were handled recently, and which are in flight."""

from __future__ import annotations

import asyncio

from smsbridge.recent import RecentIds


async def test_unknown_id_is_neither_done_nor_pending() -> None:
    recent = RecentIds(ttl=60)
    assert not recent.done("mdr2-a")
    assert recent.pending("mdr2-a") is None
    assert len(recent) == 0


async def test_begin_makes_the_id_pending_but_not_done() -> None:
    recent = RecentIds(ttl=60)
    recent.begin("mdr2-a")
    future = recent.pending("mdr2-a")
    assert future is not None
    assert not future.done()
    assert not recent.done("mdr2-a")


async def test_finish_ok_remembers_the_id_and_resolves_the_waiter() -> None:
    recent = RecentIds(ttl=60)
    recent.begin("mdr2-a")
    future = recent.pending("mdr2-a")
    assert future is not None

    recent.finish("mdr2-a", ok=True)

    assert future.result() is True
    assert recent.pending("mdr2-a") is None
    assert recent.done("mdr2-a")
    assert len(recent) == 1


async def test_finish_not_ok_does_not_remember_and_tells_the_waiter() -> None:
    recent = RecentIds(ttl=60)
    recent.begin("mdr2-a")
    future = recent.pending("mdr2-a")
    assert future is not None

    recent.finish("mdr2-a", ok=False)

    assert future.result() is False
    assert recent.pending("mdr2-a") is None
    assert not recent.done("mdr2-a")
    assert len(recent) == 0


async def test_concurrent_duplicate_waits_for_the_first_outcome() -> None:
    recent = RecentIds(ttl=60)
    recent.begin("mdr2-a")

    async def duplicate() -> bool:
        future = recent.pending("mdr2-a")
        assert future is not None
        return await future

    waiter = asyncio.create_task(duplicate())
    await asyncio.sleep(0)
    recent.finish("mdr2-a", ok=True)
    assert await asyncio.wait_for(waiter, 1) is True


async def test_a_failed_id_can_be_tried_again() -> None:
    recent = RecentIds(ttl=60)
    recent.begin("mdr2-a")
    recent.finish("mdr2-a", ok=False)
    recent.begin("mdr2-a")
    recent.finish("mdr2-a", ok=True)
    assert recent.done("mdr2-a")


async def test_finish_without_begin_is_harmless() -> None:
    recent = RecentIds(ttl=60)
    recent.finish("mdr2-a", ok=True)
    recent.finish("mdr2-b", ok=False)
    assert recent.done("mdr2-a")
    assert not recent.done("mdr2-b")


async def test_ids_expire_after_ttl() -> None:
    recent = RecentIds(ttl=0.05)
    recent.finish("mdr2-a", ok=True)
    assert recent.done("mdr2-a")
    await asyncio.sleep(0.1)
    assert not recent.done("mdr2-a")


async def test_expired_ids_are_pruned_on_the_next_finish() -> None:
    recent = RecentIds(ttl=0.05)
    recent.finish("mdr2-a", ok=True)
    recent.finish("mdr2-b", ok=True)
    await asyncio.sleep(0.1)
    recent.finish("mdr2-c", ok=True)
    assert len(recent) == 1
    assert recent.done("mdr2-c")


async def test_zero_ttl_remembers_nothing() -> None:
    recent = RecentIds(ttl=0)
    recent.begin("mdr2-a")
    future = recent.pending("mdr2-a")
    recent.finish("mdr2-a", ok=True)
    assert future is not None and future.result() is True
    assert not recent.done("mdr2-a")
    assert len(recent) == 0


async def test_max_size_drops_the_oldest_ids() -> None:
    recent = RecentIds(ttl=60, max_size=2)
    for key in ("mdr2-a", "mdr2-b", "mdr2-c"):
        recent.finish(key, ok=True)
    assert len(recent) == 2
    assert not recent.done("mdr2-a")
    assert recent.done("mdr2-b")
    assert recent.done("mdr2-c")


async def test_finishing_again_refreshes_an_id() -> None:
    recent = RecentIds(ttl=60, max_size=2)
    recent.finish("mdr2-a", ok=True)
    recent.finish("mdr2-b", ok=True)
    recent.finish("mdr2-a", ok=True)  # a is now the newest
    recent.finish("mdr2-c", ok=True)
    assert recent.done("mdr2-a")
    assert not recent.done("mdr2-b")
    assert recent.done("mdr2-c")


async def test_refreshing_extends_the_ttl() -> None:
    recent = RecentIds(ttl=0.15)
    recent.finish("mdr2-a", ok=True)
    await asyncio.sleep(0.1)
    recent.finish("mdr2-a", ok=True)
    await asyncio.sleep(0.1)
    assert recent.done("mdr2-a")


async def test_many_ids_stay_bounded() -> None:
    recent = RecentIds(ttl=60, max_size=100)
    for i in range(1000):
        recent.begin(f"mdr2-{i}")
        recent.finish(f"mdr2-{i}", ok=True)
    assert len(recent) == 100
    assert recent.done("mdr2-999")
    assert not recent.done("mdr2-899")
