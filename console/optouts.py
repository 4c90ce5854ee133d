"""The opt-out list for the console: numbers normalized to E.164, changes recorded as made by
`api` (bearer token) or `console` (a browser session), through smsbridge/ledger/optouts.py.

A change is applied only if no later-dated change of the pair is recorded (a keyword carries
its message's time, which may be ahead of ours): one that was not applied answers what stands
(409), never an entry that does not exist."""

from __future__ import annotations

from schemas.history import OptOut
from smsbridge.ledger import optouts
from smsbridge.ledger.connection import Ledger

_ONE = "SELECT number, recipient, keyword, at, by FROM optouts WHERE number = $1 AND recipient = $2"
_LATER = "a change of this pair dated later (by its sender's clock) was handled already"


class NotApplied(Exception):
    """A change not applied because a later-dated one of the pair stands (409): says what
    stands."""


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
    """Opt `recipient` out of `number`: (added now, the entry). An existing one is kept; raises
    NotApplied when they are not opted out afterwards."""
    added = await optouts.opt_out(ledger, number, recipient, by=by)
    entry = await one(ledger, number, recipient)
    if entry is None:  # a later-dated opt-in stands
        raise NotApplied(f"not opted out: {_LATER}; they stay opted in")
    return added, entry


async def remove(ledger: Ledger, number: str, recipient: str, by: optouts.By) -> bool:
    """Opt `recipient` back in: False when they were not opted out; raises NotApplied when they
    still are (a later-dated opt-out stands)."""
    if await optouts.opt_in(ledger, number, recipient, by=by):
        return True
    entry = await one(ledger, number, recipient)
    if entry is not None:  # a later-dated opt-out stands
        how = f"texted {entry.keyword.upper()}" if entry.keyword else f"added by {entry.by}"
        since = entry.at.isoformat().replace("+00:00", "Z")
        raise NotApplied(f"still opted out: {_LATER}; the opt-out stands ({how}, {since})")
    return False
