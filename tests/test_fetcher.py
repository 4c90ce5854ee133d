"""MediaFetcher against real aiohttp servers on loopback (no mocked client).

Servers count both TCP connections and HTTP requests, so "blocked" means "never connected".
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from smsbridge.media_store import MediaStore
from workers.fetcher import (
    AddressGuard,
    ByteBudget,
    FetchError,
    FetchPolicy,
    MediaFetcher,
    parse_retry_after,
    redact_url,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK = FetchPolicy(allow_networks=("127.0.0.1/32",))
SECRET = "X-Amz-Signature=s3cr3tsig"


class LoopbackServer:
    """aiohttp app on loopback that counts TCP connections and requests."""

    def __init__(self, routes: dict[str, Handler], host: str) -> None:
        self.host = host
        self.connections = 0
        self.requests = 0
        self.app = web.Application(middlewares=[self._count])
        for path, handler in routes.items():
            self.app.router.add_get(path, handler)

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        return await handler(request)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, shutdown_timeout=0.5)
        await self.runner.setup()
        protocol_factory = self.runner.server
        assert protocol_factory is not None

        def counting_factory() -> asyncio.Protocol:
            self.connections += 1
            return protocol_factory()

        # The low-level equivalent of TCPSite, with a hook that sees every accepted socket.
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(counting_factory, self.host, 0)
        self.port: int = self.server.sockets[0].getsockname()[1]

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()
        await self.server.wait_closed()


ServeFn = Callable[..., Awaitable[LoopbackServer]]
MakeFetcher = Callable[..., Awaitable[MediaFetcher]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFn]:
    started: list[LoopbackServer] = []

    async def start(routes: dict[str, Handler], host: str = "127.0.0.1") -> LoopbackServer:
        server = LoopbackServer(routes, host)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media")


@pytest.fixture
async def make_fetcher(store: MediaStore) -> AsyncIterator[MakeFetcher]:
    made: list[MediaFetcher] = []

    async def make(policy: FetchPolicy = LOOPBACK) -> MediaFetcher:
        fetcher = MediaFetcher(store, policy)
        await fetcher.start()
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


def _bytes_handler(
    body: bytes, headers: dict[str, str] | None = None, status: int = 200
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    return handler


def _store_is_empty(store: MediaStore) -> bool:
    return list(store.root.iterdir()) == []


async def test_download_stored_byte_identical(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    body = os.urandom(300_000)
    server = await serve(
        {"/img": _bytes_handler(body, {"Content-Type": "image/png; charset=binary"})}
    )
    fetcher = await make_fetcher()

    media = await fetcher.fetch(server.url(f"/img?{SECRET}"), file_name="../cat.png")

    assert media.size == len(body)
    assert media.sha256 == hashlib.sha256(body).hexdigest()
    assert media.content_type == "image/png"
    assert media.file_name == "cat.png"
    found = store.get(media.key)
    assert found is not None
    assert found[0].read_bytes() == body
    assert found[1] == media
    assert len(list(store.root.iterdir())) == 2  # media + sidecar, no temp left
    assert server.requests == 1


async def test_declared_type_used_when_response_type_unusable(
    serve: ServeFn, make_fetcher: MakeFetcher
) -> None:
    server = await serve({"/x": _bytes_handler(b"GIF89a", {"Content-Type": "not a type"})})
    fetcher = await make_fetcher()
    media = await fetcher.fetch(server.url("/x"), declared_type="image/gif")
    assert media.content_type == "image/gif"
    media = await fetcher.fetch(server.url("/x"), declared_type="bogus")
    assert media.content_type == "application/octet-stream"


async def test_gzip_body_stored_decompressed(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    plain = b"hello MMS " * 10_000
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    server = await serve({"/z": _bytes_handler(gzip.compress(plain), headers)})
    media = await (await make_fetcher()).fetch(server.url("/z"))
    assert media.size == len(plain)
    assert media.sha256 == hashlib.sha256(plain).hexdigest()


async def test_loopback_blocked_by_default(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    server = await serve({"/img": _bytes_handler(b"secret internal data")})
    fetcher = await make_fetcher(FetchPolicy())

    with pytest.raises(FetchError) as info:
        await fetcher.fetch(server.url("/img"))

    assert info.value.transient is False
    assert info.value.reason == "blocked address 127.0.0.1"
    assert server.connections == 0
    assert server.requests == 0
    assert _store_is_empty(store)


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6 literal
        "[::1]",
        "127.1",  # short form that socket would map onto 127.0.0.1
        "2130706433",  # 127.0.0.1 as one integer
        "0x7f.0.0.1",  # not IP-looking for aiohttp: goes through the resolver
        "0.0.0.0",  # connects to the local host on Linux
        "[64:ff9b::7f00:1]",  # NAT64 form of 127.0.0.1
    ],
)
async def test_loopback_spellings_blocked(
    serve: ServeFn, make_fetcher: MakeFetcher, host: str
) -> None:
    server = await serve({"/": _bytes_handler(b"x")})
    fetcher = await make_fetcher(FetchPolicy())
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(server.url("/", host=host))
    assert info.value.transient is False
    assert info.value.reason.startswith("blocked address")
    assert server.connections == 0


async def test_localhost_blocked_by_resolver(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    server = await serve({"/": _bytes_handler(b"x")})
    fetcher = await make_fetcher(FetchPolicy())
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(server.url("/", host="localhost"))
    assert info.value.transient is False
    # Every address localhost resolves to (127.0.0.1, ::1) is refused.
    assert info.value.reason in ("blocked address 127.0.0.1", "blocked address ::1")
    assert server.connections == 0


async def test_localhost_resolver_keeps_only_allowed_address(
    serve: ServeFn, make_fetcher: MakeFetcher
) -> None:
    # localhost also resolves to ::1, which is not allowed: the resolver drops it and the
    # connection goes to 127.0.0.1.
    server = await serve({"/": _bytes_handler(b"via name")})
    media = await (await make_fetcher()).fetch(server.url("/", host="localhost"))
    assert media.size == len(b"via name")
    assert server.connections == 1


async def test_redirect_to_blocked_address_refused(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    inner = await serve({"/x": _bytes_handler(b"internal")}, host="127.0.0.2")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(inner.url("/x"))

    outer = await serve({"/start": redirect})
    fetcher = await make_fetcher()

    with pytest.raises(FetchError) as info:
        await fetcher.fetch(outer.url("/start"))

    assert info.value.transient is False
    assert info.value.reason == "blocked address 127.0.0.2"
    assert outer.requests == 1
    assert inner.connections == 0
    assert inner.requests == 0
    assert _store_is_empty(store)


async def test_relative_redirect_followed(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/final")

    server = await serve({"/start": redirect, "/final": _bytes_handler(b"landed")})
    media = await (await make_fetcher()).fetch(server.url("/start"))
    assert media.size == len(b"landed")
    assert server.requests == 2


async def test_redirect_to_other_scheme_refused(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    server = await serve({"/start": redirect})
    with pytest.raises(FetchError) as info:
        await (await make_fetcher()).fetch(server.url("/start"))
    assert info.value.reason == "unsupported scheme 'file'"
    assert info.value.transient is False


async def test_too_many_redirects(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    server = await serve({"/loop": loop})
    fetcher = await make_fetcher(FetchPolicy(allow_networks=("127.0.0.1/32",), max_redirects=2))
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(server.url("/loop"))
    assert info.value.reason == "too many redirects (over 2)"
    assert server.requests == 3  # the first request and two redirects, then it gives up


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "javascript:alert(1)", "/relative"]
)
async def test_non_http_scheme_refused(make_fetcher: MakeFetcher, url: str) -> None:
    with pytest.raises(FetchError) as info:
        await (await make_fetcher()).fetch(url)
    assert info.value.reason.startswith("unsupported scheme")
    assert info.value.transient is False


async def test_port_not_allowed(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    server = await serve({"/": _bytes_handler(b"x")})
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), allowed_ports=frozenset({443}))
    with pytest.raises(FetchError) as info:
        await (await make_fetcher(policy)).fetch(server.url("/"))
    assert info.value.reason == f"port not allowed: {server.port}"
    assert server.connections == 0


async def test_too_large_chunked_stream_aborted(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()  # no Content-Length: only counting can stop it
        await resp.prepare(request)
        try:
            for _ in range(1000):  # up to 64 MiB
                await resp.write(b"\x00" * 65536)
                sent += 65536
        except ConnectionResetError:
            pass  # the client hung up, as it should
        return resp

    server = await serve({"/big": endless})
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), max_bytes=1024 * 1024)
    with pytest.raises(FetchError) as info:
        await (await make_fetcher(policy)).fetch(server.url("/big"))
    assert info.value.reason == "too large: over 1048576 bytes"
    assert info.value.transient is False
    assert server.requests == 1  # not retried
    assert _store_is_empty(store)  # the partial temp file is gone
    await asyncio.sleep(0.05)
    assert sent < 16 * 1024 * 1024  # the download stopped early (socket buffers aside)


async def test_declared_content_length_over_cap_refused(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    server = await serve({"/big": _bytes_handler(b"x" * 2048)})
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), max_bytes=1024)
    with pytest.raises(FetchError) as info:
        await (await make_fetcher(policy)).fetch(server.url("/big"))
    assert info.value.reason == "too large: over 1024 bytes"
    assert _store_is_empty(store)


async def test_gzip_bomb_counted_after_decompression(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    bomb = gzip.compress(b"\x00" * (32 * 1024 * 1024), compresslevel=9)
    cap = 1024 * 1024
    assert len(bomb) < cap  # on the wire it is well under the cap
    headers = {"Content-Encoding": "gzip", "Content-Type": "image/jpeg"}
    server = await serve({"/bomb": _bytes_handler(bomb, headers)})
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), max_bytes=cap)
    with pytest.raises(FetchError) as info:
        await (await make_fetcher(policy)).fetch(server.url("/bomb"))
    assert info.value.reason == f"too large: over {cap} bytes"
    assert _store_is_empty(store)


@pytest.mark.parametrize("status", [403, 404])
async def test_client_errors_are_permanent(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore, status: int
) -> None:
    server = await serve({"/gone": _bytes_handler(b"<Error/>", status=status)})
    with pytest.raises(FetchError) as info:
        await (await make_fetcher()).fetch(server.url(f"/gone?{SECRET}"))
    assert info.value.reason == f"HTTP {status}"
    assert info.value.transient is False
    assert server.requests == 1  # never retried
    assert "s3cr3t" not in str(info.value) + repr(info.value)
    assert _store_is_empty(store)


async def test_503_twice_then_200(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls <= 2:
            # Retry-After 0: retry at once instead of the exponential backoff (>= 0.6 s).
            return web.Response(status=503, headers={"Retry-After": "0"})
        return web.Response(body=b"finally", content_type="image/gif")

    server = await serve({"/flaky": flaky})
    started = time.monotonic()
    media = await (await make_fetcher()).fetch(server.url("/flaky"))
    assert media.size == len(b"finally")
    assert media.content_type == "image/gif"
    assert server.requests == 3
    assert time.monotonic() - started < 0.5  # Retry-After was honoured


async def test_retries_exhausted_is_transient(serve: ServeFn, make_fetcher: MakeFetcher) -> None:
    server = await serve({"/down": _bytes_handler(b"", {"Retry-After": "0"}, status=503)})
    with pytest.raises(FetchError) as info:
        await (await make_fetcher()).fetch(server.url("/down"))
    assert info.value.reason == "HTTP 503"
    assert info.value.transient is True
    assert server.requests == 3  # policy.attempts


async def test_slow_server_times_out_transient(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), timeout=5)
        return web.Response(body=b"too late")

    server = await serve({"/slow": slow})
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), read_timeout=0.2, attempts=2)
    try:
        with pytest.raises(FetchError) as info:
            await (await make_fetcher(policy)).fetch(server.url("/slow"))
    finally:
        release.set()
    assert info.value.reason == "timeout"
    assert info.value.transient is True
    assert server.requests == 2
    assert _store_is_empty(store)


async def test_server_disconnect_is_transient(make_fetcher: MakeFetcher) -> None:
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # no response at all

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = FetchPolicy(allow_networks=("127.0.0.1/32",), attempts=2)
    try:
        with pytest.raises(FetchError) as info:
            await (await make_fetcher(policy)).fetch(f"http://127.0.0.1:{port}/x")
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.reason == "connection error: ServerDisconnectedError"
    assert info.value.transient is True
    # Each tenacity attempt is two connections: aiohttp itself resends an idempotent request
    # once after ServerDisconnectedError (the keep-alive race), then fetch() retries.
    assert accepted == 4


async def test_fetch_requires_start(store: MediaStore) -> None:
    with pytest.raises(RuntimeError):
        await MediaFetcher(store).fetch("http://example.com/x")


def test_redact_url() -> None:
    url = f"https://user:pw@bucket.s3.amazonaws.com/media/a%20b.jpg?{SECRET}#frag"
    assert redact_url(url) == "https://bucket.s3.amazonaws.com/media/a%20b.jpg"
    assert redact_url("http://h:8080/p?q=1") == "http://h:8080/p"
    assert redact_url("http://[::1/") == "<invalid url>"


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("3600") == 5.0  # capped
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("²") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("Wed, 21 Oct 2999 07:28:00 GMT") == 5.0


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # CGNAT
        ("0.0.0.0", False),
        ("224.0.1.1", False),  # multicast
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::a00:1", False),  # IPv4-compatible
        ("64:ff9b::a00:1", False),  # NAT64
        ("64:ff9b:1::1", False),
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:0:a00:1::1", False),  # Teredo
        ("ff02::1", False),
        ("not-an-ip", False),
    ],
)
def test_address_guard_default(address: str, allowed: bool) -> None:
    assert AddressGuard().allows(address) is allowed


def test_address_guard_opt_in() -> None:
    guard = AddressGuard(("127.0.0.1/32", "fd00::/8"))
    assert guard.allows("127.0.0.1")
    assert guard.allows("::ffff:127.0.0.1")  # judged after unwrapping
    assert guard.allows("fd12::1")
    assert not guard.allows("127.0.0.2")
    assert not guard.allows("10.0.0.1")


async def test_byte_budget_is_shared_and_the_item_over_it_is_refused(
    serve: ServeFn, make_fetcher: MakeFetcher, store: MediaStore
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()  # no Content-Length: only counting can stop it
        await resp.prepare(request)
        try:
            for _ in range(10):
                await resp.write(b"\x01" * 10_000)
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp

    server = await serve({"/a": chunked, "/b": chunked, "/declared": _bytes_handler(b"x" * 60_000)})
    fetcher = await make_fetcher()
    budget = ByteBudget(150_000)
    stored = await fetcher.fetch(server.url("/a"), budget=budget)
    assert stored.size == 100_000 and budget.used == 100_000
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(server.url("/b"), budget=budget)
    assert "exceed 150000 bytes" in info.value.reason and info.value.transient is False
    assert budget.used == 100_000  # the refused item gave back what it had taken
    with pytest.raises(FetchError):  # a declared size over what is left: refused up front
        await fetcher.fetch(server.url("/declared"), budget=budget)
    assert server.requests == 3  # not retried
    # no partial file: only the stored item and its sidecar
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        [stored.key, f"{stored.key}.json"]
    )
