"""The ledger against a real PostgreSQL (a fresh database per test): migrations, the claims
that make each message's irreversible step happen once across replicas, status history and
retention. Two `LedgerClaims` on one database are two replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from smsbridge.config import LedgerConfig
from smsbridge.ledger import migrate, retention
from smsbridge.ledger.connection import Ledger, LedgerUnavailable
from smsbridge.ledger.events import StatusLedger, StatusRecord
from smsbridge.ledger.inbound import LedgerClaims
from smsbridge.ledger.outbound import LedgerSendClaims
from smsbridge.once import ClaimLost, InboundHistory, OutboundHistory

SHORT = timedelta(seconds=1)


def ledger_config(url: str, **extra: object) -> LedgerConfig:
    return LedgerConfig.model_validate({"url": url, **extra})


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    ledger = Ledger(ledger_config(ledger_url), "test")
    await ledger.start()
    await ledger.wait_available(20)
    yield ledger
    await ledger.close()


async def test_migrations_apply_to_an_empty_database_and_again_are_no_ops(
    ledger_url: str,
) -> None:
    conn = await asyncpg.connect(ledger_url)
    try:
        applied = await migrate.apply(conn)
        assert [m.version for m in applied] == [m.version for m in migrate.migrations()]
        assert await conn.fetchval("SELECT to_regclass('messages') IS NOT NULL")
        tables_before = await conn.fetch("SELECT tablename FROM pg_tables ORDER BY 1")
        assert await migrate.apply(conn) == []
        assert await migrate.pending(conn) == []
        assert await conn.fetch("SELECT tablename FROM pg_tables ORDER BY 1") == tables_before
        await migrate.ensure_schema(conn, migrate=False)  # current: fine
    finally:
        await conn.close()


async def test_concurrent_starts_migrate_once(ledger_url: str) -> None:
    conns = [await asyncpg.connect(ledger_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate.apply(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(migrate.migrations())]
    finally:
        for conn in conns:
            await conn.close()


async def test_a_schema_behind_with_migrate_false_keeps_the_ledger_unavailable(
    ledger_url: str,
) -> None:
    ledger = Ledger(ledger_config(ledger_url, migrate=False), "test")
    await ledger.start()
    try:
        with pytest.raises(TimeoutError):
            await ledger.wait_available(2)
        with pytest.raises(LedgerUnavailable):
            await ledger.fetch("SELECT 1")
    finally:
        await ledger.close()


async def test_an_unreachable_ledger_fails_queries_at_once_and_recovers(ledger: Ledger) -> None:
    down = Ledger(ledger_config("postgresql://postgres@127.0.0.1:9/none"), "down")
    await down.start()
    try:
        with pytest.raises(LedgerUnavailable) as info:
            await down.fetch("SELECT 1")
        assert info.value.ready is down.available
    finally:
        await down.close()
    assert (await ledger.fetch("SELECT 1 AS one"))[0]["one"] == 1


# -- inbound: one InboundMessage per Flowroute id --------------------------------------------


def history(body: str = "hi") -> InboundHistory:
    return InboundHistory(
        provider="flowroute",
        from_="+12065550142",
        to="+12025551234",
        body=body,
        media=[],
        extension="100",
        created_at=datetime.now(UTC),
        raw={"body": body},
    )


async def test_an_id_published_by_one_replica_is_done_for_another(ledger: Ledger) -> None:
    one, two = LedgerClaims(ledger, ttl=600), LedgerClaims(ledger, ttl=600)
    claim = await one.claim("mdr2-a", history())
    assert not claim.done and claim.in_doubt_since is None
    await one.succeeded(claim, "delivered_to_pbx", destination="100")
    assert (await two.claim("mdr2-a", history())).done
    rows = await ledger.fetch("SELECT status, state, body FROM messages WHERE id = 'mdr2-a'")
    assert [tuple(r) for r in rows] == [("delivered_to_pbx", "published", "hi")]
    timeline = await ledger.fetch(
        "SELECT status FROM message_events WHERE message_id = 'mdr2-a' ORDER BY at, seq"
    )
    assert [r["status"] for r in timeline] == ["received", "delivered_to_pbx"]


async def test_a_replica_waits_while_another_holds_the_id_and_then_sees_it_done(
    ledger: Ledger,
) -> None:
    one, two = LedgerClaims(ledger, ttl=600), LedgerClaims(ledger, ttl=600)
    claim = await one.claim("mdr2-b", history())
    waiting = asyncio.create_task(two.claim("mdr2-b", history()))
    await asyncio.sleep(0.5)
    assert not waiting.done(), "it waits for the holder's outcome"
    await one.succeeded(claim)
    assert (await asyncio.wait_for(waiting, 5)).done


async def test_a_lost_confirm_leaves_the_id_in_doubt_for_whoever_takes_it(
    ledger: Ledger,
) -> None:
    one, two = LedgerClaims(ledger, ttl=600), LedgerClaims(ledger, ttl=600)
    claim = await one.claim("mdr2-c", history())
    since = datetime.now(UTC)
    await one.released(claim, since)
    again = await two.claim("mdr2-c", history())
    assert again.in_doubt_since is not None and not again.done
    assert again.in_doubt_since <= since
    await two.released(again, None)  # settled: it was not stored; a definite failure now
    third = await one.claim("mdr2-c", history())
    assert third.in_doubt_since is None


async def test_a_dead_replicas_claim_runs_out_and_leaves_it_in_doubt(ledger: Ledger) -> None:
    dead, alive = LedgerClaims(ledger, ttl=600, lease=SHORT), LedgerClaims(ledger, ttl=600)
    await dead.claim("mdr2-d", history())  # ... and never heard of again
    started = asyncio.get_running_loop().time()
    claim = await asyncio.wait_for(alive.claim("mdr2-d", history()), 10)
    assert asyncio.get_running_loop().time() - started >= 0.5
    assert claim.in_doubt_since is not None, "it may have published before it died"


async def test_a_renewed_claim_is_not_taken_over(ledger: Ledger) -> None:
    slow, other = LedgerClaims(ledger, ttl=600, lease=SHORT), LedgerClaims(ledger, ttl=600)
    claim = await slow.claim("mdr2-e", history())
    waiting = asyncio.create_task(other.claim("mdr2-e", history()))
    for _ in range(4):
        await asyncio.sleep(0.5)
        await slow.renew(claim)
    assert not waiting.done()
    await slow.succeeded(claim)
    assert (await asyncio.wait_for(waiting, 5)).done


async def test_many_claims_at_once_are_batched_and_each_answered(ledger: Ledger) -> None:
    claims = LedgerClaims(ledger, ttl=600)
    got = await asyncio.gather(*(claims.claim(f"mdr2-{i}", history(str(i))) for i in range(300)))
    assert all(not c.done for c in got)
    await asyncio.gather(*(claims.succeeded(c) for c in got))
    count = await ledger.fetch("SELECT count(*) AS n FROM messages WHERE state = 'published'")
    assert count[0]["n"] == 300


# -- outbound: at most one accepted send per request id --------------------------------------


def outbound(body: str = "hello") -> OutboundHistory:
    return OutboundHistory("flowroute", "+12025551234", "+12065550142", body, [], "100")


async def test_a_request_sent_by_one_replica_is_not_sent_by_another(ledger: Ledger) -> None:
    one = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    two = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    await one.queued("req-1", outbound())
    claim = await one.claim("req-1", outbound())
    await one.attempting(claim, 1)
    await one.sent(claim, "mdr2-x", 1)
    again = await two.claim("req-1", outbound())
    assert again.provider_id == "mdr2-x" and again.attempts == 1
    rows = await ledger.fetch("SELECT status, state, provider_id FROM messages WHERE id='req-1'")
    assert [tuple(r) for r in rows] == [("sent", "sent", "mdr2-x")]
    assert await two.known_provider_ids(datetime.now(UTC) - timedelta(hours=1)) == {"mdr2-x"}


async def test_a_replica_that_died_after_its_post_leaves_the_send_in_doubt(
    ledger: Ledger,
) -> None:
    dead = LedgerSendClaims(ledger, lease=SHORT, ttl=600)
    alive = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    claim = await dead.claim("req-2", outbound())
    await dead.attempting(claim, 1)  # recorded before the POST; then kill -9
    took_over = await asyncio.wait_for(alive.claim("req-2", outbound()), 10)
    assert took_over.in_doubt_since is not None and took_over.provider_id is None
    with pytest.raises(ClaimLost):
        await dead.attempting(claim, 2)  # the old owner may not send any more


async def test_a_definite_refusal_is_not_in_doubt_and_a_settled_request_stays_settled(
    ledger: Ledger,
) -> None:
    one = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    claim = await one.claim("req-3", outbound())
    await one.attempting(claim, 1)
    await one.released(claim, None)  # 429: surely not accepted
    again = await one.claim("req-3", outbound())
    assert again.in_doubt_since is None
    await one.settle(again, "blocked", "opted out", 1)
    other = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    assert (await other.claim("req-3", outbound())).settled
    rows = await ledger.fetch("SELECT status FROM messages WHERE id = 'req-3'")
    assert rows[0]["status"] == "blocked"


# -- history ---------------------------------------------------------------------------------


async def test_status_events_build_the_timeline_and_only_move_the_status_forward(
    ledger: Ledger,
) -> None:
    claims = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    await claims.queued("req-4", outbound())
    statuses = StatusLedger(ledger)
    now = datetime.now(UTC)

    def event(status: str, seconds: float, key: str, **detail: object) -> StatusRecord:
        return StatusRecord("req-4", status, now + timedelta(seconds=seconds), None, detail, key)

    delivered = event("delivered", 3, "d", provider_id="mdr2-y", level=2)
    await asyncio.gather(
        statuses.record(event("sent", 1, "s", provider_id="mdr2-y", attempts=1)),
        statuses.record(event("progress", 2, "p", provider_id="mdr2-y", level=1)),
        statuses.record(delivered),
    )
    await statuses.record(event("sent", 4, "s", provider_id="mdr2-y"))  # a repeated status.sent
    await statuses.record(delivered)  # a redelivery
    row = (await ledger.fetch("SELECT status, provider_id FROM messages WHERE id='req-4'"))[0]
    assert (row["status"], row["provider_id"]) == ("delivered", "mdr2-y")
    timeline = await ledger.fetch(
        "SELECT status FROM message_events WHERE message_id = 'req-4' ORDER BY at, seq"
    )
    assert [r["status"] for r in timeline] == ["queued", "sent", "progress", "delivered"]


async def test_a_status_event_for_an_unknown_request_gets_a_row(ledger: Ledger) -> None:
    await StatusLedger(ledger).record(
        StatusRecord("req-5", "failed", datetime.now(UTC), "invalid request: 'to'", {}, "f")
    )
    rows = await ledger.fetch("SELECT direction, status, state FROM messages WHERE id='req-5'")
    assert [tuple(r) for r in rows] == [("outbound", "failed", "queued")]


async def test_retention_deletes_old_history_in_batches(ledger: Ledger) -> None:
    claims = LedgerClaims(ledger, ttl=600)
    for i in range(25):
        claim = await claims.claim(f"mdr2-old-{i}", history())
        await claims.succeeded(claim)
    await ledger.execute("UPDATE messages SET created_at = now() - interval '100 days'")
    await ledger.execute("UPDATE message_events SET at = now() - interval '100 days'")
    fresh = await claims.claim("mdr2-new", history())
    await claims.succeeded(fresh)
    batches: list[int] = []
    deleted = await retention.sweep(ledger, 90, batch=10, progress=batches.append)
    assert deleted == 25 + 50  # 25 messages, 2 events each
    assert batches[:3] == [10, 10, 5]
    left = await ledger.fetch("SELECT id FROM messages")
    assert [r["id"] for r in left] == ["mdr2-new"]
