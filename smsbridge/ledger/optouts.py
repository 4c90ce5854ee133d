"""The opt-out list: per (our number, their number), durable in the ledger, with every change
kept (who, how, when). Keywords (STOP/START), the console, `smsbridge optout` and the API all
change it through `opt_out`/`opt_in`; the outbound sender checks it before each send.

Changes apply in the order people made them, not the order the bridge handled them: a START
that Flowroute had to resend (a 503, an outage) may be handled after a STOP texted later, and
must not undo it. Each change carries when it was made (the keyword message's timestamp) and
is applied only if no change of the pair made later has been handled, including one that
changed nothing (a STOP when already opted out): `optout_latest` keeps, per pair, when the
newest change handled so far was made. `change` says which it was: applied, unchanged (the
pair was in that state already) or stale (a later change won).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from smsbridge.ledger.connection import Ledger

By = Literal["keyword", "console", "cli", "api"]
Change = Literal["opted_out", "opted_in"]


class Outcome(StrEnum):
    APPLIED = "applied"  # the list changed
    UNCHANGED = "unchanged"  # the pair was in that state already
    STALE = "stale"  # a change of the pair made later was handled first: this one lost


# These run in one transaction after an advisory lock on the pair, so two changes of one pair
# are handled one after the other; $3 (or $5) is when the change was made. No row back: a
# later change was handled already (ties go in the order handled, as a redelivery must).
_LATEST = """
INSERT INTO optout_latest AS latest (number, recipient, at) VALUES ($1, $2, $3)
ON CONFLICT (number, recipient) DO UPDATE SET at = EXCLUDED.at WHERE latest.at <= EXCLUDED.at
RETURNING 1
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
    there already, or a later change of the pair was handled)."""
    outcome = await change(ledger, "opted_out", number, recipient, by=by, keyword=keyword, at=at)
    return outcome is Outcome.APPLIED


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
    outcome = await change(ledger, "opted_in", number, recipient, by=by, keyword=keyword, at=at)
    return outcome is Outcome.APPLIED


async def change(
    ledger: Ledger,
    kind: Change,
    number: str,
    recipient: str,
    *,
    by: By,
    keyword: str | None = None,
    at: datetime | None = None,
) -> Outcome:
    """Opt (number, recipient) out or back in, as of `at` (default now)."""
    when = at or datetime.now(UTC)
    query = _OPT_OUT if kind == "opted_out" else _OPT_IN
    async with ledger.connection() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"optout:{number}:{recipient}"
        )
        if not await conn.fetchval(_LATEST, number, recipient, when):
            return Outcome.STALE
        if await conn.fetch(query, number, recipient, keyword, by, when):
            return Outcome.APPLIED
        return Outcome.UNCHANGED


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
