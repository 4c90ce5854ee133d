"""Retention: history older than `ledger.retention_days` is deleted, in small batches (each
its own short transaction, so no long locks), by one process at a time (an advisory lock).
A message still being published or sent is kept unless it has not moved for that long."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from smsbridge.ledger.connection import Ledger

LOCK_KEY = 7_362_546_963
BATCH = 5000

_DELETE_MESSAGES = """
DELETE FROM messages WHERE seq IN (
    SELECT seq FROM messages
    WHERE created_at < $1 AND (state NOT IN ('publishing', 'sending') OR updated_at < $1)
    ORDER BY created_at LIMIT $2)
"""
_DELETE_EVENTS = """
DELETE FROM message_events WHERE seq IN (
    SELECT seq FROM message_events WHERE at < $1 ORDER BY at LIMIT $2)
"""


async def sweep(
    ledger: Ledger,
    retention_days: float,
    *,
    batch: int = BATCH,
    progress: Callable[[int], object] | None = None,
) -> int | None:
    """Delete what is past retention; the number of rows deleted, or None when another
    process is sweeping right now."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    deleted = 0
    async with ledger.connection() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return None
        try:
            for query in (_DELETE_MESSAGES, _DELETE_EVENTS):
                while True:
                    status = await conn.execute(query, cutoff, batch)
                    count = int(status.rpartition(" ")[2] or 0)
                    deleted += count
                    if progress is not None and count:
                        progress(count)
                    if count < batch:
                        break
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return deleted
