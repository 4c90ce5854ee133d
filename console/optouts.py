"""The opt-out list for the console: numbers normalized to E.164, changes recorded as made by
`api` (bearer token) or `console` (a browser session), through smsbridge/ledger/optouts.py."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.history import OptOut
from smsbridge.ledger import optouts
from smsbridge.ledger.connection import Ledger

_ONE = "SELECT number, recipient, keyword, at, by FROM optouts WHERE number = $1 AND recipient = $2"


def view(item: optouts.OptOut) -> OptOut:
    return OptOut.model_validate(
        {
            "number": item.number,
            "recipient": item.recipient,
            "keyword": item.keyword,
            "at": item.at,
            "by": item.by,
        }
    )


async def listed(ledger: Ledger, number: str | None = None) -> list[OptOut]:
    return [view(item) for item in await optouts.list_optouts(ledger, number)]


async def one(ledger: Ledger, number: str, recipient: str) -> OptOut | None:
    rows = await ledger.fetch(_ONE, number, recipient)
    return OptOut.model_validate(dict(rows[0])) if rows else None


async def add(ledger: Ledger, number: str, recipient: str, by: optouts.By) -> tuple[bool, OptOut]:
    """Opt `recipient` out of `number`: (added now, the entry). An existing one is kept."""
    added = await optouts.opt_out(ledger, number, recipient, by=by)
    entry = await one(ledger, number, recipient)
    if entry is None:  # opted back in just now (a START): what was added, as it was
        now = datetime.now(UTC)
        entry = OptOut(number=number, recipient=recipient, keyword=None, at=now, by=by)
    return added, entry


async def remove(ledger: Ledger, number: str, recipient: str, by: optouts.By) -> bool:
    return await optouts.opt_in(ledger, number, recipient, by=by)
