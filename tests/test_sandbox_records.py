"""Sandbox message records listing, the accept-then-drop fault and account-level callbacks.

Real HTTP over loopback, like ``test_sandbox.py``: the listing is what the bridge will use to
reconcile a send whose outcome is unknown, and ``accept_then_drop`` is how its tests make the
outcome unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from smsbridge.sandbox import AccountSpec, Sandbox

KEY_A, SECRET_A = "acct-a", "secret-a"
KEY_B, SECRET_B = "acct-b", "secret-b"
AUTH_A = aiohttp.encode_basic_auth(KEY_A, SECRET_A)
AUTH_B = aiohttp.encode_basic_auth(KEY_B, SECRET_B)
JSONAPI = "application/vnd.api+json"
TO, FROM = "12065550142", "12025551234"


def sms(body: str, **extra: Any) -> dict[str, Any]:
    return {
        "data": {"type": "message", "attributes": {"to": TO, "from": FROM, "body": body, **extra}}
    }


def callback_body(url: Any) -> dict[str, Any]:
    return {"data": {"attributes": {"callback_url": url}}}


def zulu(at: datetime) -> str:
    """``2026-01-01T00:00:00.123456Z``: the ``Z`` spelling of an aware UTC time."""
    return at.isoformat().replace("+00:00", "Z")


class Receiver:
    """Answers 200 to any POST and remembers (path, JSON body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json()))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    accounts = [
        AccountSpec(KEY_A, SECRET_A, sms_per_second=100),
        AccountSpec(KEY_B, SECRET_B, sms_per_second=100),
    ]
    async with Sandbox(accounts=accounts, resend_interval=0.02, dlr_delay=0.01) as sb:
        yield sb


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def post_message(
    client: aiohttp.ClientSession, sb: Sandbox, body: dict[str, Any], auth: str = AUTH_A
) -> tuple[int, Any]:
    headers = {"Content-Type": JSONAPI, "Authorization": auth}
    async with client.post(
        f"{sb.api_url}/messages", data=orjson.dumps(body), headers=headers
    ) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None)


async def send_all(
    client: aiohttp.ClientSession, sb: Sandbox, bodies: list[str], auth: str = AUTH_A
) -> list[str]:
    """Send one at a time, a little apart, so every record has its own timestamp."""
    ids = []
    for body in bodies:
        status, answer = await post_message(client, sb, sms(body), auth)
        assert status == 202
        ids.append(answer["data"]["id"])
        await asyncio.sleep(0.002)
    return ids


async def get_json(
    client: aiohttp.ClientSession,
    url: str,
    params: dict[str, str] | None = None,
    auth: str | None = AUTH_A,
) -> tuple[int, Any, str]:
    headers = {"Authorization": auth} if auth is not None else {}
    async with client.get(url, params=params, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None), resp.content_type


async def list_ids(
    client: aiohttp.ClientSession, sb: Sandbox, auth: str = AUTH_A, **params: str
) -> list[str]:
    status, answer, _ = await get_json(client, f"{sb.api_url}/messages", params, auth)
    assert status == 200, answer
    return [item["id"] for item in answer["data"]]


async def put_callback(
    client: aiohttp.ClientSession,
    sb: Sandbox,
    kind: str,
    body: Any,
    *,
    auth: str | None = AUTH_A,
    content_type: str = JSONAPI,
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    url = f"{sb.url}/v2.1/messages/{kind}_callback"
    async with client.put(url, data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, await resp.read()


def assert_errors(answer: Any, status: int, mentions: str) -> None:
    [error] = answer["errors"]
    assert error["status"] == status and mentions in error["detail"]


# -- the records listing --------------------------------------------------------------------------


async def test_listing_filters_by_time_window(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    ids = await send_all(client, sandbox, ["m0", "m1", "m2", "m3"])
    t = [m.timestamp for m in sandbox.messages]
    assert t == sorted(t) and len(set(t)) == 4

    status, answer, ctype = await get_json(client, f"{sandbox.api_url}/messages")
    assert status == 200 and ctype == JSONAPI
    assert [r["id"] for r in answer["data"]] == ids  # no bounds: all, oldest first
    assert [r["attributes"]["body"] for r in answer["data"]] == ["m0", "m1", "m2", "m3"]
    assert [r["attributes"]["timestamp"] for r in answer["data"]] == [x.isoformat() for x in t]
    assert answer["links"] == {"prev": None, "next": None}

    # inclusive start ("Z" with fraction), exclusive end ("+00:00" with fraction)
    assert (
        await list_ids(client, sandbox, start_date=zulu(t[1]), end_date=t[3].isoformat())
        == ids[1:3]
    )
    assert await list_ids(client, sandbox, start_date=t[3].isoformat()) == ids[3:]
    assert await list_ids(client, sandbox, end_date=zulu(t[0])) == []
    # whole seconds, both spellings
    first = t[0].replace(microsecond=0)
    after = t[3].replace(microsecond=0) + timedelta(seconds=1)
    assert (
        await list_ids(
            client,
            sandbox,
            start_date=first.strftime("%Y-%m-%dT%H:%M:%SZ"),
            end_date=after.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        )
        == ids
    )
    assert await list_ids(client, sandbox, start_date=after.strftime("%Y-%m-%dT%H:%M:%SZ")) == []
    assert await list_ids(client, sandbox, end_date="2000-01-01T00:00:00Z") == []


async def test_listed_records_are_the_lookup_records(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    await send_all(client, sandbox, ["Your appointment is confirmed", "à demain 👍"])
    status, answer, _ = await get_json(client, f"{sandbox.api_url}/messages")
    assert status == 200 and len(answer["data"]) == 2
    for record in answer["data"]:
        lookup = record["links"]["self"]
        assert lookup == f"{sandbox.api_url}/messages/{record['id']}"
        status, single, _ = await get_json(client, lookup)
        assert status == 200 and single["data"] == record
        attrs = record["attributes"]
        assert (attrs["to"], attrs["from"]) == (TO, FROM)  # digits without '+', as sent
        assert attrs["direction"] == "outbound" and attrs["is_mms"] is False
    assert [r["attributes"]["message_encoding"] for r in answer["data"]] == [0, 8]


async def test_pagination_follows_links_next(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    ids = await send_all(client, sandbox, [f"n{i}" for i in range(5)])

    async def walk(params: dict[str, str]) -> list[list[str]]:
        pages: list[list[str]] = []
        url: str | None = f"{sandbox.api_url}/messages"
        query: dict[str, str] | None = params
        while url is not None:
            status, answer, _ = await get_json(client, url, query)
            assert status == 200, answer
            pages.append([r["id"] for r in answer["data"]])
            if len(pages) > 1:
                assert answer["links"]["prev"] is not None
            url, query = answer["links"]["next"], None
            if url is not None:
                assert url.startswith(f"{sandbox.api_url}/messages?")  # absolute
            assert len(pages) <= 5, "links.next never ends"
        return pages

    assert await walk({"limit": "2"}) == [ids[0:2], ids[2:4], ids[4:5]]
    # the filter is carried over in links.next
    start = zulu(sandbox.messages[1].timestamp)
    assert await walk({"limit": "2", "start_date": start}) == [ids[1:3], ids[3:5]]
    # offset past the end: an empty last page
    status, answer, _ = await get_json(
        client, f"{sandbox.api_url}/messages", {"limit": "2", "offset": "6"}
    )
    assert status == 200 and answer["data"] == [] and answer["links"]["next"] is None


async def test_the_bridges_listing_is_never_taken_for_whole_when_cut_short(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    """More pages than the client reads: an error (the look-ups try again later), not a
    shorter list. A listing cut short used to be returned as if whole: every in-doubt send
    past its end was taken for "not accepted" and sent again."""
    from smsbridge.config import ProviderConfig
    from smsbridge.flowroute.client import FlowrouteClient, Transient

    ids = await send_all(client, sandbox, [f"r{i}" for i in range(5)])
    provider = ProviderConfig.model_validate(
        {"name": "a", "api_url": sandbox.api_url, "access_key": KEY_A, "secret_key": SECRET_A}
    )
    flowroute = FlowrouteClient(client, provider)
    since = sandbox.messages[0].timestamp - timedelta(seconds=1)
    until = datetime.now(UTC) + timedelta(minutes=1)
    whole = await flowroute.records(since, until, page_size=2, max_pages=3)
    assert [r["id"] for r in whole] == ids
    with pytest.raises(Transient, match="more than 2 pages"):
        await flowroute.records(since, until, page_size=2, max_pages=2)


async def test_listing_shows_only_the_callers_account(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    a_ids = await send_all(client, sandbox, ["a0", "a1"], AUTH_A)
    b_ids = await send_all(client, sandbox, ["b0"], AUTH_B)
    assert await list_ids(client, sandbox, AUTH_A) == a_ids
    assert await list_ids(client, sandbox, AUTH_B) == b_ids
    status, _, _ = await get_json(client, f"{sandbox.api_url}/messages/{a_ids[0]}", auth=AUTH_B)
    assert status == 404


@pytest.mark.parametrize(
    "params,mentions",
    [
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2026-01-01T00:00:00 00:00"}, "%2B"),  # an unencoded '+'
        ({"end_date": "2026-13-01T00:00:00Z"}, "end_date"),
        ({"start_date": "2026-01-02T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"}, "before"),
        ({"limit": "x"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ],
)
async def test_bad_query_is_400(
    sandbox: Sandbox, client: aiohttp.ClientSession, params: dict[str, str], mentions: str
) -> None:
    status, answer, ctype = await get_json(client, f"{sandbox.api_url}/messages", params)
    assert status == 400 and ctype == JSONAPI
    assert_errors(answer, 400, mentions)
    assert answer["errors"][0]["title"] == "Bad Request"


async def test_key_probe_limit_1(sandbox: Sandbox, client: aiohttp.ClientSession) -> None:
    url = f"{sandbox.api_url}/messages"
    status, answer, _ = await get_json(client, url, {"limit": "1"})
    assert status == 200 and answer["data"] == []
    ids = await send_all(client, sandbox, ["p0", "p1"])
    status, answer, _ = await get_json(client, url, {"limit": "1"})
    assert status == 200 and [r["id"] for r in answer["data"]] == ids[:1]
    assert answer["links"]["next"] is not None
    wrong = aiohttp.encode_basic_auth(KEY_A, "wrong")
    for auth in (wrong, None):
        status, answer, _ = await get_json(client, url, {"limit": "1"}, auth)
        assert status == 401
        assert_errors(answer, 401, "Invalid credentials")


# -- accepted, then dropped -----------------------------------------------------------------------


async def test_accept_then_drop_records_but_never_answers(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    fault = {"accept_then_drop": True, "count": 2}
    async with client.post(f"{sandbox.url}/_sandbox/faults", json=fault) as resp:
        assert resp.status == 200
        assert (await resp.json())["fault"]["accept_then_drop"] is True

    # a request that would not be accepted still gets its answer (and uses up one)
    wrong = aiohttp.encode_basic_auth(KEY_A, "wrong")
    assert (await post_message(client, sandbox, sms("x"), wrong))[0] == 401

    body = sms("did it go?", dlr_callback=f"{receiver.url}/dlr")
    with pytest.raises(aiohttp.ClientError):
        await post_message(client, sandbox, body)
    [message] = sandbox.messages
    assert message.answered is False and message.attributes == body["data"]["attributes"]

    status, answer, _ = await get_json(client, f"{sandbox.api_url}/messages")
    assert status == 200
    [record] = answer["data"]
    assert record["id"] == message.id and record["attributes"]["body"] == "did it go?"

    await sandbox.wait_idle()
    assert [p["data"]["id"] for _, p in receiver.posts] == [message.id, message.id]
    stats = sandbox.stats()
    assert (stats["accepted"], stats["accepted_dropped"], stats["dropped"]) == (1, 1, 1)
    assert "202" not in stats["by_status"]

    # the fault is used up: the next one is answered
    status, answer = await post_message(client, sandbox, sms("again"))
    assert status == 202 and sandbox.messages[-1].answered is True


async def test_accept_then_drop_is_validated(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    with pytest.raises(ValueError):
        sandbox.set_fault(503, accept_then_drop=True)
    with pytest.raises(ValueError):
        sandbox.set_fault(drop=True, accept_then_drop=True)
    assert sandbox.set_fault(accept_then_drop=True).accept_then_drop is True
    for bad in ({"accept_then_drop": "yes"}, {"accept_then_drop": True, "drop": True}):
        async with client.post(f"{sandbox.url}/_sandbox/faults", json=bad) as resp:
            assert resp.status == 400


# -- account-level callbacks ----------------------------------------------------------------------


async def test_callbacks_put_remembered_per_account(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    assert sandbox.callbacks(KEY_A) == {"sms": None, "mms": None, "dlr": None}
    for kind in ("sms", "mms", "dlr"):
        status, raw = await put_callback(
            client, sandbox, kind, callback_body(f"https://pbx.example/{kind}")
        )
        assert status == 202 and raw == b""
    # application/json is accepted too; a second PUT replaces the first
    status, _ = await put_callback(
        client,
        sandbox,
        "sms",
        callback_body("http://pbx.example/sms2"),
        content_type="application/json",
    )
    assert status == 202
    expected = {"sms": "http://pbx.example/sms2", "mms": "https://pbx.example/mms"}
    expected["dlr"] = "https://pbx.example/dlr"
    assert sandbox.callbacks(KEY_A) == expected
    assert sandbox.callbacks(KEY_B) == {"sms": None, "mms": None, "dlr": None}
    with pytest.raises(KeyError):
        sandbox.callbacks("no-such-account")

    async with client.get(f"{sandbox.url}/_sandbox/callbacks") as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert listed == {KEY_A: expected, KEY_B: {"sms": None, "mms": None, "dlr": None}}

    # settings, not records: reset keeps them
    async with client.delete(f"{sandbox.url}/_sandbox/messages") as resp:
        assert resp.status == 200
    assert sandbox.callbacks(KEY_A) == expected


async def test_callbacks_put_rejects_bad_auth_and_bad_urls(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    good = callback_body("https://pbx.example/sms")
    wrong = aiohttp.encode_basic_auth(KEY_A, "wrong")
    for auth in (wrong, None):
        status, raw = await put_callback(client, sandbox, "sms", good, auth=auth)
        assert status == 401
        assert_errors(orjson.loads(raw), 401, "Invalid credentials")

    bad_bodies: list[Any] = [
        callback_body("ftp://pbx.example/sms"),
        callback_body("pbx.example/sms"),
        callback_body("https://"),
        callback_body(42),
        {"data": {"attributes": {}}},
        {"callback_url": "https://pbx.example/sms"},
        [],
    ]
    for body in bad_bodies:
        status, raw = await put_callback(client, sandbox, "sms", body)
        assert status == 422, body
        assert_errors(orjson.loads(raw), 422, "callback_url")
    assert sandbox.callbacks(KEY_A)["sms"] is None

    status, _ = await put_callback(client, sandbox, "voice", good)
    assert status == 404


async def test_inbound_goes_to_the_configured_callback(
    sandbox: Sandbox, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    # nothing configured: a gateway URL is still required
    async with client.post(f"{sandbox.url}/_sandbox/inbound", json={"body": "hi"}) as resp:
        assert resp.status == 400
    with pytest.raises(ValueError):
        await sandbox.post_inbound(body="hi")

    sms_url = f"{receiver.url}/sms-in"
    assert (await put_callback(client, sandbox, "sms", callback_body(sms_url)))[0] == 202
    async with client.post(f"{sandbox.url}/_sandbox/inbound", json={"body": "one"}) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["status"] == 200 and answer["gateway_url"] == sms_url
    result = await sandbox.post_inbound(body="two")
    assert result.status == 200 and result.gateway_url == sms_url
    assert [(path, p["data"]["attributes"]["body"]) for path, p in receiver.posts] == [
        ("/sms-in", "one"),
        ("/sms-in", "two"),
    ]
    assert receiver.posts[0][1]["data"]["attributes"]["message_callback_url"] == sms_url

    # MMS use the mms callback, not the sms one
    media = [{"name": "photo.jpg", "size": 100}]
    with pytest.raises(ValueError):
        await sandbox.post_inbound(kind="mms", media=media)
    assert (await put_callback(client, sandbox, "mms", callback_body(f"{receiver.url}/mms-in")))[
        0
    ] == 202
    result = await sandbox.post_inbound(kind="mms", media=media)
    assert result.status == 200 and receiver.posts[-1][0] == "/mms-in"

    # an explicit gateway URL still wins (existing callers)
    result = await sandbox.post_inbound(f"{receiver.url}/explicit", body="three")
    assert result.status == 200 and receiver.posts[-1][0] == "/explicit"

    # two accounts with an sms callback: name the account
    assert (
        await put_callback(
            client, sandbox, "sms", callback_body(f"{receiver.url}/b-in"), auth=AUTH_B
        )
    )[0] == 202
    with pytest.raises(ValueError, match="name the account"):
        await sandbox.post_inbound(body="whose?")
    request = {"body": "for b", "account": KEY_B}
    async with client.post(f"{sandbox.url}/_sandbox/inbound", json=request) as resp:
        assert resp.status == 200
    assert receiver.posts[-1][0] == "/b-in"
