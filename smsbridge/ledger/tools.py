"""The ledger from a shell: `smsbridge db migrate` and `smsbridge history`."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec

import asyncpg
import orjson

from smsbridge.config import LedgerConfig
from smsbridge.ledger import history as searches
from smsbridge.ledger import migrate as migrations
from smsbridge.ledger.connection import Ledger
from smsbridge.phone import NumberError, to_e164
from smsbridge.progress import progress


async def migrate(config: LedgerConfig) -> int:
    """Apply pending migrations, one line each; 1 if the database cannot be reached."""
    try:
        conn = await asyncpg.connect(config.url.get_secret_value(), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"smsbridge: cannot reach the ledger: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        pending = await migrations.pending(conn)
        with progress("migrate", total=len(pending), unit="migration") as bar:

            def applied_one(m: migrations.Migration) -> None:
                bar.write(f"applied {m.version:04d}_{m.name}", file=sys.stderr)
                bar.update(1)

            applied = await migrations.apply(conn, on_applied=applied_one)
    finally:
        await conn.close()
    current = max((m.version for m in migrations.migrations()), default=0)
    print(f"ledger schema at version {current} ({len(applied)} applied now)", file=sys.stderr)
    return 0


P = ParamSpec("P")


class _Unreachable(Exception):
    pass


@asynccontextmanager
async def _opened(config: LedgerConfig, name: str) -> AsyncIterator[Ledger]:
    """The ledger, once it answers (at most 15 s); _Unreachable if it does not."""
    ledger = Ledger(config, name)
    await ledger.start()
    try:
        try:
            await ledger.wait_available(15)
        except TimeoutError:
            raise _Unreachable() from None
        yield ledger
    finally:
        await ledger.close()


def _tool(run: Callable[P, Coroutine[Any, Any, int]]) -> Callable[P, Coroutine[Any, Any, int]]:
    """A tool's exit status, 1 when the ledger does not answer."""

    @functools.wraps(run)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return await run(*args, **kwargs)
        except _Unreachable:
            print("smsbridge: the ledger is not reachable", file=sys.stderr)
            return 1

    return wrapped


@_tool
async def history(
    config: LedgerConfig,
    *,
    message_id: str | None,
    number: str | None,
    extension: str | None,
    limit: int,
) -> int:
    """Print one message with its timeline, or a search, as JSON lines."""
    try:
        filters = searches.Filters(
            number=to_e164(number) if number else None, extension=extension, limit=limit
        )
    except (searches.BadFilter, NumberError) as exc:
        print(f"smsbridge: {exc}", file=sys.stderr)
        return 2
    async with _opened(config, "history") as ledger:
        if message_id is None:
            for item in (await searches.search(ledger, filters)).messages:
                _line(item)
            return 0
        found = await searches.message(ledger, message_id)
    if found is None:
        print(f"smsbridge: no message {message_id!r} in the ledger", file=sys.stderr)
        return 1
    _line(found)
    return 0


@_tool
async def optout(
    config: LedgerConfig, action: str, number: str | None, recipient: str | None
) -> int:
    """`smsbridge optout list|add|remove`: 0, 1 when an add/remove changed nothing."""
    from smsbridge.ledger import optouts

    try:
        ours = to_e164(number) if number else None
        theirs = to_e164(recipient) if recipient else None
    except NumberError as exc:
        print(f"smsbridge: {exc}", file=sys.stderr)
        return 2
    async with _opened(config, "optout") as ledger:
        if action == "list":
            for entry in await optouts.list_optouts(ledger, ours):
                _line(dataclasses.asdict(entry))
            return 0
        assert ours is not None and theirs is not None
        if action == "add":
            changed = await optouts.opt_out(ledger, ours, theirs, by="cli")
            done = f"{theirs} opted out of {ours}" if changed else "already opted out"
        else:
            changed = await optouts.opt_in(ledger, ours, theirs, by="cli")
            done = f"{theirs} opted back in to {ours}" if changed else "was not opted out"
    print(done, file=sys.stderr)
    return 0 if changed else 1


@_tool
async def sweep(config: LedgerConfig) -> int:
    """`smsbridge db sweep`: delete history past `retention_days` now."""
    from smsbridge.ledger import retention

    async with _opened(config, "sweep") as ledger:
        with progress("sweep", unit="row") as bar:
            deleted = await retention.sweep(ledger, config.retention_days, progress=bar.update)
    if deleted is None:
        print("another process is sweeping right now", file=sys.stderr)
        return 1
    print(f"{deleted} rows older than {config.retention_days:g} days deleted", file=sys.stderr)
    return 0


def _line(item: object) -> None:
    sys.stdout.buffer.write(orjson.dumps(item, option=orjson.OPT_UTC_Z) + b"\n")
