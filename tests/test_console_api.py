"""The console's history API and pages over real HTTP: a console started in process on a free
port, a real ledger (a fresh PostgreSQL database) and a real RabbitMQ vhost. Messages are
seeded through the ledger's own modules; parked messages are published as workers park them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from yarl import URL

from console.app import ConsoleNotConfigured, build_app
from console.auth import LoginLimiter, Sessions, safe_next
from schemas import generate
from schemas import history as schema
from smsbridge import cli, logs, runner, topology
from smsbridge.ledger import accounts as ledger_accounts
from smsbridge.ledger import history as ledger_history
from smsbridge.ledger import optouts as ledger_optouts
from smsbridge.ledger.outbound import LedgerSendClaims
from smsbridge.once import OutboundHistory
from tests.console_harness import (
    OURS,
    TOKEN,
    Console,
    bearer,
    console_config,
    login,
    park,
    running_console,
    seed_inbound,
    seed_outbound,
    set_created,
)
from tests.harness import free_port, queue_depth

THEM = "+12065550142"
OTHER = "+13125550199"
API = "/api/v1"


def browser() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's jar skips IP hosts by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def console(amqp_url: str, ledger_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    async with running_console(console_config(amqp_url, ledger_url, tmp_path)) as running:
        yield running


async def get_json(
    console: Console, path: str, *, expect: int = 200, **params: Any
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(console.url + path, headers=bearer(), params=params) as response:
            body = await response.read()
            assert response.status == expect, body
            assert response.content_type == "application/json"
            data = orjson.loads(body)
    assert isinstance(data, dict)
    return data


async def ids(console: Console, **params: Any) -> list[str]:
    page = await get_json(console, f"{API}/messages", **params)
    return [m["id"] for m in page["messages"]]


async def send(
    console: Console,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any]:
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.request(
            method,
            console.url + path,
            json=json,
            headers=headers if headers is not None else bearer(),
        ) as response:
            body = await response.read()
            return response.status, orjson.loads(body) if body else None
    finally:
        if own:
            await client.close()


# -- the OpenAPI document -------------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_openapi_document_is_generated_and_up_to_date() -> None:
    rendered = generate.render_http()
    assert set(rendered) == {"schemas/openapi.json"}
    path = generate.ROOT / "schemas/openapi.json"
    assert path.is_file() and path.read_bytes() == rendered["schemas/openapi.json"], (
        "stale schemas/openapi.json: run `python -m schemas.generate`"
    )
    assert generate.stale() == []
    assert rendered == generate.render_http()  # deterministic
    assert set(generate.render_all()) == set(generate.render()) | set(rendered)


def test_openapi_check_notices_a_stale_document(tmp_path: Path) -> None:
    generate.write(tmp_path)
    assert generate.stale(tmp_path) == []
    (tmp_path / "schemas/openapi.json").write_bytes(b"{}\n")
    assert generate.stale(tmp_path) == ["schemas/openapi.json"]
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.stale(tmp_path) == []


def test_openapi_describes_every_route_of_the_console(tmp_path: Path) -> None:
    doc = schema.openapi()
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    config = console_config("amqp://guest:guest@127.0.0.1:5672/", "postgresql://x@h/db", tmp_path)
    app = build_app(config)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith(API) and route.method != "HEAD":
            served.add((route.method, path.replace("{id:.+}", "{id}")))
    assert served == documented
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    message = doc["components"]["schemas"]["Message"]
    assert set(message["properties"]) == {
        "id",
        "direction",
        "provider",
        "from",
        "to",
        "body",
        "media",
        "extension",
        "status",
        "provider_id",
        "created_at",
        "updated_at",
    }
    assert message["properties"]["status"]["enum"] == list(schema.STATUSES)
    detail = doc["components"]["schemas"]["MessageDetail"]
    assert {"events", "raw"} <= set(detail["properties"])
    event = doc["components"]["schemas"]["Event"]
    assert set(event["properties"]) == {"status", "at", "reason", "detail"}
    assert set(doc["components"]["schemas"]["Parked"]["properties"]) == {
        "stage",
        "id",
        "reason",
        "parked_at",
        "body",
    }
    account = set(doc["components"]["schemas"]["Account"]["properties"])
    assert account >= {"name", "held", "held_since", "queue_depth", "sent_last_minute"}
    assert set(doc["components"]["schemas"]["OptOut"]["properties"]) == {
        "number",
        "recipient",
        "keyword",
        "at",
        "by",
    }
    assert schema.MAX_LIMIT == ledger_history.MAX_LIMIT
    assert "CONTRACT" not in orjson.dumps(doc).decode()


def test_build_app_needs_a_ledger_and_a_console_section(tmp_path: Path) -> None:
    from tests.harness import make_config

    with pytest.raises(ConsoleNotConfigured):
        build_app(make_config("amqp://guest:guest@127.0.0.1:5672/", tmp_path))


# -- authentication -------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", f"{API}/messages", None),
    ("GET", f"{API}/messages/anything", None),
    ("GET", f"{API}/parked", None),
    ("POST", f"{API}/parked/outbound/requeue", {"all": True}),
    ("GET", f"{API}/accounts", None),
    ("GET", f"{API}/optouts", None),
    ("POST", f"{API}/optouts", {"number": OURS, "recipient": THEM}),
    ("DELETE", f"{API}/optouts/{OURS}/{THEM}", None),
    ("GET", f"{API}/nowhere", None),
]


async def test_every_endpoint_needs_the_token_or_a_session(console: Console) -> None:
    await park(console.config.broker.addresses()[0], "outbound", {"id": "p"}, "p", "bad")
    for headers in (
        {},
        bearer("wrong-token-wrong-token-wrong"),
        {"Authorization": f"Basic {TOKEN}"},
    ):
        for method, path, body in ENDPOINTS:
            status, answer = await send(console, method, path, json=body, headers=headers)
            assert status == 401, (method, path, headers)
            assert isinstance(answer, dict) and set(answer) == {"error"}
    # Nothing happened: the parked message is still there.
    assert len((await get_json(console, f"{API}/parked"))["parked"]) == 1
    # Pages send a browser to the login page, never data.
    async with browser() as session:
        for path in ("/", "/parked", "/accounts", "/optouts", "/messages/x", "/fragments/messages"):
            async with session.get(console.url + path, allow_redirects=False) as response:
                assert response.status == 303, path
                assert response.headers["Location"].startswith("/login")
        async with session.get(console.url + "/?number=%2B1206", allow_redirects=True) as response:
            assert response.url.path == "/login"
            assert response.url.query["next"] == "/?number=%2B1206"
            page = await response.text()
            assert 'name="token"' in page and '<label for="token">' in page
        async with session.post(console.url + "/optouts", data={"number": OURS}) as response:
            assert response.url.path == "/login"
        async with session.get(console.url + "/static/console.css") as response:
            assert response.status == 200  # no data, needed by the login page
        # htmx polling (a session that expired while the page was open): the page goes to login.
        async with session.get(
            console.url + "/fragments/messages", headers={"HX-Request": "true"}
        ) as response:
            assert response.status == 401
            assert response.headers["HX-Redirect"] == "/login"


async def test_login_sets_a_signed_http_only_strict_session_cookie(console: Console) -> None:
    async with browser() as session:
        async with session.post(
            console.url + "/login",
            data={"token": TOKEN, "next": "/parked"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/parked"
            cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"{schema.SESSION_COOKIE}=")
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert "secure" not in attributes  # plain http here
        assert TOKEN not in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        # The cookie works for the API and the pages.
        status, answer = await send(console, "GET", f"{API}/messages", headers={}, session=session)
        assert status == 200 and answer == {"messages": [], "next_cursor": None}
        async with session.get(console.url + "/") as response:
            assert response.status == 200
        # A tampered cookie does not.
        forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
        for bad in (forged, "x", "", "a.b.c", value.replace(".", "", 1)):
            async with aiohttp.ClientSession() as other:
                async with other.get(
                    console.url + f"{API}/messages",
                    headers={"Cookie": f"{schema.SESSION_COOKIE}={bad}"},
                ) as response:
                    assert response.status == 401, bad
        # Logging out revokes the session, even for a copy of the cookie.
        csrf = await login(session, console.url)
        copy = session.cookie_jar.filter_cookies(URL(console.url))[schema.SESSION_COOKIE].value
        async with session.post(
            console.url + "/logout", data={"csrf": csrf}, allow_redirects=False
        ) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
            assert (
                "Max-Age=0" in response.headers["Set-Cookie"]
                or "expires" in response.headers["Set-Cookie"].lower()
            )
        async with aiohttp.ClientSession() as other:
            async with other.get(
                console.url + f"{API}/messages",
                headers={"Cookie": f"{schema.SESSION_COOKIE}={copy}"},
            ) as response:
                assert response.status == 401


async def test_an_expired_session_is_refused(console: Console) -> None:
    sessions = Sessions(TOKEN, hours=1)
    expired, _ = sessions.issue(now=time.time() - 3600 - 5)
    fresh, _ = sessions.issue()
    other_token, _ = Sessions("another-token-0123456789-abcdef", hours=1).issue()
    async with aiohttp.ClientSession() as session:
        for value, status in ((expired, 401), (other_token, 401), (fresh, 200)):
            headers = {"Cookie": f"{schema.SESSION_COOKIE}={value}"}
            async with session.get(console.url + f"{API}/parked", headers=headers) as response:
                assert response.status == status
            async with session.get(
                console.url + "/accounts", headers=headers, allow_redirects=False
            ) as response:
                assert response.status == (303 if status == 401 else 200)


async def test_a_secure_cookie_when_the_console_is_served_over_https(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    config = console_config(amqp_url, ledger_url, tmp_path, public_url="https://console.example")
    async with running_console(config) as console:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                console.url + "/login", data={"token": TOKEN}, allow_redirects=False
            ) as response:
                assert response.status == 303
                assert "; Secure" in response.headers["Set-Cookie"]


async def test_cookie_requests_that_change_something_need_the_csrf_token(console: Console) -> None:
    pair = {"number": OURS, "recipient": THEM}
    async with browser() as session:
        csrf = await login(session, console.url)
        for headers in ({}, {schema.CSRF_HEADER: "wrong"}, {schema.CSRF_HEADER: ""}):
            for method, path, body in (
                ("POST", f"{API}/optouts", pair),
                ("DELETE", f"{API}/optouts/{OURS}/{THEM}", None),
                ("POST", f"{API}/parked/inbound/requeue", {"all": True}),
            ):
                status, answer = await send(
                    console, method, path, json=body, headers=headers, session=session
                )
                assert status == 403, (method, path, headers)
                assert "CSRF" in answer["error"]
        # Forms too (the pages' POSTs).
        async with session.post(console.url + "/optouts", data=pair) as response:
            assert response.status == 403
        async with session.post(
            console.url + "/optouts", data={**pair, "csrf": "nope"}
        ) as response:
            assert response.status == 403
        assert (await get_json(console, f"{API}/optouts"))["optouts"] == []
        # With the token: done, and recorded as the console's doing.
        status, answer = await send(
            console,
            "POST",
            f"{API}/optouts",
            json=pair,
            headers={schema.CSRF_HEADER: csrf},
            session=session,
        )
        assert status == 201 and answer["by"] == "console"
        async with session.post(
            console.url + "/optouts/remove", data={**pair, "csrf": csrf}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/optouts?flash=removed"
    # A bearer request needs no CSRF token.
    status, answer = await send(console, "POST", f"{API}/optouts", json=pair)
    assert status == 201 and answer["by"] == "api"


async def test_login_attempts_are_rate_limited_per_client(console: Console) -> None:
    async with browser() as session:
        for _ in range(5):
            async with session.post(
                console.url + "/login", data={"token": TOKEN[:-1]}, allow_redirects=False
            ) as response:
                assert response.status == 401
                assert "not right" in await response.text()
        for token in ("still-wrong-still-wrong-still", TOKEN):
            async with session.post(
                console.url + "/login", data={"token": token}, allow_redirects=False
            ) as response:
                assert response.status == 429
                assert 1 <= int(response.headers["Retry-After"]) <= 61
                assert "Set-Cookie" not in response.headers
    # The bearer token is not a login: it keeps working.
    await get_json(console, f"{API}/messages")


def test_the_login_limiter_forgets_after_its_window() -> None:
    now = [1000.0]
    limiter = LoginLimiter(attempts=2, window=60, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(60)
    assert limiter.retry_after("b") is None
    now[0] += 30
    assert limiter.retry_after("a") == pytest.approx(30)
    now[0] += 31
    assert limiter.retry_after("a") is None


def test_after_login_only_a_path_on_this_site() -> None:
    assert safe_next("/parked?x=1") == "/parked?x=1"
    bad_targets = ("https://evil.example/", "//evil.example", "/\\evil.example", "/\t/evil.example")
    for bad in (*bad_targets, "/a\\b", "", None, "/login", "/login?next=//evil.example"):
        assert safe_next(bad) == "/"


async def test_the_token_never_appears_in_answers(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    async def record(response: aiohttp.ClientResponse) -> None:
        seen.append(str(dict(response.headers)))
        seen.append(await response.text())

    async with browser() as session:
        for token in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), TOKEN):
            async with session.post(
                console.url + "/login", data={"token": token}, allow_redirects=True
            ) as response:
                await record(response)
        for headers in (bearer(TOKEN[:-1]), bearer(), {"Authorization": TOKEN}):
            for path in (f"{API}/messages", f"{API}/messages/none", f"{API}/messages?limit=0", "/"):
                async with session.get(console.url + path, headers=headers) as response:
                    await record(response)

        async def broken(_ledger: Any, _filters: Any) -> Any:
            token = TOKEN  # a local in the failing frame: tracebacks render no locals
            raise RuntimeError(f"search broke ({len(token)})")

        monkeypatch.setattr(ledger_history, "search", broken)
        async with session.get(console.url + f"{API}/messages", headers=bearer()) as response:
            assert response.status == 500
            assert await response.json() == {"error": "internal error (see the console's log)"}
            await record(response)
    for text in seen:
        assert TOKEN not in text
        assert TOKEN[:-1] not in text


async def test_the_token_never_appears_in_the_console_commands_log(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    """`smsbridge console` as a process, logging at debug level: its whole output."""
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
    env = {**os.environ, "SMSBRIDGE_CONSOLE_TOKEN": TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smsbridge.cli", "--config", str(config), "console",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with browser() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/api/v1/messages", headers=bearer()) as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the console did not come up")
            for token in (TOKEN[:-1], TOKEN):
                async with session.post(f"{url}/login", data={"token": token}) as response:
                    await response.read()
            for headers in (bearer(TOKEN[:-1]), {"Authorization": TOKEN}, bearer()):
                async with session.get(f"{url}/api/v1/parked", headers=headers) as response:
                    await response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    text = output.decode()
    assert process.returncode == 0, text
    assert "console listening" in text and "console login refused" in text
    assert "console login" in text
    assert TOKEN not in text and TOKEN[:-1] not in text


# -- messages -------------------------------------------------------------------------------


async def seed_mix(console: Console) -> None:
    """Nine messages at known times, newest last."""
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ledger = console.ledger
    await seed_inbound(ledger, "in-1", from_=THEM, body="Is the office open on Saturday?")
    await seed_inbound(ledger, "in-2", from_=OTHER, body="Running 10% late_ish")
    await seed_inbound(
        ledger, "in-3", from_=THEM, to="+18335550111", extension="200", body="toll free hello"
    )
    await seed_inbound(
        ledger,
        "in-4",
        from_="+14155550123",
        to="+19995550100",
        extension=None,
        body="nobody's number",
        status="unrouted",
    )
    await seed_outbound(
        ledger, "out-1", to=THEM, body="We open at 9", statuses=("sent", "delivered")
    )
    await seed_outbound(
        ledger, "out-2", to=OTHER, extension="101", body="See you SOON", statuses=("sent",)
    )
    await seed_outbound(
        ledger,
        "out-3",
        to=THEM,
        body="retry me",
        statuses=("failed",),
        reason="invalid request: 'to'",
    )
    await seed_outbound(ledger, "out-4", to=OTHER, body="queued one")
    await seed_inbound(ledger, "in-5", from_=THEM, body="Thanks!")
    order = ["in-1", "in-2", "in-3", "in-4", "out-1", "out-2", "out-3", "out-4", "in-5"]
    for i, message_id in enumerate(order):
        await set_created(ledger, message_id, base + timedelta(hours=i))


async def test_messages_newest_first_with_every_filter(console: Console) -> None:
    await seed_mix(console)
    everything = ["in-5", "out-4", "out-3", "out-2", "out-1", "in-4", "in-3", "in-2", "in-1"]
    page = await get_json(console, f"{API}/messages")
    assert [m["id"] for m in page["messages"]] == everything and page["next_cursor"] is None
    first = page["messages"][0]
    assert set(first) == {
        "id",
        "direction",
        "provider",
        "from",
        "to",
        "body",
        "media",
        "extension",
        "status",
        "provider_id",
        "created_at",
        "updated_at",
    }
    assert first["created_at"] == "2026-03-01T20:00:00Z"
    assert first["from"] == THEM and first["to"] == OURS and first["status"] == "delivered_to_pbx"

    # number: either party, any spelling of it
    them = ["in-5", "out-3", "out-1", "in-3", "in-1"]
    assert await ids(console, number=THEM) == them
    assert await ids(console, number="2065550142") == them
    assert await ids(console, number="(206) 555-0142") == them
    assert await ids(console, number="+1 206 555 0142") == them
    assert await ids(console, number=OURS) == [
        "in-5",
        "out-4",
        "out-3",
        "out-2",
        "out-1",
        "in-2",
        "in-1",
    ]
    # peer: one conversation
    assert await ids(console, number=OURS, peer=THEM) == ["in-5", "out-3", "out-1", "in-1"]
    assert await ids(console, number=THEM, peer="+18335550111") == ["in-3"]
    assert await ids(console, extension="101") == ["out-2"]
    assert await ids(console, extension="200") == ["in-3"]
    assert await ids(console, direction="outbound") == ["out-4", "out-3", "out-2", "out-1"]
    assert await ids(console, direction="inbound", number=OTHER) == ["in-2"]
    assert await ids(console, status="delivered") == ["out-1"]
    assert await ids(console, status="queued") == ["out-4"]
    assert await ids(console, status="failed") == ["out-3"]
    assert await ids(console, status="unrouted") == ["in-4"]
    assert await ids(console, status="blocked") == []
    assert await ids(console, q="soon") == ["out-2"]  # case-insensitive
    assert await ids(console, q="10%") == ["in-2"]  # LIKE wildcards are literal
    assert await ids(console, q="_ish") == ["in-2"]
    assert await ids(console, q="%") == ["in-2"]
    assert await ids(console, q="office open") == ["in-1"]
    assert await ids(console, since="2026-03-01T18:00:00Z") == ["in-5", "out-4", "out-3"]
    assert await ids(console, since="2026-03-01T16:00:00+01:00") == everything[:6]
    assert await ids(console, until="2026-03-01T14:00:00Z") == ["in-2", "in-1"]  # exclusive
    assert await ids(
        console, since="2026-03-01T13:00:00Z", until="2026-03-01T17:00:00Z", direction="outbound"
    ) == ["out-1"]
    assert await ids(console, number=THEM, status="delivered_to_pbx", q="thanks") == ["in-5"]
    assert await ids(console, limit=2) == ["in-5", "out-4"]
    # A '+' the client did not escape reads as a space: still understood.
    async with aiohttp.ClientSession() as session:
        url = URL(console.url + f"{API}/messages?since=2026-03-01T16:00:00+01:00", encoded=True)
        async with session.get(url, headers=bearer()) as response:
            assert [m["id"] for m in (await response.json())["messages"]] == everything[:6]


async def test_one_message_with_its_timeline(console: Console) -> None:
    media: list[dict[str, Any]] = [
        {
            "url": "http://127.0.0.1:8080/media/k",
            "content_type": "image/jpeg",
            "file_name": "a.jpg",
            "size": 1234,
            "sha256": "ab" * 32,
            "error": None,
        },
        {
            "url": None,
            "content_type": None,
            "file_name": "gone.png",
            "size": None,
            "sha256": None,
            "error": "media link expired (404)",
        },
    ]
    raw = {"body": "photo", "num_media": 2, "is_mms": True}
    await seed_inbound(console.ledger, "mdr2-inbound", body="photo", media=media, raw=raw)
    await seed_outbound(
        console.ledger,
        "req/with spaces?#",
        media=["https://files.example.com/a.png"],
        statuses=("sent", "delivered"),
    )
    inbound = await get_json(console, f"{API}/messages/mdr2-inbound")
    assert inbound["direction"] == "inbound" and inbound["media"] == media
    assert inbound["raw"] == raw
    assert [e["status"] for e in inbound["events"]] == ["received", "delivered_to_pbx"]
    assert set(inbound["events"][0]) == {"status", "at", "reason", "detail"}

    outbound = await get_json(console, f"{API}/messages/req%2Fwith%20spaces%3F%23")
    assert outbound["id"] == "req/with spaces?#"
    assert outbound["status"] == "delivered" and outbound["provider_id"] == "mdr2-req/with spaces?#"
    assert outbound["media"] == ["https://files.example.com/a.png"]
    assert [e["status"] for e in outbound["events"]] == ["queued", "sent", "delivered"]
    delivered = outbound["events"][-1]
    assert delivered["detail"]["provider_status"] == "DELIVRD" and delivered["detail"]["level"] == 2
    ats = [e["at"] for e in outbound["events"]]
    assert ats == sorted(ats)

    await seed_outbound(console.ledger, "req-bad", statuses=("failed",), reason="no such number")
    failed = await get_json(console, f"{API}/messages/req-bad")
    assert failed["events"][-1] == {
        "status": "failed",
        "at": failed["events"][-1]["at"],
        "reason": "no such number",
        "detail": {"attempts": 3},
    }

    answer = await get_json(console, f"{API}/messages/mdr2-unknown", expect=404)
    assert answer == {"error": "no such message"}


async def test_pages_continue_without_repeats_or_gaps_while_messages_arrive(
    console: Console,
) -> None:
    for i in range(7):
        await seed_inbound(console.ledger, f"old-{i}", body=f"old {i}")
    first = await get_json(console, f"{API}/messages", limit=3)
    for i in range(5):  # arrive between page 1 and page 2
        await seed_inbound(console.ledger, f"new-{i}", body=f"new {i}")
    second = await get_json(console, f"{API}/messages", limit=3, cursor=first["next_cursor"])
    third = await get_json(console, f"{API}/messages", limit=3, cursor=second["next_cursor"])
    pages = [[m["id"] for m in p["messages"]] for p in (first, second, third)]
    assert pages == [["old-6", "old-5", "old-4"], ["old-3", "old-2", "old-1"], ["old-0"]]
    assert third["next_cursor"] is None
    # The same through a number filter (two index walks merged) and a status filter.
    extras: list[dict[str, Any]] = [{"number": THEM}, {"status": "delivered_to_pbx"}, {"q": "old"}]
    for extra in extras:
        got: list[str] = []
        cursor = None
        while True:
            params = {"limit": 4, **extra, **({"cursor": cursor} if cursor else {})}
            page = await get_json(console, f"{API}/messages", **params)
            got += [m["id"] for m in page["messages"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = [f"new-{i}" for i in range(4, -1, -1)] + [f"old-{i}" for i in range(6, -1, -1)]
        if "q" in extra:
            expected = [i for i in expected if i.startswith("old")]
        assert got == expected, extra


MALFORMED: list[tuple[dict[str, str], str]] = [
    ({"limit": "501"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"since": "yesterday"}, "since"),
    ({"since": "2026-03-01T12:00:00"}, "time zone"),
    ({"since": "2026-03-01"}, "time zone"),  # the API wants a time
    ({"until": "2026-13-01T00:00:00Z"}, "until"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "WzEsMl0"}, "cursor"),  # base64 of [1,2]
    ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgLTFd"}, "cursor"),  # seq -1
    ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgMV0"}, "cursor"),  # no time zone
    ({"status": "lost"}, "status"),
    ({"direction": "sideways"}, "direction"),
    ({"number": "not a number"}, "number"),
    ({"number": THEM, "peer": "x"}, "peer"),
    ({"peer": THEM}, "peer"),
]


def _cursor(created_at: str, seq: int = 1) -> str:
    raw = orjson.dumps([created_at, seq])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# PostgreSQL refuses NUL in text, and asyncpg cannot send a time outside years 1 to 9999 UTC:
# neither may reach the ledger (each was a 500).
OUT_OF_REACH: list[tuple[dict[str, str], str]] = [
    ({"q": "a\x00b"}, "q"),
    ({"extension": "10\x00"}, "extension"),
    ({"direction": "in\x00bound"}, "direction"),
    ({"since": "2026-03-01T00:00:00\x00Z"}, "since"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ({"since": "1969-12-31T23:59:59Z"}, "since"),
    ({"cursor": _cursor("0001-01-01T00:00:00+01:00")}, "cursor"),
    ({"cursor": _cursor("9999-12-31T23:59:59-01:00")}, "cursor"),
    ({"cursor": _cursor("0001-01-01T00:00:00+00:00")}, "cursor"),
    ({"cursor": _cursor("2026-01-01T00:00:00\x00+00:00")}, "cursor"),
]


async def test_malformed_filters_are_400(console: Console) -> None:
    await seed_inbound(console.ledger, "mdr2-any")
    for params, says in MALFORMED + OUT_OF_REACH:
        answer = await get_json(console, f"{API}/messages", expect=400, **params)
        assert set(answer) == {"error"} and says in answer["error"], params


async def test_nul_and_years_out_of_reach_are_4xx_on_the_pages_too(console: Console) -> None:
    await seed_inbound(console.ledger, "mdr2-any")
    await get_json(console, f"{API}/messages/mdr2-any")
    await get_json(console, f"{API}/messages/mdr2\x00any", expect=404)
    await get_json(console, f"{API}/optouts", expect=400, number="+1206\x00")
    async with browser() as session:
        await login(session, console.url)
        for params in (
            {"q": "a\x00b"},
            {"extension": "\x00"},
            {"since": "0001-01-01"},
            {"until": "9999-12-31"},
            {"since": "0001-01-01T00:00:00+01:00"},
        ):
            async with session.get(console.url + "/", params=params) as response:
                assert response.status == 400, params
        async with session.get(console.url + "/messages/mdr2%00any") as response:
            assert response.status == 404
        async with session.get(console.url + f"/conversations/{OURS}/%2B1206%00") as response:
            assert response.status == 400
        async with session.get(
            console.url + f"/conversations/{OURS}/{THEM}",
            params={"cursor": _cursor("9999-12-31T23:59:59-01:00")},
        ) as response:
            assert response.status == 400


# -- parked messages ------------------------------------------------------------------------


async def test_parked_messages_are_peeked_and_requeued(console: Console, amqp_url: str) -> None:
    # An outbound request the ledger settled as failed: requeuing reopens it.
    claims = LedgerSendClaims(console.ledger, lease=timedelta(seconds=30), ttl=60)
    request = {"id": "req-p1", "from": OURS, "to": THEM, "body": "parked one"}
    claim = await claims.claim("req-p1", OutboundHistory("flowroute", OURS, THEM, "x", [], None))
    await claims.settle(claim, "failed", "invalid", 1)
    await park(amqp_url, "outbound", request, "req-p1", "invalid request: 'to'")
    await park(amqp_url, "outbound", {"id": "req-p2", "to": THEM}, "req-p2", "no from")
    await park(amqp_url, "inbound", {"id": "mdr2-p3"}, "mdr2-p3", "bad envelope")

    for _ in range(2):  # a peek leaves them where they are
        parked = (await get_json(console, f"{API}/parked"))["parked"]
        assert [(p["stage"], p["id"]) for p in parked] == [
            ("inbound", "mdr2-p3"),
            ("outbound", "req-p1"),
            ("outbound", "req-p2"),
        ]
    one = parked[1]
    assert set(one) == {"stage", "id", "reason", "parked_at", "body"}
    assert one["reason"] == "invalid request: 'to'" and one["body"] == request
    assert one["parked_at"].endswith("Z")

    status, answer = await send(
        console, "POST", f"{API}/parked/outbound/requeue", json={"ids": ["req-p1"]}
    )
    assert (status, answer) == (200, {"requeued": 1, "not_requeued": []})
    assert await queue_depth(amqp_url, topology.OUTBOUND_QUEUE) == 1
    state = await console.ledger.fetch("SELECT state FROM messages WHERE id = 'req-p1'")
    assert state[0]["state"] == "queued"
    status, answer = await send(
        console, "POST", f"{API}/parked/outbound/requeue", json={"ids": ["nope"]}
    )
    assert (status, answer) == (200, {"requeued": 0, "not_requeued": []})
    status, answer = await send(
        console, "POST", f"{API}/parked/inbound/requeue", json={"all": True}
    )
    assert (status, answer) == (200, {"requeued": 1, "not_requeued": []})
    assert await queue_depth(amqp_url, topology.INBOUND_QUEUE) == 1
    parked = (await get_json(console, f"{API}/parked"))["parked"]
    assert [p["id"] for p in parked] == ["req-p2"]

    for body in ({}, {"ids": "req-p2"}, {"all": False}, {"ids": ["a"], "all": True}, [1]):
        status, answer = await send(console, "POST", f"{API}/parked/outbound/requeue", json=body)
        assert status == 400 and set(answer) == {"error"}, body
    async with aiohttp.ClientSession() as session:
        async with session.post(
            console.url + f"{API}/parked/outbound/requeue",
            data=b"{not json",
            headers={**bearer(), "Content-Type": "application/json"},
        ) as response:
            assert response.status == 400
    status, answer = await send(
        console, "POST", f"{API}/parked/elsewhere/requeue", json={"all": True}
    )
    assert status == 404 and set(answer) == {"error"}
    assert [p["id"] for p in (await get_json(console, f"{API}/parked"))["parked"]] == ["req-p2"]


# -- accounts -------------------------------------------------------------------------------


async def test_accounts_show_holds_queue_depths_and_recent_sends(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    second = """
[[providers]]
name = "second"
type = "flowroute"
api_url = "http://127.0.0.1:9/v2.2"
access_key = "second-access"
secret_key = "second-secret"
"""
    config = console_config(amqp_url, ledger_url, tmp_path, extra=second)
    async with running_console(config) as console:
        held = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
        await ledger_accounts.report(
            console.ledger,
            "flowroute",
            held_since=held,
            held_reason="401 from the API",
            sent_last_minute=7,
            rate_limited_last_minute=2,
            reporter="test",
        )
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await topology.declare(channel)
            await topology.declare_outbound(channel, ["flowroute"], [5.0])
            for i in range(3):
                await channel.default_exchange.publish(
                    aio_pika.Message(b"{}", message_id=f"q{i}"),
                    routing_key=topology.account_queue("flowroute"),
                )
        answer = await get_json(console, f"{API}/accounts")
        assert answer == {
            "accounts": [
                {
                    "name": "flowroute",
                    "held": True,
                    "held_since": "2026-03-01T09:30:00Z",
                    "held_reason": "401 from the API",
                    "queue_depth": 3,
                    "sent_last_minute": 7,
                    "rate_limited_last_minute": 2,
                },
                {
                    "name": "second",
                    "held": False,
                    "held_since": None,
                    "held_reason": None,
                    "queue_depth": None,
                    "sent_last_minute": 0,
                    "rate_limited_last_minute": 0,
                },
            ]
        }
        async with browser() as session:
            await login(session, console.url)
            async with session.get(console.url + "/accounts") as response:
                page = await response.text()
        assert "Held" in page and "401 from the API" in page and "Sending" in page


# -- opt-outs -------------------------------------------------------------------------------


async def test_optouts_are_listed_added_and_removed(console: Console) -> None:
    assert await get_json(console, f"{API}/optouts") == {"optouts": []}
    status, added = await send(
        console,
        "POST",
        f"{API}/optouts",
        json={"number": "12025551234", "recipient": "(206) 555-0142"},
    )
    assert status == 201
    assert added["number"] == OURS and added["recipient"] == THEM
    assert added["by"] == "api" and added["keyword"] is None and added["at"].endswith("Z")
    status, again = await send(
        console, "POST", f"{API}/optouts", json={"number": OURS, "recipient": THEM}
    )
    assert (status, again) == (200, added)
    await send(
        console, "POST", f"{API}/optouts", json={"number": "+18335550111", "recipient": OTHER}
    )
    listed = (await get_json(console, f"{API}/optouts"))["optouts"]
    assert [(o["number"], o["recipient"]) for o in listed] == [
        ("+18335550111", OTHER),
        (OURS, THEM),
    ]
    only = (await get_json(console, f"{API}/optouts", number="2025551234"))["optouts"]
    assert [o["recipient"] for o in only] == [THEM]
    await get_json(console, f"{API}/optouts", expect=400, number="nope")

    bad_bodies: list[Any] = [
        {"number": OURS},
        {"number": "x", "recipient": THEM},
        {"number": OURS, "recipient": "12"},
        {"number": OURS, "recipient": THEM, "extra": 1},
        "text",
    ]
    for body in bad_bodies:
        status, answer = await send(console, "POST", f"{API}/optouts", json=body)
        assert status == 400 and set(answer) == {"error"}, body

    status, _ = await send(console, "DELETE", f"{API}/optouts/{OURS}/{THEM}")
    assert status == 204
    status, answer = await send(console, "DELETE", f"{API}/optouts/{OURS}/{THEM}")
    assert status == 404 and set(answer) == {"error"}
    status, answer = await send(console, "DELETE", f"{API}/optouts/18335550111/%2B13125550199")
    assert status == 204
    status, answer = await send(console, "DELETE", f"{API}/optouts/{OURS}/bogus")
    assert status == 400
    changes = await console.ledger.fetch(
        "SELECT change, by FROM optout_changes WHERE recipient = $1 ORDER BY seq", THEM
    )
    assert [(c["change"], c["by"]) for c in changes] == [("opted_out", "api"), ("opted_in", "api")]


async def test_an_optout_change_that_was_not_applied_is_a_409_not_a_made_up_answer(
    console: Console,
) -> None:
    """A keyword's change is dated by the message (`at`): one dated after now (the provider's
    clock ahead of ours) wins over an operator's change made now, which is then not applied."""
    ledger = console.ledger
    later = datetime.now(UTC) + timedelta(hours=1)
    pair = {"number": OURS, "recipient": THEM}
    earlier = datetime.now(UTC) - timedelta(minutes=1)
    await ledger_optouts.opt_out(ledger, OURS, THEM, by="keyword", keyword="stop", at=earlier)
    await ledger_optouts.opt_in(ledger, OURS, THEM, by="keyword", keyword="start", at=later)
    status, answer = await send(console, "POST", f"{API}/optouts", json=pair)
    assert status == 409 and set(answer) == {"error"}, answer
    assert "not opted out" in answer["error"]
    assert await get_json(console, f"{API}/optouts") == {"optouts": []}

    await ledger_optouts.opt_out(ledger, OURS, OTHER, by="keyword", keyword="stop", at=later)
    status, answer = await send(console, "DELETE", f"{API}/optouts/{OURS}/{OTHER}")
    assert status == 409 and "still opted out" in answer["error"], answer
    listed = (await get_json(console, f"{API}/optouts"))["optouts"]
    assert [(o["recipient"], o["by"], o["keyword"]) for o in listed] == [(OTHER, "keyword", "stop")]
    # Nothing recorded for either attempt.
    changes = await ledger.fetch("SELECT by FROM optout_changes ORDER BY seq")
    assert [c["by"] for c in changes] == ["keyword", "keyword", "keyword"]

    async with browser() as session:
        csrf = await login(session, console.url)
        async with session.post(
            console.url + "/optouts", data={"csrf": csrf, **pair}, allow_redirects=False
        ) as response:
            assert response.status == 409
            assert "not opted out" in await response.text()
        async with session.post(
            console.url + "/optouts/remove",
            data={"csrf": csrf, "number": OURS, "recipient": OTHER},
            allow_redirects=False,
        ) as response:
            assert response.status == 409
            assert "still opted out" in await response.text()


# -- when the ledger or the broker is away --------------------------------------------------


async def test_503_while_the_ledger_is_unreachable(
    amqp_url: str, tmp_path: Path, ledger_url: str
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/smsbridge"
    config = console_config(amqp_url, nowhere, tmp_path)
    async with running_console(config, wait_ledger=False) as console:
        for method, path, body in ENDPOINTS[:-1]:
            if "parked" in path:
                continue  # RabbitMQ only
            status, answer = await send(console, method, path, json=body)
            assert status == 503, path
            assert set(answer) == {"error"} and "ledger" in answer["error"]
        assert (await get_json(console, f"{API}/parked")) == {"parked": []}
        async with browser() as session:
            await session.post(console.url + "/login", data={"token": TOKEN})
            for path in ("/", "/messages/x", "/accounts", "/optouts"):
                async with session.get(console.url + path) as response:
                    assert response.status == 503, path
                    assert "ledger" in await response.text()
            async with session.get(console.url + "/parked") as response:
                assert response.status == 200


async def test_503_for_parked_messages_while_the_broker_is_unreachable(
    ledger_url: str, tmp_path: Path
) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    config = console_config(nowhere, ledger_url, tmp_path)
    async with running_console(config, wait_broker=False) as console:
        answer = await get_json(console, f"{API}/parked", expect=503)
        assert "broker" in answer["error"]
        status, answer = await send(
            console, "POST", f"{API}/parked/media/requeue", json={"all": True}
        )
        assert status == 503
        accounts = await get_json(console, f"{API}/accounts")
        assert accounts["accounts"][0]["queue_depth"] is None
        await get_json(console, f"{API}/messages")


# -- pages ----------------------------------------------------------------------------------


async def test_security_headers_on_every_answer(console: Console) -> None:
    async with browser() as session:
        for path in ("/login", "/static/console.js", f"{API}/messages", "/nowhere", "/"):
            async with session.get(console.url + path, headers=bearer()) as response:
                headers = response.headers
                csp = headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
                assert "img-src 'self' http://127.0.0.1:" in csp  # the gateway's media
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["Referrer-Policy"] == "no-referrer"
                if not path.startswith("/static/"):
                    assert headers["Cache-Control"] == "no-store"
        async with session.get(console.url + "/static/htmx.min.js") as response:
            text = await response.text()
            assert text.startswith("/*! htmx 2.") and "0BSD" in text.splitlines()[0]
            assert response.content_type in ("application/javascript", "text/javascript")


async def test_pages_show_messages_escaped_and_forms_work(console: Console, amqp_url: str) -> None:
    await seed_inbound(console.ledger, "mdr2-x", body="<script>alert('x')</script> & more")
    await seed_outbound(console.ledger, "req-x", body="reply", statuses=("sent", "delivered"))
    await seed_inbound(console.ledger, "mdr2-other", from_=OTHER, body="other person")
    await park(amqp_url, "outbound", {"id": "req-parked"}, "req-parked", "rate limited for good")
    async with browser() as session:
        csrf = await login(session, console.url)
        async with session.get(console.url + "/") as response:
            page = await response.text()
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in page
        assert "<script>alert" not in page
        assert 'hx-get="/fragments/messages?live=' in page and "<main" in page
        assert re.search(r'<label for="f-number">Number</label>', page)
        async with session.get(console.url + "/", params={"number": THEM}) as response:
            page = await response.text()
        assert "mdr2-other" not in page and "/messages/mdr2-x" in page
        async with session.get(console.url + "/", params={"since": "2026-02-30"}) as response:
            assert response.status == 400
            assert "since" in await response.text()
        async with session.get(console.url + "/messages/req-x") as response:
            page = await response.text()
        assert "Timeline" in page and "delivered" in page and "✓✓" in page
        async with session.get(console.url + "/messages/mdr2-x") as response:
            page = await response.text()
        assert "<summary>Raw provider fields</summary>" in page
        async with session.get(console.url + "/messages/nope") as response:
            assert response.status == 404
        async with session.get(console.url + f"/conversations/{OURS}/{THEM}") as response:
            page = await response.text()
        assert page.count('class="bubble-row') == 2
        assert page.index("alert") < page.index("reply")  # oldest first
        # Parked: the confirm step, then the requeue.
        async with session.get(
            console.url + "/parked/outbound/requeue", params={"one": "req-parked"}
        ) as response:
            page = await response.text()
        assert "Yes, requeue" in page and 'value="req-parked"' in page
        async with session.get(
            console.url + "/parked/outbound/requeue", allow_redirects=False
        ) as response:
            assert response.headers["Location"] == "/parked?flash=none"
        async with session.post(
            console.url + "/parked/outbound/requeue",
            data={"csrf": csrf, "ids": "req-parked"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/parked?requeued=1&stage=outbound"
        async with session.get(console.url + "/parked?requeued=1&stage=outbound") as response:
            page = await response.text()
        assert "Requeued 1 message from outbound." in page and "req-parked" not in page
        # Opt-outs through the form.
        async with session.post(
            console.url + "/optouts",
            data={"csrf": csrf, "number": OURS, "recipient": "206-555-0142"},
            allow_redirects=False,
        ) as response:
            assert response.headers["Location"] == "/optouts?flash=added"
        async with session.post(
            console.url + "/optouts", data={"csrf": csrf, "number": OURS, "recipient": "bad"}
        ) as response:
            assert response.status == 400
            assert "recipient" in await response.text()
        async with session.get(console.url + "/optouts") as response:
            page = await response.text()
        assert "+1 206-555-0142" in page and "added (console)" in page


async def test_the_live_fragment_returns_only_what_arrived(console: Console) -> None:
    async def poll(session: aiohttp.ClientSession, url: str) -> tuple[str | None, str]:
        """(the rows it shows, or None; the poller's next URL): 204 and a fragment with the
        poller alone (other messages were recorded, none matching) both show nothing."""
        async with session.get(url) as response:
            if response.status == 204:
                return None, url
            assert response.status == 200
            fragment = await response.text()
        after = re.search(r'id="live" hx-swap-oob="true" hx-get="([^"]+)"', fragment)
        assert after is not None
        shown = fragment if '<li class="msg' in fragment else None
        if shown is None:  # no "0 new messages" for a screen reader every 2 s
            assert "live-status" not in fragment
        return shown, console.url + after.group(1).replace("&amp;", "&")

    await seed_inbound(console.ledger, "first")
    async with browser() as session:
        await login(session, console.url)
        async with session.get(console.url + "/") as response:
            page = await response.text()
        live = re.search(r'id="live" hx-get="([^"]+)"', page)
        assert live is not None
        url = console.url + live.group(1).replace("&amp;", "&")
        shown, url = await poll(session, url)
        assert shown is None
        await seed_inbound(console.ledger, "second", body="just arrived")
        await seed_inbound(console.ledger, "third", from_=OTHER, body="also new")
        fragment, url = await poll(session, url)
        assert fragment is not None
        assert (
            "just arrived" in fragment
            and "also new" in fragment
            and "/messages/first" not in fragment
        )
        assert fragment.index("also new") < fragment.index("just arrived")
        assert 'hx-swap-oob="true"' in fragment and "2 new messages" in fragment
        shown, url = await poll(session, url)
        assert shown is None  # the poller moved on: nothing repeats
        # With a filter, only what matches it.
        async with session.get(console.url + "/", params={"number": OTHER}) as response:
            live = re.search(r'id="live" hx-get="([^"]+)"', await response.text())
        assert live is not None
        url = console.url + live.group(1).replace("&amp;", "&")
        await seed_inbound(console.ledger, "fourth", body="not for OTHER")
        shown, url = await poll(session, url)
        assert shown is None


# -- serving ----------------------------------------------------------------------------------


async def test_the_console_command_needs_ledger_and_console_sections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "smsbridge.toml"
    path.write_text('[broker]\nurl = "amqp://guest:guest@127.0.0.1:5672/"\n')
    try:
        assert await asyncio.to_thread(cli.main, ["--config", str(path), "console"]) == 2
    finally:
        logs.configure("warning", "json")  # as conftest.py: the command configured its own
    err = capsys.readouterr().err
    assert "[ledger] and [console]" in err


async def test_run_serves_the_console_and_console_alone_serves_only_it(
    amqp_url: str, ledger_url: str, tmp_path: Path
) -> None:
    config = console_config(amqp_url, ledger_url, tmp_path)
    alone = await runner.start(config, gateway=False, workers=[], console=True)
    try:
        assert alone.console is not None and alone.gateway is None and not alone.consumers
        await alone.ledgers[0].wait_available(20)
        for broker in alone.brokers:
            await broker.wait_connected(15)
        assert config.console is not None
        url = f"http://{config.console.listen}"
        console = Console(config, url, alone.ledgers[0], alone.brokers[0])
        await get_json(console, f"{API}/messages")
        await get_json(console, f"{API}/parked")
    finally:
        await alone.stop()
    gateway_only = await runner.start(config, gateway=True, workers=[])
    try:
        assert gateway_only.console is None and gateway_only.gateway is not None
    finally:
        await gateway_only.stop()
