"""The opt-out list: per (our number, their number), durable in the ledger, with every change
kept (who, how, when). Keywords (STOP/START), the console, `smsbridge optout` and the API all
change it through `opt_out`/`opt_in`; the outbound sender checks it before each send.

Changes apply in the order people made them, not the order the bridge handled them: a START
that Flowroute had to resend (a 503, an outage) may be handled after a STOP texted later, and
must not undo it. Each change carries when it was made (the keyword message's timestamp) and
is applied only if no later change of the pair is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from smsbridge.ledger.connection import Ledger

By = Literal["keyword", "console", "cli", "api"]

# Both run in one transaction after an advisory lock on the pair ($6), so two changes of one
# pair are applied one after the other; $5 is when the change was made.
_NEWER = """
SELECT 1 FROM optout_changes WHERE number = $1 AND recipient = $2 AND at > $3 LIMIT 1
"""

_OPT_OUT = """
WITH added AS (
    INSERT INTO optouts (number, recipient, keyword, by, at) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (number, recipient) DO NOTHING
    RETURNING number
)
INSERT INTO optout_changes (number, recipient, change, keyword, by, at)
SELECT $1, $2, 'opted_out', $3, $4, $5 FROM added
RETURNING seq
"""

_OPT_IN = """
WITH removed AS (
    DELETE FROM optouts WHERE number = $1 AND recipient = $2 RETURNING number
)
INSERT INTO optout_changes (number, recipient, change, keyword, by, at)
SELECT $1, $2, 'opted_in', $3, $4, $5 FROM removed
RETURNING seq
"""


@dataclass(frozen=True, slots=True)
class OptOut:
    number: str
    recipient: str
    keyword: str | None
    at: datetime
    by: str


async def opt_out(
    ledger: Ledger,
    number: str,
    recipient: str,
    *,
    by: By,
    keyword: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Add (number, recipient), as of `at` (default now); False when nothing changed (it was
    there already, or a later change of the pair is recorded)."""
    return await _change(ledger, _OPT_OUT, number, recipient, by, keyword, at)


async def opt_in(
    ledger: Ledger,
    number: str,
    recipient: str,
    *,
    by: By,
    keyword: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Remove (number, recipient), as of `at`; False when nothing changed."""
    return await _change(ledger, _OPT_IN, number, recipient, by, keyword, at)


async def _change(
    ledger: Ledger,
    query: str,
    number: str,
    recipient: str,
    by: By,
    keyword: str | None,
    at: datetime | None,
) -> bool:
    when = at or datetime.now(UTC)
    async with ledger.connection() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"optout:{number}:{recipient}"
        )
        if await conn.fetchval(_NEWER, number, recipient, when):
            return False
        return bool(await conn.fetch(query, number, recipient, keyword, by, when))


async def is_opted_out(ledger: Ledger, number: str, recipient: str) -> bool:
    rows = await ledger.fetch(
        "SELECT 1 FROM optouts WHERE number = $1 AND recipient = $2", number, recipient
    )
    return bool(rows)


async def list_optouts(ledger: Ledger, number: str | None = None) -> list[OptOut]:
    rows = await ledger.fetch(
        "SELECT number, recipient, keyword, at, by FROM optouts "
        "WHERE $1::text IS NULL OR number = $1 ORDER BY at DESC",
        number,
    )
    return [OptOut(r["number"], r["recipient"], r["keyword"], r["at"], r["by"]) for r in rows]
