"""The ledger side of the benchmarks: a fresh database per run, and PostgreSQL's CPU.

Each run that uses the ledger gets its own database on the machine's PostgreSQL
(``127.0.0.1:5432``, trust auth, user ``postgres``; ``./dev`` starts it), dropped afterwards even
on errors, so runs never see each other's rows. The bridge's components apply the migrations
at start (``[ledger] migrate = true``), as in production.
"""

from __future__ import annotations

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
        try:
            admin = await asyncpg.connect(admin_url())
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
        except Exception as exc:  # say so, do not mask the run's own error
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)


@asynccontextmanager
async def ledger_for(variant: str, tag: str) -> AsyncIterator[str | None]:
    """``None`` for the ``off`` variant, else a fresh database's URL."""
    if variant == "off":
        yield None
        return
    async with fresh_database(tag) as url:
        yield url


def postgres_cpu_seconds() -> float:
    """CPU (user + system) used so far by every process named ``postgres`` on this machine.

    Backends that ended are not counted, but the bridge's pooled connections live for the whole
    run, so the difference across a run is what PostgreSQL spent on it (plus its background
    writers, which work for it too)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            if comm != "postgres" and not comm.startswith("postgres:"):
                continue
            fields = text.rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick
