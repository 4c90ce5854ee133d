"""The edge under hostile input: forged X-Forwarded-For lines, quarantine floods, MMS with too
many or too large media and a full disk, bodies that cannot be decoded, slow clients, log
floods, unsafe settings and delivery-receipt tokens that never expire.

Everything runs over real HTTP against a gateway started as `smsbridge run` starts it (in
process with `tests.harness.bridge`, or as a real `smsbridge gateway` process when its logs are
what is tested), with the real RabbitMQ behind it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from smsbridge import receipt_token, topology
from smsbridge.config import Config, parse_config
from smsbridge.ops import send
from smsbridge.sandbox import MediaSpec, Sandbox, inbound_mms
from tests.harness import (
    bridge,
    drain,
    fixture,
    free_port,
    listen,
    make_config,
    queue_depth,
    webhook_url,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"test-dlr-secret-0123456789"  # tests.harness.make_config's dlr_secret
FLOWROUTE_IP = "52.88.246.140"


def dlr_url(config: Config, token: str) -> str:
    return f"http://{config.gateway.listen}/flowroute/dlr/{token}"


# What tests/test_edge.py expects of gateway.quarantine (spelled out: they are the spec).
KEEP_BYTES = 32 * 1024
QUARANTINE_RATE = 20
QUARANTINE_BURST = 20
H_ORIGINAL_SIZE = "x-smsbridge-original-size"
H_TRUNCATED = "x-smsbridge-truncated"


def token_for(request_id: str = "r1", expires_at: int | None = None) -> str:
    if expires_at is None:  # the default lifetime
        ref = receipt_token.ReceiptRef(request_id, "flowroute", 1)
    else:
        ref = receipt_token.ReceiptRef(request_id, "flowroute", 1, expires_at)
    return receipt_token.sign(SECRET, ref)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Any = None
) -> tuple[int, bytes]:
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.read()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- 1. X-Forwarded-For sent as several lines ------------------------------------------------


async def test_forged_first_forwarded_for_line_does_not_pass_the_allow_list(
    amqp_url: str, tmp_path: Path
) -> None:
    config = make_config(
        amqp_url,
        tmp_path / "media",
        extra_gateway=f'allow_ips = ["{FLOWROUTE_IP}/32"]\ntrusted_proxies = ["127.0.0.1"]',
    )
    body = fixture("inbound-sms.compact.json")
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        # The attacker (203.0.113.9) sends its own X-Forwarded-For line naming Flowroute;
        # the proxy (127.0.0.1, trusted) appends a second line with the real client.
        forged = CIMultiDict(
            [("X-Forwarded-For", FLOWROUTE_IP), ("X-Forwarded-For", "203.0.113.9")]
        )
        status, _ = await post(session, webhook_url(config), body, forged)
        assert status == 403
        # Flowroute itself through the same proxy, after an earlier hop of its own.
        honest = CIMultiDict(
            [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-For", FLOWROUTE_IP)]
        )
        status, _ = await post(session, webhook_url(config), body, honest)
        assert status == 200


# --- 2. The quarantine cannot fill the broker's disk ------------------------------------------


async def test_refused_source_gets_403_and_nothing_is_kept(amqp_url: str, tmp_path: Path) -> None:
    config = make_config(
        amqp_url, tmp_path / "media", extra_gateway=f'allow_ips = ["{FLOWROUTE_IP}"]'
    )
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        for path in ("flowrouteinbound", "nosuchprefix", "some/other/path"):
            status, _ = await post(
                session, f"http://{config.gateway.listen}/{path}", b"{not json" * 1000
            )
            assert status == 403, path
    assert await queue_depth(amqp_url, topology.QUARANTINE_QUEUE) == 0


async def test_refused_body_is_kept_truncated_with_its_original_size(config: Config) -> None:
    amqp = config.broker.addresses()[0]
    big = b"<" + bytes(range(256)) * 390 + b"x" * 159  # 100,000 bytes, not JSON
    small = b"{not json"
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        assert (await post(session, webhook_url(config), big))[0] == 400
        assert (await post(session, webhook_url(config), small))[0] == 400
        unknown = f"http://{config.gateway.listen}/nosuchprefix"
        assert (await post(session, unknown, big[:50_000]))[0] == 404
    kept = await drain(amqp, topology.QUARANTINE_QUEUE)
    assert len(kept) == 3
    by_status = [(m.headers or {}).get("x-smsbridge-http-status") for m in kept]
    assert by_status == [400, 400, 404]
    first, second, third = kept
    assert first.body == big[:KEEP_BYTES] and len(first.body) == 32 * 1024
    assert (first.headers or {})[H_ORIGINAL_SIZE] == 100_000
    assert (first.headers or {})[H_TRUNCATED] is True
    assert second.body == small
    assert (second.headers or {})[H_ORIGINAL_SIZE] == len(small)
    assert (second.headers or {})[H_TRUNCATED] is False
    assert len(third.body) == 32 * 1024
    assert (third.headers or {})[H_ORIGINAL_SIZE] == 50_000


async def test_quarantine_keeps_about_20_bodies_a_second_and_counts_the_rest(
    config: Config,
) -> None:
    amqp = config.broker.addresses()[0]
    n = 300
    dropped_before = metric("smsbridge_quarantine_total", outcome="rate_limited")
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        started = time.monotonic()
        results = await asyncio.gather(
            *(post(session, webhook_url(config), b"{not json %d" % i) for i in range(n))
        )
        elapsed = time.monotonic() - started
    assert {status for status, _ in results} == {400}  # every client still gets its answer
    kept = len(await drain(amqp, topology.QUARANTINE_QUEUE))
    dropped = metric("smsbridge_quarantine_total", outcome="rate_limited") - dropped_before
    assert kept <= QUARANTINE_BURST + QUARANTINE_RATE * elapsed + 1, (kept, elapsed)
    assert kept >= QUARANTINE_BURST  # the first burst is kept
    assert dropped == n - kept


# --- 3. Media: items, bytes and concurrency per MMS; a full disk ------------------------------


class MediaServer:
    """Serves `?size=N` bytes (chunked: no Content-Length) after `?delay=S`; counts how many
    downloads are in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.requests = 0
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1000"))
        delay = float(request.query.get("delay", "0"))
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(delay)
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                for start in range(0, size, 16384):
                    await resp.write(b"\x89" * min(16384, size - start))
                await resp.write_eof()
            except ConnectionError:
                pass  # the fetcher hung up (refused item): expected
            return resp
        finally:
            self.in_flight -= 1

    def url(self, name: str, size: int, delay: float = 0.0) -> str:
        return f"http://127.0.0.1:{self.port}/m/{name}?size={size}&delay={delay}"


@pytest.fixture
async def media_server() -> AsyncIterator[MediaServer]:
    server = MediaServer()
    app = web.Application()
    app.router.add_get("/m/{name}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


def mms(specs: list[tuple[str, str]]) -> dict[str, Any]:
    return inbound_mms(
        "12025551234",
        "12065550142",
        "pictures",
        [MediaSpec(url, name, "image/png", 0) for name, url in specs],
    )


def stored_files(media_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(media keys, sidecars, anything else: temp files, orphans)."""
    names = sorted(p.name for p in media_dir.iterdir())
    sidecars = [n for n in names if n.endswith(".json")]
    keys = [n for n in names if not n.endswith(".json") and not n.startswith(".")]
    other = [n for n in names if n not in sidecars and n not in keys]
    return keys, sidecars, other


async def mms_through_bridge(config: Config, payload: dict[str, Any]) -> dict[str, Any]:
    amqp = config.broker.addresses()[0]
    async with bridge(config), listen(amqp, pattern="inbound.*") as events:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, webhook_url(config), orjson.dumps(payload)))[0] == 200
        _, message = await events.next_json(timeout=30)
    return message


async def test_media_items_over_max_items_get_an_error_and_the_message_goes_on(
    amqp_url: str, tmp_path: Path, media_server: MediaServer
) -> None:
    media_dir = tmp_path / "media"
    config = make_config(amqp_url, media_dir, extra_media="max_items = 2")
    specs = [(f"p{i}.png", media_server.url(f"p{i}", 1000)) for i in range(6)]
    message = await mms_through_bridge(config, mms(specs))
    media = message["media"]
    assert [m["file_name"] for m in media] == [name for name, _ in specs]  # all, in order
    assert all(m["url"] and m["error"] is None for m in media[:2])
    for item in media[2:]:
        assert item["url"] is None
        assert "over 2 media items" in item["error"]
    assert media_server.requests == 2
    keys, _, other = stored_files(media_dir)
    assert len(keys) == 2 and other == []


async def test_media_downloads_of_one_message_are_bounded(
    amqp_url: str, tmp_path: Path, media_server: MediaServer
) -> None:
    config = make_config(amqp_url, tmp_path / "media", extra_media="fetch_concurrency = 2")
    specs = [(f"s{i}.png", media_server.url(f"s{i}", 5000, delay=0.3)) for i in range(8)]
    message = await mms_through_bridge(config, mms(specs))
    assert all(m["url"] and m["error"] is None for m in message["media"])
    assert media_server.peak == 2  # 8 items, never more than 2 downloads at once


async def test_media_bytes_per_message_are_capped_and_partial_files_removed(
    amqp_url: str, tmp_path: Path, media_server: MediaServer
) -> None:
    media_dir = tmp_path / "media"
    config = make_config(
        amqp_url,
        media_dir,
        extra_media="max_message_bytes = 250000\nfetch_concurrency = 1",
    )
    specs = [(f"b{i}.png", media_server.url(f"b{i}", 100_000)) for i in range(3)]
    specs.append(("tiny.png", media_server.url("tiny", 10_000)))
    message = await mms_through_bridge(config, mms(specs))
    first, second, third, tiny = message["media"]
    assert first["size"] == second["size"] == 100_000 and first["url"] and second["url"]
    assert third["url"] is None and "exceed 250000 bytes" in third["error"]
    assert tiny["url"] and tiny["size"] == 10_000  # still fits in what is left
    keys, sidecars, other = stored_files(media_dir)
    assert len(keys) == 3 and len(sidecars) == 3 and other == []  # no partial file
    assert sum((media_dir / k).stat().st_size for k in keys) <= 250_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs): writes past it fail with ENOSPC, as on a full disk.

    Needs root (CAP_SYS_ADMIN) to mount; skipped elsewhere, where the portable test below
    still covers the OSError path.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


async def test_full_disk_fails_only_that_item_and_leaves_no_file_behind(
    amqp_url: str, small_disk: Path, media_server: MediaServer
) -> None:
    media_dir = small_disk / "media"
    config = make_config(amqp_url, media_dir, extra_media="fetch_concurrency = 1")
    specs = [
        ("before.png", media_server.url("before", 300_000)),
        ("huge.png", media_server.url("huge", 2_000_000)),  # 2 MB on a 1 MiB disk
        ("after.png", media_server.url("after", 100_000)),
    ]
    message = await mms_through_bridge(config, mms(specs))
    before, huge, after = message["media"]
    assert before["url"] and before["size"] == 300_000
    assert huge["url"] is None and "No space left on device" in huge["error"]
    assert after["url"] and after["size"] == 100_000  # the partial file was removed: room again
    keys, sidecars, other = stored_files(media_dir)
    assert sorted(keys) == sorted([before["url"].rsplit("/", 1)[1], after["url"].rsplit("/", 1)[1]])
    assert len(sidecars) == 2 and other == []


async def test_unwritable_media_dir_fails_the_items_not_the_message(
    amqp_url: str, tmp_path: Path, media_server: MediaServer
) -> None:
    """The portable variant: a file where the media directory should be. Any user gets an
    OSError (ENOTDIR) there, even root, for whom a read-only mode would not stop writes."""
    media_dir = tmp_path / "media"
    config = make_config(amqp_url, media_dir)
    amqp = config.broker.addresses()[0]
    payload = mms([("a.png", media_server.url("a", 1000)), ("b.png", media_server.url("b", 1))])
    async with bridge(config), listen(amqp, pattern="inbound.*") as events:
        shutil.rmtree(media_dir)
        media_dir.write_bytes(b"not a directory")
        async with aiohttp.ClientSession() as session:
            assert (await post(session, webhook_url(config), orjson.dumps(payload)))[0] == 200
        _, message = await events.next_json(timeout=30)
    assert message["body"] == "pictures"
    for item in message["media"]:
        assert item["url"] is None
        assert "local storage error" in item["error"]


# --- 4. Undecodable bodies and odd values are 4xx, never 500 ----------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_body_that_is_not_what_its_content_encoding_says_is_400(
    config: Config, encoding: str
) -> None:
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        for url in (webhook_url(config), dlr_url(config, token_for())):
            headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
            status, body = await post(session, url, b"this is not compressed", headers)
            assert status == 400, (url, body)
        # A body that really is compressed still works.
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        raw = gzip.compress(fixture("inbound-sms.compact.json"))
        assert (await post(session, webhook_url(config), raw, headers))[0] == 200


@pytest.mark.parametrize("token", ["abc.%C3%A9", "%C3%A9.abc", "%E2%82%AC%E2%82%AC.%C2%B2"])
async def test_non_ascii_receipt_token_is_403(config: Config, token: str) -> None:
    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        status, _ = await post(session, dlr_url(config, token), fixture("dlr.jsonapi.json"))
    assert status == 403


async def test_receipt_level_that_is_not_a_plain_number_is_422(config: Config) -> None:
    def receipt(level: object) -> bytes:
        attributes = {"level": level, "status": "delivered", "status_code": 1000}
        return orjson.dumps({"type": "delivery_receipt", "id": "mdr2-1", "attributes": attributes})

    async with bridge(config, workers=()), aiohttp.ClientSession() as session:
        for level in ("²", "9" * 5000, "١", "0" * 10):
            status, body = await post(session, dlr_url(config, token_for()), receipt(level))
            assert status == 422, (level[:10], body)
            assert b"level" in body
        assert (await post(session, dlr_url(config, token_for()), receipt("2")))[0] == 200


# --- 5. Slow clients ----------------------------------------------------------------------------


async def dribble(
    port: int, head: bytes, piece: bytes, every: float, give_up: float
) -> tuple[float, bytes]:
    """Send `head`, then `piece` every `every` s until the server answers or closes.

    Returns (seconds until then, what the server sent: b"" for a plain close); inf when
    the server did neither within `give_up` seconds.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(head)
        while time.monotonic() - started < give_up:
            try:
                data = await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                writer.write(piece)
                await writer.drain()
                continue
            return time.monotonic() - started, data
        return math.inf, b""
    except (ConnectionError, OSError):
        return time.monotonic() - started, b""
    finally:
        writer.close()


async def test_clients_that_dribble_their_headers_are_disconnected(
    amqp_url: str, tmp_path: Path
) -> None:
    config = make_config(amqp_url, tmp_path / "media", extra_gateway="header_timeout = 1.0")
    head = b"POST /flowrouteinbound HTTP/1.1\r\nHost: gateway\r\n"
    async with bridge(config, workers=()):
        results = await asyncio.gather(
            *(dribble(config.gateway.port, head, b"X-Slow: 1\r\n", 0.2, 8.0) for _ in range(50))
        )
        # The gateway still serves everyone else.
        async with aiohttp.ClientSession() as session:
            status, _ = await post(
                session, webhook_url(config), fixture("inbound-sms.compact.json")
            )
            assert status == 200
    slowest = max(seconds for seconds, _ in results)
    assert all(data == b"" for _, data in results)  # closed, nothing answered
    assert slowest < 1.0 + 1.5, slowest


@pytest.mark.parametrize("path", ["webhook", "dlr"])
async def test_clients_that_dribble_their_body_get_408(
    amqp_url: str, tmp_path: Path, path: str
) -> None:
    config = make_config(amqp_url, tmp_path / "media", extra_gateway="body_timeout = 1.0")
    target = "/flowrouteinbound" if path == "webhook" else f"/flowroute/dlr/{token_for()}"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    ).encode()
    async with bridge(config, workers=()):
        seconds, answer = await dribble(config.gateway.port, head, b" ", 0.2, 8.0)
    assert seconds < 1.0 + 1.5, seconds
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]


# --- 6. A hostile load gives quiet, rate-limited log lines; the metrics stay exact ------------


def spawn_gateway(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SMSBRIDGE_CONFIG"}
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "smsbridge.cli", "--config", str(config_path), "gateway"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@asynccontextmanager
async def gateway_process(
    amqp_url: str, tmp_path: Path, extra_gateway: str = ""
) -> AsyncIterator[tuple[str, Path]]:
    """`smsbridge --config <toml> gateway` as a real process; yields (base URL, log file)."""
    port = free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[broker]
url = "{amqp_url}"

[gateway]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
dlr_secret = "{SECRET.decode()}"
{extra_gateway}

[media]
dir = "{tmp_path / "media"}"

[logging]
level = "info"
format = "json"

[[providers]]
name = "flowroute"
access_key = "sandbox-access"
secret_key = "sandbox-secret"

[[numbers]]
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
destination = "100"
"""
    )
    log_path = tmp_path / "gateway.log"
    proc = spawn_gateway(path, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.1)
        yield base, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for text in path.read_text().splitlines():
        if text.strip():
            lines.append(json.loads(text))  # every line is JSON, tracebacks included
    return lines


def scrape(metrics_text: str, name: str, label: str, value: str) -> float:
    wanted = f'{name}{{{label}="{value}"}} '
    for line in metrics_text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_hostile_load_gives_one_quiet_line_per_refusal_rate_limited(
    amqp_url: str, tmp_path: Path
) -> None:
    each = 400  # five kinds: 2,000 bad requests
    async with gateway_process(amqp_url, tmp_path) as (base, log_path):
        port = int(base.rsplit(":", 1)[1])
        gate = asyncio.Semaphore(50)
        statuses: dict[str, list[int]] = {}
        bad_level = orjson.dumps(
            {"type": "delivery_receipt", "id": "mdr2-1", "attributes": {"level": "²"}}
        )
        good_token = token_for()

        async def one(session: aiohttp.ClientSession, kind: str, i: int) -> None:
            async with gate:
                if kind == "malformed":
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(
                        b"POST /flowrouteinbound HTTP/1.1\r\nContent-Length: x%d\r\n\r\n" % i
                    )
                    answer = await reader.read(100)
                    writer.close()
                    statuses.setdefault(kind, []).append(int(answer.split(b" ")[1]))
                    return
                url, body, headers = {
                    "bad_json": (f"{base}/flowrouteinbound", b"{nope %d" % i, None),
                    "bad_gzip": (
                        f"{base}/flowrouteinbound",
                        b"not gzip %d" % i,
                        {"Content-Encoding": "gzip"},
                    ),
                    "bad_token": (f"{base}/flowroute/dlr/forged{i}.token", b"{}", None),
                    "bad_level": (f"{base}/flowroute/dlr/{good_token}", bad_level, None),
                }[kind]
                status, _ = await post(session, url, body, headers)
                statuses.setdefault(kind, []).append(status)

        kinds = ["bad_json", "bad_gzip", "bad_token", "bad_level", "malformed"]
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, k, i) for i in range(each) for k in kinds))
            elapsed = time.monotonic() - started
            async with session.get(f"{base}/metrics") as resp:
                metrics_text = await resp.text()
        await asyncio.sleep(1.5)  # the last windows end: their summary lines are written
    assert {k: sorted(set(v)) for k, v in statuses.items()} == {
        "bad_json": [400],
        "bad_gzip": [400],
        "bad_token": [403],
        "bad_level": [422],
        "malformed": [400],
    }
    # The metrics count every refusal, whatever the logs left out.
    requests = "smsbridge_webhook_requests_total"
    assert scrape(metrics_text, requests, "outcome", "bad_json") == each
    assert scrape(metrics_text, requests, "outcome", "bad_body") == each
    assert scrape(metrics_text, "smsbridge_receipts_total", "outcome", "forbidden") == each
    assert scrape(metrics_text, "smsbridge_receipts_total", "outcome", "not_receipt") == each
    http_refused = scrape(metrics_text, "smsbridge_http_refused_total", "reason", "BadHttpMessage")
    assert http_refused == each

    lines = log_lines(log_path)
    assert [ln for ln in lines if ln["level"] in ("error", "critical")] == []
    assert [ln for ln in lines if "exception" in ln] == []  # no traceback anywhere
    written: dict[str, int] = {}
    suppressed: dict[str, int] = {}
    for line in lines:
        if line["event"] == "webhook refused":
            key = f"webhook {line['outcome']}"
        elif line["event"] == "delivery receipt refused":
            key = f"dlr {line['outcome']}"
        elif line["event"] == "http request refused":
            key = f"http {line['reason']}"
        elif line["event"] == "log lines suppressed":
            suppressed[line["key"]] = suppressed.get(line["key"], 0) + line["suppressed"]
            continue
        else:
            continue
        assert line["level"] == "warning"
        written[key] = written.get(key, 0) + 1
    keys = ["webhook bad_json", "webhook bad_body", "dlr forbidden", "dlr not_receipt"]
    keys.append("http BadHttpMessage")
    for key in keys:
        # one line per refusal, at most 5 a second; the summaries say how many were left out
        assert written[key] + suppressed.get(key, 0) == each, key
        assert written[key] <= 5 * (math.ceil(elapsed) + 1), (key, written[key], elapsed)
    assert sum(written.values()) < 2 * each  # from 2,000 refusals


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collected:
    """Stands in for the throttle's summary logger: keeps what it was asked to write."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_throttle_allows_n_a_second_per_key_and_reports_the_rest_exactly() -> None:
    from smsbridge.logs import Throttle

    clock, summaries = FakeClock(), Collected()
    throttle = Throttle(per_second=3, logger=summaries, clock=clock)  # no loop: lazy summaries
    allowed = [throttle.allow("a") for _ in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert throttle.allow("b")  # each key has its own budget
    clock.now += 0.5
    assert not throttle.allow("a")  # same window
    clock.now += 0.6  # the window is over: the next line comes with the summary first
    assert throttle.allow("a")
    assert summaries.lines == [
        ("log lines suppressed", {"key": "a", "suppressed": 8, "written": 3, "window_seconds": 1.0})
    ]
    throttle.allow("a"), throttle.allow("a"), throttle.allow("a")
    throttle.flush()  # e.g. at shutdown
    assert summaries.lines[-1][1]["suppressed"] == 1
    throttle.flush()
    assert len(summaries.lines) == 2  # nothing twice


async def test_throttle_summary_is_written_when_the_window_ends_even_if_nothing_follows() -> None:
    from smsbridge.logs import Throttle

    summaries = Collected()
    throttle = Throttle(per_second=1, window=0.2, logger=summaries)
    assert [throttle.allow("k") for _ in range(4)] == [True, False, False, False]
    await asyncio.sleep(0.4)
    assert summaries.lines == [
        ("log lines suppressed", {"key": "k", "suppressed": 3, "written": 1, "window_seconds": 0.2})
    ]


def test_quarantine_token_bucket() -> None:
    from gateway.quarantine import TokenBucket

    clock = FakeClock()
    bucket = TokenBucket(rate=20, burst=20, clock=clock)
    assert sum(bucket.take() for _ in range(100)) == 20  # the burst
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(100)) == 10  # 20 a second
    clock.now += 60
    assert sum(bucket.take() for _ in range(100)) == 20  # never more than the burst saved


# --- 7. Unsafe settings are said out loud ------------------------------------------------------

SAFE = """
[gateway]
listen = "127.0.0.1:8080"
public_url = "https://pbx.example.com"
dlr_secret = "0123456789abcdef-secret"
{gateway}

[[providers]]
name = "flowroute"
access_key = "ak"
secret_key = "sk"
"""


def unsafe(gateway: str = "", **replace: str) -> list[str]:
    text = SAFE.format(gateway=gateway)
    for old, new in replace.items():
        text = text.replace(old, new)
    from smsbridge import safety

    return safety.warnings(parse_config(text, env={}))


def test_safe_configuration_has_no_warnings() -> None:
    assert unsafe() == []
    assert unsafe('allow_ips = ["52.88.246.140"]') == []


def test_public_listener_without_allow_ips_is_a_warning() -> None:
    for address in ("0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080", "gateway.internal:8080"):
        [warning] = unsafe(**{"127.0.0.1:8080": address})
        assert address in warning and "gateway.allow_ips is empty" in warning
        assert "anyone" in warning
    assert unsafe('allow_ips = ["52.88.246.140"]', **{"127.0.0.1:8080": "0.0.0.0:8080"}) == []
    assert unsafe(**{"127.0.0.1:8080": "localhost:8080"}) == []


@pytest.mark.parametrize("network", ["0.0.0.0/0", "::/0", "10.0.0.0/0"])
def test_trusted_proxy_covering_everything_is_a_warning(network: str) -> None:
    [warning] = unsafe(f'trusted_proxies = ["10.0.0.5", "{network}"]')
    assert network in warning and "X-Forwarded-For" in warning
    assert unsafe('trusted_proxies = ["10.0.0.0/8"]') == []


def test_receipts_off_is_a_warning_naming_what_to_set() -> None:
    [warning] = unsafe(**{'dlr_secret = "0123456789abcdef-secret"': ""})
    assert "delivery receipts are off" in warning and "gateway.dlr_secret is not set" in warning
    [warning] = unsafe(**{'public_url = "https://pbx.example.com"': ""})
    assert "gateway.public_url is not set" in warning
    # without providers nothing is sent, so there is nothing to receive receipts for
    text = SAFE.format(gateway="").split("[[providers]]")[0].replace("dlr_secret", "# ")
    from smsbridge import safety

    assert safety.warnings(parse_config(text, env={})) == []


def test_config_check_prints_the_warnings_and_still_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.toml"
    path.write_text(
        SAFE.format(gateway='trusted_proxies = ["0.0.0.0/0"]').replace("127.0.0.1", "0.0.0.0")
    )
    env = {k: v for k, v in os.environ.items() if k != "SMSBRIDGE_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "smsbridge.cli", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gateway"]["trusted_proxies"] == ["0.0.0.0/0"]
    lines = done.stderr.splitlines()
    assert lines[-1] == "configuration OK"
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert "gateway.allow_ips is empty" in warnings[0]
    assert "0.0.0.0/0" in warnings[1]


async def test_components_log_the_warnings_at_start(amqp_url: str, tmp_path: Path) -> None:
    async with gateway_process(amqp_url, tmp_path, extra_gateway='trusted_proxies = ["::/0"]') as (
        _,
        log_path,
    ):
        pass
    unsafe_lines = [ln for ln in log_lines(log_path) if ln["event"] == "unsafe configuration"]
    assert len(unsafe_lines) == 1
    assert unsafe_lines[0]["level"] == "warning"
    assert "::/0" in unsafe_lines[0]["problem"]


# --- 8. Delivery-receipt tokens expire --------------------------------------------------------


def test_token_carries_an_expiry_and_is_refused_after_it() -> None:
    now = 1_800_000_000
    ref = receipt_token.ReceiptRef("req-1", "flowroute", 2, now + 60)
    token = receipt_token.sign(SECRET, ref)
    assert receipt_token.verify(SECRET, token, now=now) == ref
    assert receipt_token.verify(SECRET, token, now=now + 60) == ref
    with pytest.raises(receipt_token.BadToken, match="expired"):
        receipt_token.verify(SECRET, token, now=now + 61)
    payload = orjson.loads(_unb64(token.split(".")[0]))
    assert payload == ["req-1", "flowroute", 2, now + 60, 1]  # the last: the segments
    # small enough for a URL: a UUID request id gives well under 200 characters
    uuid_token = receipt_token.sign(
        SECRET, receipt_token.ReceiptRef("0f8a3c1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b", "flowroute", 1)
    )
    assert len(uuid_token) < 160


def test_altered_expiry_and_v1_tokens_are_refused() -> None:
    now = 1_800_000_000
    token = receipt_token.sign(SECRET, receipt_token.ReceiptRef("r", "a", 1, now + 60))
    payload, mac = token.split(".")
    later = _b64(orjson.dumps(["r", "a", 1, now + 10**9, 1]))
    with pytest.raises(receipt_token.BadToken, match="bad signature"):
        receipt_token.verify(SECRET, f"{later}.{mac}", now=now)
    with pytest.raises(receipt_token.BadToken, match="bad signature"):
        receipt_token.verify(SECRET, v1_token("r", "a", 1), now=now)
    with pytest.raises(receipt_token.BadToken, match="malformed"):
        receipt_token.verify(SECRET, f"{payload}.{mac}é", now=now)


def v1_token(request_id: str, account: str, attempts: int) -> str:
    """A token as the previous version signed it: no expiry, MAC domain smsbridge-dlr-v1."""
    payload = _b64(orjson.dumps([request_id, account, attempts]))
    mac = hmac.new(SECRET, b"smsbridge-dlr-v1:" + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


async def test_expired_and_v1_tokens_get_403_and_publish_nothing(config: Config) -> None:
    amqp = config.broker.addresses()[0]
    expired = token_for("old", expires_at=int(time.time()) - 1)
    receipt = fixture("dlr.jsonapi.json")
    async with bridge(config, workers=()), listen(amqp, pattern="status.*") as events:
        async with aiohttp.ClientSession() as session:
            for token in (expired, v1_token("old", "flowroute", 1)):
                assert (await post(session, dlr_url(config, token), receipt))[0] == 403
            assert await events.quiet(0.5) == []
            assert (await post(session, dlr_url(config, token_for("new")), receipt))[0] == 200
        _, event = await events.next_json()
    assert event["id"] == "new"


async def test_outbound_worker_signs_tokens_that_expire_after_max_age_plus_window(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    config = make_config(
        amqp_url,
        tmp_path / "media",
        api_url=sandbox.api_url,
        extra_gateway="receipt_window_seconds = 1000",
    )
    async with bridge(config, workers=("outbound",)), listen(amqp_url, pattern="status.*") as ev:
        sent_at = time.time()
        await send(amqp_url, {"id": "exp-1", "to": "12065550142", "extension": "100", "body": "x"})
        while True:
            _, event = await ev.next_json(timeout=20)
            if event["id"] == "exp-1" and event["status"] == "delivered":
                break
    [message] = sandbox.messages
    token = message.attributes["dlr_callback"].rsplit("/", 1)[1]
    request_id, account, attempts, expires_at, segments = orjson.loads(_unb64(token.split(".")[0]))
    assert (request_id, account, attempts, segments) == ("exp-1", "flowroute", 1, 1)
    # max_age_seconds (30, tests.harness) + receipt_window_seconds (1000) after the send
    assert sent_at + 1030 - 1 <= expires_at <= time.time() + 1030 + 1
    assert receipt_token.verify(SECRET, token).request_id == "exp-1"
