"""The opt-out list against a real PostgreSQL (a fresh database per test): changes apply in
the order people made them, also when the newer one changed nothing."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsbridge.config import LedgerConfig
from smsbridge.ledger import optouts
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.optouts import Outcome

MAIN = "+12025551234"
T = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = Ledger(LedgerConfig.model_validate({"url": ledger_url}), "test")
    await ledger.start()
    await ledger.wait_available(20)
    yield ledger
    await ledger.close()


_people = itertools.count(uuid.uuid4().int % 5_000)


def someone() -> str:
    """A number no other call in this run returns (random ones collided across hypothesis's
    examples, which share one database: a change made for another example looked newer)."""
    return f"+1206555{next(_people) % 10_000:04d}"


async def test_a_late_stop_loses_to_a_newer_start_that_changed_nothing(ledger: Ledger) -> None:
    """START at t+1 (already subscribed: nothing to do) is handled first, STOP at t later:
    the person's latest word was START."""
    them = someone()
    assert not await optouts.opt_in(ledger, MAIN, them, by="keyword", at=T + SECOND)
    assert not await optouts.opt_out(ledger, MAIN, them, by="keyword", at=T)
    assert not await optouts.is_opted_out(ledger, MAIN, them)


async def test_a_late_start_loses_to_a_newer_stop_that_changed_nothing(ledger: Ledger) -> None:
    """STOP at t, STOP at t+2 (nothing to do), then START at t+1: the latest word was STOP."""
    them = someone()
    assert await optouts.opt_out(ledger, MAIN, them, by="keyword", at=T)
    assert not await optouts.opt_out(ledger, MAIN, them, by="keyword", at=T + 2 * SECOND)
    assert not await optouts.opt_in(ledger, MAIN, them, by="keyword", at=T + SECOND)
    assert await optouts.is_opted_out(ledger, MAIN, them)


async def test_each_change_says_whether_it_applied_changed_nothing_or_was_stale(
    ledger: Ledger,
) -> None:
    them = someone()

    async def change(change: optouts.Change, at: datetime) -> Outcome:
        return await optouts.change(ledger, change, MAIN, them, by="keyword", at=at)

    assert await change("opted_out", T) is Outcome.APPLIED
    assert await change("opted_out", T) is Outcome.UNCHANGED  # the same STOP, redelivered
    assert await change("opted_out", T + 2 * SECOND) is Outcome.UNCHANGED
    assert await change("opted_in", T + SECOND) is Outcome.STALE
    assert await change("opted_out", T + SECOND) is Outcome.STALE  # stale even if it agrees
    assert await change("opted_in", T + 3 * SECOND) is Outcome.APPLIED
    assert await change("opted_out", T + 3 * SECOND) is Outcome.APPLIED  # a tie: in order
    assert await optouts.is_opted_out(ledger, MAIN, them)
    # The record keeps the changes that changed something, as before.
    changes = await ledger.fetch(
        "SELECT change, at FROM optout_changes WHERE recipient = $1 ORDER BY seq", them
    )
    assert [(r["change"], r["at"]) for r in changes] == [
        ("opted_out", T),
        ("opted_in", T + 3 * SECOND),
        ("opted_out", T + 3 * SECOND),
    ]


async def test_an_operator_change_without_a_time_is_now(ledger: Ledger) -> None:
    them = someone()
    assert await optouts.opt_out(ledger, MAIN, them, by="console")
    # a START texted a minute ago, delivered only now: the operator acted after it
    late = datetime.now(UTC) - timedelta(minutes=1)
    assert await optouts.change(ledger, "opted_in", MAIN, them, by="keyword", at=late) is (
        Outcome.STALE
    )
    assert await optouts.is_opted_out(ledger, MAIN, them)


changes = st.lists(st.sampled_from(["opted_out", "opted_in"]), min_size=1, max_size=6)


@settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one pair per example
)
@given(changes.flatmap(lambda cs: st.tuples(st.just(cs), st.permutations(range(len(cs))))))
async def test_the_latest_texted_change_wins_whatever_the_order_of_arrival(
    ledger: Ledger, made_and_order: tuple[list[optouts.Change], list[int]]
) -> None:
    """Changes made at t, t+1, ... arrive in any order: the list ends as the last one made
    says, and a change is stale exactly when one made later arrived before it."""
    made, order = made_and_order
    them = someone()
    newest_so_far = -1
    for index in order:
        outcome = await optouts.change(
            ledger, made[index], MAIN, them, by="keyword", at=T + index * SECOND
        )
        assert (outcome is Outcome.STALE) is (index < newest_so_far), (made, order)
        newest_so_far = max(newest_so_far, index)
    assert await optouts.is_opted_out(ledger, MAIN, them) is (made[-1] == "opted_out")
