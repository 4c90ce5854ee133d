"""The ledger against a real PostgreSQL (a fresh database per test): migrations, the claims
that make each message's irreversible step happen once across replicas, status history and
retention. Two `LedgerClaims` on one database are two replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from smsbridge import topology
from smsbridge.config import LedgerConfig
from smsbridge.ledger import migrate, optouts, retention
from smsbridge.ledger.batch import Batcher
from smsbridge.ledger.connection import Ledger, LedgerUnavailable
from smsbridge.ledger.events import StatusLedger, StatusRecord
from smsbridge.ledger.inbound import LedgerClaims
from smsbridge.ledger.outbound import LedgerSendClaims
from smsbridge.once import ClaimLost, InboundHistory, OutboundHistory
from smsbridge.waiting import MustWait

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


async def test_a_busy_database_means_wait_and_a_bad_statement_is_an_error(
    ledger: Ledger, ledger_url: str
) -> None:
    """A statement that lost a race for a lock waits (LedgerUnavailable) without declaring
    the ledger away; a statement that is wrong raises its own error."""
    holder = await asyncpg.connect(ledger_url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(LedgerUnavailable, match="busy"):
                async with ledger.connection() as conn, conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '200ms'")
                    await conn.execute("SELECT count(*) FROM messages")
    finally:
        await holder.close()
    assert ledger.available.is_set()
    with pytest.raises(asyncpg.DivisionByZeroError):
        await ledger.fetch("SELECT 1 / 0")
    assert ledger.available.is_set()
    assert (await ledger.fetch("SELECT count(*) AS n FROM messages"))[0]["n"] == 0


async def test_a_connection_cut_by_the_server_mid_query_makes_the_ledger_wait_and_reconnect(
    ledger_url: str,
) -> None:
    ledger = Ledger(ledger_config(ledger_url), "test")
    await ledger.start()
    admin = await asyncpg.connect(ledger_url)
    try:
        await ledger.wait_available(20)
        slow = asyncio.create_task(ledger.fetch("SELECT pg_sleep(30)"))
        pid = None
        while pid is None and not slow.done():
            await asyncio.sleep(0.05)
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
            )
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(LedgerUnavailable) as info:
            await slow
        assert info.value.ready is ledger.available
        await ledger.wait_available(20)  # the probe reconnected
        assert (await ledger.fetch("SELECT 1 AS one"))[0]["one"] == 1
    finally:
        await admin.close()
        await ledger.close()


async def test_too_many_connections_means_wait_until_there_is_room(ledger_url: str) -> None:
    """The role's connection limit is reached: the ledger is unavailable (requests wait),
    not broken, and it comes back when there is room."""
    role = f"smsbridge_limited_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ledger_url)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    await admin.execute(f'GRANT ALL ON DATABASE "{database}" TO {role}')
    await admin.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    url = ledger_url.replace("postgres@", f"{role}@", 1)
    assert role in url
    ledger = Ledger(ledger_config(url), "test")
    await ledger.start()
    try:
        with pytest.raises(TimeoutError):
            await ledger.wait_available(2)
        with pytest.raises(LedgerUnavailable):
            await ledger.fetch("SELECT 1")
        await admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 5")
        await ledger.wait_available(20)
        assert (await ledger.fetch("SELECT 1 AS one"))[0]["one"] == 1
    finally:
        await ledger.close()
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


# -- batches: one bad request must not fail the others -------------------------------------


async def test_a_failing_batch_is_run_again_one_by_one_so_only_the_bad_request_fails() -> None:
    runs: list[list[str]] = []

    async def run(items: list[str]) -> list[str]:
        runs.append(items)
        await asyncio.sleep(0.01)
        if "bad" in items:
            raise ValueError("a bad item")
        return [item.upper() for item in items]

    batcher: Batcher[str, str] = Batcher(run, concurrency=1)
    names = ["a", "b", "bad", "c", "d"]
    first = asyncio.create_task(batcher.submit("first"))  # runs alone; the rest queue
    await asyncio.sleep(0)
    results = await asyncio.gather(*(batcher.submit(n) for n in names), return_exceptions=True)
    assert await first == "FIRST"
    assert results[:2] == ["A", "B"] and results[3:] == ["C", "D"]
    assert isinstance(results[2], ValueError)
    assert runs[1] == names, "the five went as one batch first"
    assert runs[2:] == [[n] for n in names]


async def test_a_batch_that_must_wait_fails_every_request_with_the_wait() -> None:
    runs: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        runs.append(items)
        await asyncio.sleep(0.01)
        raise MustWait("the ledger is away")

    batcher: Batcher[int, int] = Batcher(run, concurrency=1)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    waits = [batcher.submit(i) for i in range(1, 5)]
    results = await asyncio.gather(*waits, return_exceptions=True)
    with pytest.raises(MustWait):
        await first
    assert all(isinstance(r, MustWait) for r in results)
    assert runs == [[0], [1, 2, 3, 4]], "no request is tried again on its own"


async def test_a_nul_character_is_stored_as_a_replacement_and_fails_nothing(
    ledger: Ledger,
) -> None:
    """PostgreSQL's text and jsonb refuse NUL; a Flowroute body can carry one."""
    claims = LedgerClaims(ledger, ttl=600)
    bodies = [f"hi {i}" for i in range(20)]
    bodies[7] = "user\x00name"
    nul = bodies[7]
    got = await asyncio.gather(
        *(claims.claim(f"mdr2-nul-{i}", history(body)) for i, body in enumerate(bodies))
    )
    assert all(not c.done and c.token for c in got)
    row = (await ledger.fetch("SELECT body, raw FROM messages WHERE id = 'mdr2-nul-7'"))[0]
    assert row["body"] == nul.replace("\x00", "\ufffd")
    assert "\ufffd" in row["raw"]
    await asyncio.gather(*(claims.succeeded(c) for c in got))
    count = await ledger.fetch("SELECT count(*) AS n FROM messages WHERE state = 'published'")
    assert count[0]["n"] == 20


async def test_two_claims_of_one_id_in_one_statement_give_it_to_one(ledger: Ledger) -> None:
    """A replica's own twins wait in memory; should two claims of an id still meet in one
    batch, only one may hold it."""
    inbound = LedgerClaims(ledger, ttl=600)
    tokens = [uuid.uuid4() for _ in range(3)]
    rows = await inbound._claim_batch([("mdr2-twin", t, history()) for t in tokens])
    assert sorted(r.claimed for r in rows) == [False, False, True]
    sends = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    await sends.queued("req-twin", outbound())
    rows_out = await sends._claim_batch([("req-twin", t, outbound()) for t in tokens])
    assert sorted(r.claimed for r in rows_out) == [False, False, True]
    holder = await ledger.fetch("SELECT claim_token FROM messages WHERE id = 'req-twin'")
    [winner] = [t for t, r in zip(tokens, rows_out, strict=True) if r.claimed]
    assert holder[0]["claim_token"] == winner


# -- opt-outs apply in the order they were made ---------------------------------------------


async def test_a_late_start_does_not_undo_a_later_stop(ledger: Ledger) -> None:
    """START texted at 10:00 reaches the bridge after STOP texted at 10:05 (Flowroute resent
    it after an outage): the person stays opted out."""
    ten = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    main, them = "+12025551234", "+12065550142"
    assert await optouts.opt_out(ledger, main, them, by="keyword", keyword="STOP", at=ten)
    stop_later = ten + timedelta(minutes=5)
    # a START from the day before, resent very late: older than the STOP, so not applied
    assert not await optouts.opt_in(ledger, main, them, by="keyword", at=ten - timedelta(days=1))
    assert await optouts.is_opted_out(ledger, main, them)
    assert await optouts.opt_in(ledger, main, them, by="keyword", at=ten + timedelta(minutes=2))
    assert not await optouts.is_opted_out(ledger, main, them)
    assert await optouts.opt_out(ledger, main, them, by="keyword", at=stop_later)
    late_start = ten + timedelta(minutes=3)
    assert not await optouts.opt_in(ledger, main, them, by="keyword", at=late_start)
    assert await optouts.is_opted_out(ledger, main, them)
    changes = await ledger.fetch(
        "SELECT change, at FROM optout_changes WHERE recipient = $1 ORDER BY seq", them
    )
    assert [(r["change"], r["at"]) for r in changes] == [
        ("opted_out", ten),
        ("opted_in", ten + timedelta(minutes=2)),
        ("opted_out", stop_later),
    ]


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
    candidates = ["mdr2-x", "mdr2-unknown"]
    assert (await two.look_up("req-other", candidates, outbound())).exclude == {"mdr2-x"}
    assert (await two.look_up("req-1", candidates, outbound())).exclude == set()  # not its own
    # However old the request that holds it (it used to be forgotten after a day, and a
    # look-up took the record again).
    await ledger.execute("UPDATE messages SET created_at = now() - interval '3 days'")
    assert (await two.look_up("req-other", candidates, outbound())).exclude == {"mdr2-x"}


async def test_a_receipt_for_an_in_doubt_send_tells_its_taker_it_was_accepted(
    ledger: Ledger,
) -> None:
    """The answer to a POST was lost, but Flowroute's delivery receipt for it (its signed
    token names the request) was recorded: whoever takes the request over knows it was
    accepted, and looking it up would never exclude its own record."""
    dead = LedgerSendClaims(ledger, lease=SHORT, ttl=600)
    alive = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    claim = await dead.claim("req-r", outbound())
    await dead.attempting(claim, 1)  # POSTed; the 202 never came back
    receipt = StatusRecord(
        "req-r", "progress", datetime.now(UTC), None, {"provider_id": "mdr2-r"}, "k1"
    )
    await StatusLedger(ledger).record(receipt)
    took_over = await asyncio.wait_for(alive.claim("req-r", outbound()), 10)
    assert took_over.in_doubt_since is not None
    assert took_over.receipted == "mdr2-r" and took_over.attempts == 1
    assert "mdr2-r" not in (await alive.look_up("req-r", ["mdr2-r"], outbound())).exclude


async def test_a_look_up_waits_while_the_same_text_is_being_sent_for_another_request(
    ledger: Ledger,
) -> None:
    one = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    sending = await one.claim("req-y", outbound("same"))
    await one.attempting(sending, 1)  # its POST is in flight
    assert (await one.look_up("req-x", (), outbound("same"))).busy
    assert not (await one.look_up("req-x", (), outbound("other"))).busy
    assert not (await one.look_up("req-y", (), outbound("same"))).busy  # not itself
    await one.sent(sending, "mdr2-y", 1)
    assert not (await one.look_up("req-x", (), outbound("same"))).busy


async def test_two_look_ups_that_found_one_record_cannot_both_take_it(ledger: Ledger) -> None:
    """Two requests with the same text, both in doubt on two replicas; only one was accepted.
    Both look-ups find its one record: the first to record it takes it, the second is told to
    look again (it used to take it as well, and its own text was never sent)."""
    one = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    two = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    p = await one.claim("req-p", outbound("same"))
    q = await two.claim("req-q", outbound("same"))
    await one.attempting(p, 1)
    await two.attempting(q, 1)
    taken = await asyncio.gather(
        one.reconciled(p, "mdr2-only", 1), two.reconciled(q, "mdr2-only", 1)
    )
    assert sorted(taken) == [False, True]
    rows = await ledger.fetch("SELECT id FROM messages WHERE provider_id = 'mdr2-only'")
    assert len(rows) == 1
    loser, loser_claims = (p, one) if not taken[0] else (q, two)
    assert await loser_claims.reconciled(loser, "mdr2-other", 1)  # another record: its own
    stale = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    r = await stale.claim("req-r", outbound("same"))
    await stale.attempting(r, 1)
    await stale.released(r, datetime.now(UTC))  # in doubt; no longer held by `r`'s token
    assert not await stale.reconciled(r, "mdr2-r", 1), "a claim given up records nothing"


async def test_a_settled_request_keeps_why_and_after_how_many_attempts(ledger: Ledger) -> None:
    """A handler run again after its status.failed or its park failed publishes the same
    event (reason and attempts, hence message id) and parks a failed request again."""
    one = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600)
    claim = await one.claim("req-f", outbound())
    await one.attempting(claim, 3)
    await one.settle(claim, "failed", "Flowroute refused: HTTP 422: bad number", 3)
    again = await LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=600).claim(
        "req-f", outbound()
    )
    assert (again.settled, again.reason, again.attempts) == (
        "failed",
        "Flowroute refused: HTTP 422: bad number",
        3,
    )
    # The recorder's copy of that status.failed event is the same line of the timeline.
    event = StatusRecord(
        "req-f",
        "failed",
        datetime.now(UTC),
        "Flowroute refused: HTTP 422: bad number",
        {"attempts": 3},
        topology.status_event_id("req-f", "failed", 3),
    )
    await StatusLedger(ledger).record(event)
    rows = await ledger.fetch("SELECT status FROM message_events WHERE message_id = 'req-f'")
    assert [r["status"] for r in rows].count("failed") == 1


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
    assert (await other.claim("req-3", outbound())).settled == "blocked"
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
