"""Live updates of the console's pages: every message recorded after the page (or the last
poll) looked is shown once, whatever its `created_at` and whatever order the transactions that
recorded them committed in. Real ledger (a fresh PostgreSQL database) and RabbitMQ vhost."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.console_harness import (
    OURS,
    Console,
    console_config,
    login,
    running_console,
    seed_inbound,
    seed_outbound,
)

THEM = "+12065550142"
_LIVE = re.compile(r'id="live"(?: hx-swap-oob="true")? hx-get="([^"]+)"')
_ROW = re.compile(r'<li class="(?:msg|bubble-row) ')


@pytest.fixture
async def console(amqp_url: str, ledger_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(console_config(amqp_url, ledger_url, tmp_path)) as running:
        yield running


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def live_url(text: str) -> str:
    found = _LIVE.search(text)
    assert found is not None, text
    return html.unescape(found.group(1))


class Poller:
    """What htmx does every 2 s: GET the live URL, then follow the one it answers with."""

    def __init__(self, session: aiohttp.ClientSession, base: str, page: str) -> None:
        self.session = session
        self.base = base
        self.url = live_url(page)

    async def poll(self) -> str | None:
        """The fragment's text, or None when it shows nothing new: 204 (nothing recorded at
        all), or only the poller with its new position (nothing that matches)."""
        async with self.session.get(self.base + self.url) as response:
            if response.status == 204:
                return None
            assert response.status == 200, await response.text()
            text = await response.text()
        self.url = live_url(text)
        return text if _ROW.search(text) else None


async def opened(session: aiohttp.ClientSession, console: Console, path: str) -> Poller:
    async with session.get(console.url + path) as response:
        assert response.status == 200
        return Poller(session, console.url, await response.text())


async def test_a_message_recorded_late_with_an_older_created_at_appears_live(
    console: Console,
) -> None:
    now = datetime.now(UTC)
    await seed_inbound(console.ledger, "mdr2-first", body="first", created_at=now)
    async with browser() as session:
        await login(session, console.url)
        live = await opened(session, console, "/")
        # An MMS the gateway received before "first", recorded only once its media was in.
        await seed_inbound(
            console.ledger, "mdr2-late", body="late mms", created_at=now - timedelta(seconds=30)
        )
        fragment = await live.poll()
        assert fragment is not None and "late mms" in fragment
        assert "/messages/mdr2-first" not in fragment
        assert await live.poll() is None


async def test_a_transaction_that_commits_after_a_newer_one_is_not_missed(
    console: Console, ledger_url: str
) -> None:
    await seed_inbound(console.ledger, "mdr2-before", body="before")
    slow = await asyncpg.connect(ledger_url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        # An outbound batch that began first (its created_at and seq are the lower ones) ...
        await slow.execute(
            "INSERT INTO messages (direction, id, from_number, to_number, body, status, state) "
            "VALUES ('outbound', 'req-slow', $1, $2, 'slow batch', 'queued', 'queued')",
            OURS,
            THEM,
        )
        async with browser() as session:
            await login(session, console.url)
            live = await opened(session, console, "/")
            # ... while another, begun later, commits first.
            await seed_outbound(console.ledger, "req-fast", body="fast batch")
            fragment = await live.poll()
            assert fragment is not None and "fast batch" in fragment
            assert "slow batch" not in fragment
            await transaction.commit()
            fragment = await live.poll()
            assert fragment is not None and "slow batch" in fragment
            assert "fast batch" not in fragment and "/messages/mdr2-before" not in fragment
            assert await live.poll() is None
    finally:
        await slow.close()


async def test_a_conversation_shows_a_late_message_live(console: Console) -> None:
    now = datetime.now(UTC)
    await seed_inbound(console.ledger, "mdr2-c1", from_=THEM, body="hello", created_at=now)
    async with browser() as session:
        await login(session, console.url)
        live = await opened(session, console, f"/conversations/{OURS}/{THEM}")
        await seed_inbound(
            console.ledger,
            "mdr2-c2",
            from_=THEM,
            body="sent a minute ago",
            created_at=now - timedelta(minutes=1),
        )
        await seed_inbound(console.ledger, "mdr2-other", from_="+13125550199", body="not theirs")
        fragment = await live.poll()
        assert fragment is not None and "sent a minute ago" in fragment
        assert "not theirs" not in fragment and "hello" not in fragment
        assert await live.poll() is None


def _position(snapshot: str) -> str:
    return base64.urlsafe_b64encode(snapshot.encode()).rstrip(b"=").decode()


async def test_a_live_position_that_is_not_ours_is_400(console: Console) -> None:
    """A forged position never reaches PostgreSQL (which would refuse it with an error)."""
    forged = [
        "not base64!",
        _position("x:y:"),
        _position("0:5:"),  # xmin 0
        _position("9:5:"),  # xmax below xmin
        _position("5:9:4"),  # in progress below xmin
        _position("5:9:9"),  # ... at or above xmax
        _position("5:9:7,6"),  # out of order
        _position("5:99999999999999999999:"),  # beyond bigint
        _position("5:9:\x006"),
    ]
    async with browser() as session:
        await login(session, console.url)
        for bad in forged:
            for path in ("/fragments/messages", f"/conversations/{OURS}/{THEM}"):
                async with session.get(console.url + path, params={"live": bad}) as response:
                    assert response.status == 400, (path, bad)
        async with session.get(
            console.url + "/fragments/messages", params={"live": _position("5:9:6,6,7")}
        ) as response:
            assert response.status == 200
