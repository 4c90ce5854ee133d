"""Numbered migrations: `migrations/NNNN_name.sql`, applied in order, each once.

`smsbridge db migrate` applies them, and so does every component at start unless
`ledger.migrate = false`. Components that start together serialize on an advisory lock, and
a migration's SQL and its record commit together, so a crash mid-way leaves it unapplied.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

TABLE = "smsbridge_migrations"
LOCK_KEY = 7_362_546_962  # pg_advisory_lock key: "smsb" and a version of the scheme
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaBehind(Exception):
    """Migrations are pending and this component may not apply them (`migrate = false`)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("smsbridge.ledger").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
    if not exists:
        return set()
    return {int(r["version"]) for r in await conn.fetch(f"SELECT version FROM {TABLE}")}


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in migrations() if m.version not in done]


async def apply(
    conn: asyncpg.Connection, on_applied: Callable[[Migration], None] | None = None
) -> list[Migration]:
    """Apply every pending migration; returns those applied (none on a current schema)."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = []
        for migration in await pending(conn):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {TABLE} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
            if on_applied is not None:
                on_applied(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def ensure_schema(conn: asyncpg.Connection, *, migrate: bool) -> None:
    if migrate:
        await apply(conn)
        return
    behind = await pending(conn)
    if behind:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in behind)
        raise SchemaBehind(
            f"the ledger's schema is behind ({names} pending) and ledger.migrate is false: "
            "run `smsbridge db migrate`"
        )
