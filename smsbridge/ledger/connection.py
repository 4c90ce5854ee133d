"""The ledger's connection to PostgreSQL, and what happens while PostgreSQL is away.

Every query goes through `Ledger.fetch`/`execute`. When PostgreSQL cannot be reached they
raise `LedgerUnavailable` (a `MustWait`): workers hold their deliveries and try again, nothing
is parked and nothing is acked. One background probe reconnects with a growing pause and sets
`available` again; until then queries fail at once instead of each waiting for a timeout.

The gateway never uses the ledger: it keeps accepting webhooks while PostgreSQL is away
(RabbitMQ is the durable buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from smsbridge.config import LedgerConfig, mask_url
from smsbridge.logs import get_logger
from smsbridge.waiting import Backoff, MustWait

log = get_logger(__name__)

QUERY_TIMEOUT = 30.0

# What a database error means for the message being handled. "Unreachable": the database
# cannot serve us now (connection lost, server shutting down or failing over, too many
# connections, credentials refused, schema missing): wait, and probe until it is back.
# "Busy": this statement lost a race or was cancelled (deadlock, serialization, lock timeout,
# statement timeout): wait and try again. Anything else (bad data, a bug) is an error.
_UNREACHABLE_TYPES = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a query cut off by the server going away, timing-dependent
)
_UNREACHABLE_CLASSES = ("08", "28", "53", "3D")  # connection, auth, resources, no database
_UNREACHABLE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "25006", "42P01"})
_BUSY_STATES = frozenset({"40001", "40P01", "55P03", "57014"})


def classify(exc: BaseException) -> str | None:
    """ "unreachable", "busy", or None (an error of this statement or its data)."""
    if isinstance(exc, _UNREACHABLE_TYPES):
        return "unreachable"
    state = str(getattr(exc, "sqlstate", "") or "")
    if state in _BUSY_STATES:
        return "busy"
    if state in _UNREACHABLE_STATES or state[:2] in _UNREACHABLE_CLASSES:
        return "unreachable"
    return None


class LedgerUnavailable(MustWait):
    """PostgreSQL cannot be reached (or the schema is not migrated): try again later."""

    def __init__(self, reason: str, ready: asyncio.Event | None = None) -> None:
        super().__init__(reason)
        self.ready = ready  # set when the ledger is back


class Ledger:
    def __init__(self, config: LedgerConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.available = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._probe: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def url(self) -> str:
        return self.config.url.get_secret_value()

    async def start(self) -> None:
        """Connect (and migrate, unless `migrate = false`) in the background: a component
        starts even while PostgreSQL is away."""
        self._start_probe()

    async def wait_available(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.available.wait(), timeout)

    async def close(self) -> None:
        self._closing = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._pool is not None:
            try:  # a stop must end well inside an orchestrator's grace period
                await asyncio.wait_for(self._pool.close(), 3)
            except Exception:
                self._pool.terminate()
            self._pool = None

    # -- queries -----------------------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(query, *args, timeout=QUERY_TIMEOUT))

    async def execute(self, query: str, *args: Any) -> str:
        async with self.connection() as conn:
            return str(await conn.execute(query, *args, timeout=QUERY_TIMEOUT))

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database errors that mean "wait" become LedgerUnavailable."""
        pool = self._ready_pool()
        try:
            async with pool.acquire(timeout=10) as conn:
                yield conn
        except Exception as exc:
            kind = classify(exc)
            if kind == "unreachable":
                raise self._lost(exc) from None
            if kind == "busy":  # the ledger is there: wait the usual pause, then again
                raise LedgerUnavailable(f"ledger busy: {type(exc).__name__}") from None
            raise

    def _ready_pool(self) -> asyncpg.Pool:
        if not self.available.is_set() or self._pool is None:
            raise LedgerUnavailable("the ledger (PostgreSQL) is not reachable", self.available)
        return self._pool

    def _lost(self, exc: BaseException) -> LedgerUnavailable:
        if self.available.is_set():
            log.warning(
                "ledger unreachable; workers wait until it is back",
                error=f"{type(exc).__name__}: {exc}",
            )
            self.available.clear()
            self._start_probe()
        return LedgerUnavailable(f"ledger unreachable: {type(exc).__name__}", self.available)

    # -- (re)connecting ----------------------------------------------------------------
    def _start_probe(self) -> None:
        if self._closing or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.create_task(self._reconnect(), name=f"ledger-{self.name}")

    async def _reconnect(self) -> None:
        from smsbridge.ledger.migrate import ensure_schema

        backoff = Backoff(first=0.5, cap=5.0)
        while not self._closing:
            try:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.url,
                        min_size=1,
                        max_size=self.config.pool_size,
                        timeout=5,
                        command_timeout=QUERY_TIMEOUT,
                        server_settings={
                            "application_name": f"smsbridge-{self.name}",
                            # Batched statements join an array of ids against `messages`: a
                            # generic plan made while the table was small (a new ledger) keeps
                            # scanning it as it grows. A plan per execution costs well under a
                            # millisecond per batch; the generic one cost PostgreSQL 4x the CPU
                            # per message (bench/: resolver with the ledger).
                            "plan_cache_mode": "force_custom_plan",
                        },
                    )
                else:
                    await self._pool.expire_connections()
                async with self._pool.acquire(timeout=5) as conn:
                    await ensure_schema(conn, migrate=self.config.migrate)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                if backoff.attempts in (1, 5) or backoff.attempts % 20 == 0:
                    log.warning(
                        "ledger not ready",
                        ledger=mask_url(self.url),
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in=round(delay, 1),
                    )
                await asyncio.sleep(delay)
                continue
            log.info("ledger ready", ledger=mask_url(self.url), component=self.name)
            self.available.set()
            return
