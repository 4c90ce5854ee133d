"""The ledger side of the benchmarks: a fresh database per run, and PostgreSQL's CPU.

Each run that uses the ledger gets its own database on the machine's PostgreSQL
(``127.0.0.1:5432``, trust auth, user ``postgres``; ``./dev`` starts it), dropped afterwards even
on errors, so runs never see each other's rows. The bridge's components apply the migrations
at start (``[ledger] migrate = true``), as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

PG_HOST = os.environ.get("SMSBRIDGE_BENCH_PG", "postgres@127.0.0.1:5432")
VARIANTS = ("off", "on")  # --ledger: without and with the ledger


def admin_url(database: str = "postgres") -> str:
    return f"postgresql://{PG_HOST}/{database}"


@asynccontextmanager
async def fresh_database(tag: str) -> AsyncIterator[str]:
    """A new, empty database for one run; yields its URL."""
    name = f"smsbridge_bench_{tag}_{uuid.uuid4().hex[:8]}".replace("-", "_")
    admin = await asyncpg.connect(admin_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield admin_url(name)
    finally:

        async def drop() -> None:
            admin = await asyncpg.connect(admin_url())
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

        try:
            await asyncio.shield(drop())
        except BaseException as exc:  # say so, do not mask the run's own error
            print(f"warning: could not drop database {name}: {exc!r}", file=sys.stderr)


@asynccontextmanager
async def ledger_for(variant: str, tag: str) -> AsyncIterator[str | None]:
    """``None`` for the ``off`` variant, else a fresh database's URL."""
    if variant == "off":
        yield None
        return
    async with fresh_database(tag) as url:
        yield url


def postgres_cpu() -> dict[int, int]:
    """CPU ticks (user + system) used so far by each process named ``postgres``, by pid."""
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            if text[text.index("(") + 1 : text.rindex(")")] != "postgres":
                continue
            fields = text.rpartition(")")[2].split()
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def postgres_cpu_seconds(since: dict[int, int] | None = None) -> float:
    """CPU seconds PostgreSQL's processes used since the sample ``since`` (or in all):
    per process, so a backend that ended meanwhile takes nothing away. It includes the server's
    background processes and any other session's backends on the machine."""
    now = postgres_cpu()
    before = since or {}
    total = sum(ticks - before.get(pid, 0) for pid, ticks in now.items())
    return total / os.sysconf("SC_CLK_TCK")
