"""The opt-out list: per (our number, their number), durable in the ledger, with every change
kept (who, how, when). Keywords (STOP/START), the console, `smsbridge optout` and the API all
change it through `opt_out`/`opt_in`; the outbound sender checks it before each send."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from smsbridge.ledger.connection import Ledger

By = Literal["keyword", "console", "cli", "api"]

_OPT_OUT = """
WITH added AS (
    INSERT INTO optouts (number, recipient, keyword, by) VALUES ($1, $2, $3, $4)
    ON CONFLICT (number, recipient) DO NOTHING
    RETURNING number
)
INSERT INTO optout_changes (number, recipient, change, keyword, by)
SELECT $1, $2, 'opted_out', $3, $4 FROM added
RETURNING seq
"""

_OPT_IN = """
WITH removed AS (
    DELETE FROM optouts WHERE number = $1 AND recipient = $2 RETURNING number
)
INSERT INTO optout_changes (number, recipient, change, keyword, by)
SELECT $1, $2, 'opted_in', $3, $4 FROM removed
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
    ledger: Ledger, number: str, recipient: str, *, by: By, keyword: str | None = None
) -> bool:
    """Add (number, recipient); False when it was already there."""
    return bool(await ledger.fetch(_OPT_OUT, number, recipient, keyword, by))


async def opt_in(
    ledger: Ledger, number: str, recipient: str, *, by: By, keyword: str | None = None
) -> bool:
    """Remove (number, recipient); False when it was not there."""
    return bool(await ledger.fetch(_OPT_IN, number, recipient, keyword, by))


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
