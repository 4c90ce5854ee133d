"""The PostgreSQL test helpers themselves: fresh databases on the shared server, and OwnPostgres
(a private server the outage tests stop, crash and restart)."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.pg import SHARED_DSN, OwnPostgres, fresh_database

# What a client sees when the server goes away under it.
# A query on a connection whose server was killed fails one of these ways, depending on timing.
LOST = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


async def shared_databases() -> set[str]:
    conn = await asyncpg.connect(SHARED_DSN, timeout=10)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


async def fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_fresh_database_is_usable_isolated_and_dropped() -> None:
    async with fresh_database() as a, fresh_database() as b:
        assert a != b
        names = [url.rsplit("/", 1)[1] for url in (a, b)]
        for name in names:
            assert re.fullmatch(r"smsbridge_test_[0-9a-f]{12}", name)
        assert set(names) <= await shared_databases()

        conn = await asyncpg.connect(a, timeout=10)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        await conn.execute("INSERT INTO t VALUES (1, 'one')")
        assert await conn.fetchval("SELECT body FROM t WHERE id = 1") == "one"
        assert await conn.fetchval("SELECT current_database()") == names[0]
        # The other database does not see it.
        assert await fetchval(b, "SELECT to_regclass('t') IS NULL") is True
        # `conn` stays open: the drop must not wait for it (WITH (FORCE)).

    assert not set(names) & await shared_databases()
    with pytest.raises(LOST):
        await conn.fetchval("SELECT 1")


async def test_own_postgres_serves_loses_connections_and_restarts_with_its_data() -> None:
    name = f"own_{uuid.uuid4().hex[:12]}"
    async with await OwnPostgres.acreate() as pg:
        assert pg.running
        assert pg.port != 5432
        assert pg.url("x") == f"postgresql://postgres@127.0.0.1:{pg.port}/x"
        url = await pg.create_database(name)
        assert url == pg.url(name)
        assert await fetchval(url, "SHOW data_directory") == str(pg.data)
        assert await fetchval(url, "SHOW port") == str(pg.port)
        if os.geteuid() == 0:  # run as the postgres OS user, never as root
            assert pg.data.stat().st_uid == pwd.getpwnam("postgres").pw_uid

        conn = await asyncpg.connect(url, timeout=10)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await conn.executemany("INSERT INTO t VALUES ($1)", [(i,) for i in range(100)])
        slow = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)

        await pg.astop()  # immediate: an outage
        assert not pg.running
        with pytest.raises(LOST):
            await asyncio.wait_for(slow, 10)
        with pytest.raises(LOST):
            await conn.fetchval("SELECT 1")
        with pytest.raises(LOST):
            await asyncpg.connect(url, timeout=5)

        port = pg.port
        await pg.astart()
        assert pg.port == port
        assert await fetchval(url, "SELECT count(*) FROM t") == 100

        # It never touched the shared server.
        assert name not in await shared_databases()
        assert await fetchval(SHARED_DSN, "SHOW data_directory") != str(pg.data)
        directory = pg.dir
    assert not pg.running
    assert not directory.exists()


async def test_own_postgres_survives_kill9_and_clean_stops() -> None:
    async with await OwnPostgres.acreate() as pg:
        url = await pg.create_database("ledger")
        conn = await asyncpg.connect(url, timeout=10)
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")

        await pg.akill9()  # postmaster and backends at once: committed rows must survive
        with pytest.raises(LOST):
            await conn.fetchval("SELECT 1")
        await pg.astart()
        assert await fetchval(url, "SELECT count(*) FROM t") == 1000

        for mode in ("fast", "smart"):
            await pg.astop(mode)
            await pg.astart()
            assert await fetchval(url, "SELECT count(*) FROM t") == 1000


def test_own_postgres_sync_context_manager_and_deferred_start() -> None:
    with OwnPostgres(start=False) as pg:
        assert not pg.running
        assert Path(pg.data, "PG_VERSION").exists()
        pg.start()
        pg.start()  # already running: nothing to do
        assert pg.running
        pg.stop()
        pg.stop()  # already stopped: nothing to do
        pg.start()
        assert asyncio.run(fetchval(pg.url(), "SELECT 1")) == 1
    assert not pg.running
    assert not pg.dir.exists()
