"""The console's login limiter and session cookie under hostile input, over real HTTP (raw
sockets where a client would misbehave): slow bodies, a reverse proxy in front, cookies that
are not UTF-8, and what the console's own log says while someone guesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.console_harness import (
    TOKEN,
    Console,
    bearer,
    console_config,
    running_console,
)
from tests.harness import free_port

API = "/api/v1"
WRONG = "wrong-wrong-wrong-wrong-wrong"


@pytest.fixture
async def console(amqp_url: str, ledger_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(console_config(amqp_url, ledger_url, tmp_path)) as running:
        yield running


def _address(console: Console) -> tuple[str, int]:
    host, port = console.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw(console: Console, request: bytes) -> bytes:
    """Send `request` as is; the whole answer (the console closes: Connection: close)."""
    reader, writer = await asyncio.open_connection(*_address(console))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def log_in(
    console: Console, token: str, forwarded_for: str | None = None
) -> aiohttp.ClientResponse:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            console.url + "/login",
            data={"token": token, "next": "/"},
            headers=headers,
            allow_redirects=False,
        ) as response:
            await response.read()
            return response


# -- slow bodies (finding 4) ---------------------------------------------------------------------


async def test_guesses_whose_bodies_arrive_late_are_still_rate_limited(console: Console) -> None:
    """Many logins send their headers first and their bodies later: each is counted against
    the limit once its body (the guess) is in, so only 5 are even compared."""
    body = f"token={WRONG}&next=%2F".encode()
    head = (
        b"POST /login HTTP/1.1\r\nHost: console\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    clients = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection(*_address(console))
        writer.write(head)
        await writer.drain()
        clients.append((reader, writer))
    # A request to the same console, answered after it has read (and so started handling)
    # every login above: each of them is now waiting for its body.
    async with aiohttp.ClientSession() as session:
        async with session.get(console.url + f"{API}/messages", headers=bearer()) as response:
            assert response.status == 200
    statuses = []
    for _, writer in clients:
        writer.write(body)
        await writer.drain()
    for reader, writer in clients:
        statuses.append(status_of(await asyncio.wait_for(reader.read(), 30)))
        writer.close()
    assert sorted(statuses) == [401] * 5 + [429] * 15


# -- behind a reverse proxy (finding 5) -----------------------------------------------------------


async def test_behind_a_trusted_proxy_the_limit_is_per_client(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    config = console_config(
        amqp_url, ledger_url, tmp_path, extra='trusted_proxies = ["127.0.0.0/8"]'
    )
    assert config.console is not None and config.console.trusted_proxies == ["127.0.0.0/8"]
    async with running_console(config) as console:
        for _ in range(5):
            assert (await log_in(console, WRONG, "203.0.113.7")).status == 401
        assert (await log_in(console, WRONG, "203.0.113.7")).status == 429
        # The proxy appends the address it saw: a forged first hop changes nothing.
        assert (await log_in(console, WRONG, "198.51.100.1, 203.0.113.7")).status == 429
        # Another operator behind the same proxy is not locked out.
        assert (await log_in(console, WRONG, "203.0.113.8")).status == 401
        assert (await log_in(console, TOKEN, "203.0.113.8")).status == 303


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(console: Console) -> None:
    for i in range(5):
        assert (await log_in(console, WRONG, f"203.0.113.{i}")).status == 401
    assert (await log_in(console, WRONG, "203.0.113.99")).status == 429


def test_trusted_proxies_must_be_addresses(amqp_url: str, ledger_url: str, tmp_path: Path) -> None:
    from smsbridge.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="not an IP address"):
        console_config(amqp_url, ledger_url, tmp_path, extra='trusted_proxies = ["proxy"]')


# -- cookies that are not UTF-8 (finding 6) -------------------------------------------------------


async def test_a_session_cookie_that_is_not_utf8_is_401(console: Console) -> None:
    for cookie in (b"a.1.\xff", b"\xff\xfe.99999999999.x", b"a.\xd9\xa5.x", b"\xc3\xa9.1.x"):
        answer = await raw(
            console,
            b"GET /api/v1/messages HTTP/1.1\r\nHost: console\r\nConnection: close\r\n"
            b"Cookie: smsbridge_session=" + cookie + b"\r\n\r\n",
        )
        assert status_of(answer) == 401, (cookie, answer[:200])
        answer = await raw(
            console,
            b"GET /login HTTP/1.1\r\nHost: console\r\nConnection: close\r\n"
            b"Cookie: smsbridge_session=" + cookie + b"\r\n\r\n",
        )
        assert status_of(answer) == 200, (cookie, answer[:200])


# -- what the log says -----------------------------------------------------------------------------

# Characters outside the masking regex's class (a space, '!', '#', ',', parentheses): only a
# literal match of the configured token hides all of it.
ODD_TOKEN = "odd token! #with spaces, (and) 0123456789"


async def test_the_log_throttles_refused_logins_and_never_shows_an_odd_token(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    """`smsbridge console` as a process, its whole output: a few lines a minute for refused and
    rate-limited logins whatever the number of guesses, and the token nowhere, even in
    aiohttp's own report of a malformed request (which quotes the header line)."""
    port = free_port()
    config = tmp_path / "smsbridge.toml"
    config.write_text(
        f"""
[broker]
url = "{amqp_url}"

[ledger]
url = "{ledger_url}"

[console]
listen = "127.0.0.1:{port}"
token = "${{SMSBRIDGE_CONSOLE_TOKEN}}"

[logging]
level = "debug"
format = "json"
"""
    )
    env = {**os.environ, "SMSBRIDGE_CONSOLE_TOKEN": ODD_TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smsbridge.cli", "--config", str(config), "console",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    odd = {"Authorization": f"Bearer {ODD_TOKEN}"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/api/v1/parked", headers=odd) as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the console did not come up")

            async def guess() -> int:
                async with session.post(
                    f"{url}/login", data={"token": ODD_TOKEN[:-1]}, allow_redirects=False
                ) as response:
                    return response.status

            statuses = await asyncio.gather(*(guess() for _ in range(40)))
            assert sorted(statuses) == [401] * 5 + [429] * 35
        # A control character in a header: aiohttp refuses the request before the console
        # sees it, and logs the error with the header line (the token in it).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /api/v1/messages HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ODD_TOKEN}".encode()
            + b"\x01\r\n\r\n"
        )
        await writer.drain()
        await asyncio.wait_for(reader.read(), 30)
        writer.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    text = output.decode()
    assert process.returncode == 0, text
    lines = text.splitlines()
    refused = [line for line in lines if '"event":"console login refused"' in line]
    limited = [line for line in lines if '"event":"console login rate-limited"' in line]
    assert len(refused) == 5 and 1 <= len(limited) <= 10, (len(refused), len(limited))
    # ... and, at the latest when the console stops, how many lines were left out.
    assert any('"log lines suppressed"' in line and "rate-limited" in line for line in lines)
    assert "Error handling request" in text  # the malformed request was logged ...
    for part in ("odd token", "#with spaces", "(and) 0123456789"):
        assert part not in text, part  # ... without the token
