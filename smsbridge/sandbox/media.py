"""Media routes: the files inbound MMS point at, plus special routes that misbehave on purpose.

``GET /media/<name>``                 registered bytes (404 S3 NoSuchKey when unknown)
``GET /media/_expired/<name>``        403 with an S3-style ``AccessDenied`` XML body
``GET /media/_gone/<name>``           404 with an S3-style ``NoSuchKey`` XML body
``GET /media/_slow/<name>?delay=S``   sleeps S seconds, then serves the registered bytes
``GET /media/_big?size=N``            N deterministic bytes (byte i is ``i % 256``), chunked
``GET /media/_gzipbomb?size=N``       small gzip body (``Content-Encoding: gzip``) of N zeros
``GET /media/_redirect?to=URL``       302 to URL
``GET /media/_flaky/<name>?fail=K``   503 the first K times for that name, then the bytes
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

__all__ = ["MediaItem", "MediaStore", "big_bytes", "media_bytes"]

_BLOCK: Final = bytes(range(256)) * 256  # 64 KiB; byte i of a _big body is i % 256
MAX_DELAY_S: Final = 600.0
MAX_BIG: Final = 1 << 40
MAX_BOMB: Final = 1 << 34

_MAGIC: Final[dict[str, bytes]] = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/gif": b"GIF89a",
    "image/bmp": b"BM",
    "video/mp4": b"\x00\x00\x00\x18ftypmp42",
    "application/pdf": b"%PDF-1.4\n",
}


def big_bytes(size: int) -> bytes:
    """What ``/media/_big?size=N`` serves (for assertions in tests)."""
    full, rest = divmod(size, len(_BLOCK))
    return _BLOCK * full + _BLOCK[:rest]


def media_bytes(name: str, size: int, content_type: str = "application/octet-stream") -> bytes:
    """Deterministic content of ``size`` bytes for a generated media file.

    Starts with the type's magic bytes when known (JPEG, PNG, GIF, ...), then a repeated 64 KiB
    SHA-256 stream seeded by the name. ``text/*`` gets printable ASCII.
    """
    if size <= 0:
        return b""
    if content_type.startswith("text/"):
        line = f"sandbox media {name}\n".encode()
        return (line * (size // len(line) + 1))[:size]
    seed = hashlib.sha256(name.encode()).digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2048))
    out = _MAGIC.get(content_type, b"") + block * (size // len(block) + 1)
    return out[:size]


def _s3_error(code: str, message: str, extra: str = "") -> bytes:
    rid = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        f"<RequestId>{rid}</RequestId><HostId>{uuid.uuid4().hex}</HostId></Error>"
    ).encode()


def _xml(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml")


def _not_found(name: str) -> web.Response:
    key = f"<Key>{name}</Key>"
    return _xml(404, _s3_error("NoSuchKey", "The specified key does not exist.", key))


def _gzip_zeros(size: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    zeros = bytes(1 << 20)
    parts: list[bytes] = []
    left = size
    while left > 0:
        n = min(left, len(zeros))
        parts.append(comp.compress(zeros if n == len(zeros) else zeros[:n]))
        left -= n
    parts.append(comp.flush())
    return b"".join(parts)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadQuery(Exception):
    pass


def _number(request: web.Request, key: str, default: float | None, maximum: float) -> float:
    raw = request.query.get(key)
    if raw is None:
        if default is None:
            raise _BadQuery(f"missing query parameter {key!r}")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _BadQuery(f"bad query parameter {key!r}") from None
    if not 0 <= value <= maximum:
        raise _BadQuery(f"query parameter {key!r} out of range")
    return value


@dataclass(frozen=True, slots=True)
class MediaItem:
    data: bytes
    content_type: str


class MediaStore:
    """Registered media bytes and the ``/media/`` routes that serve them."""

    def __init__(self) -> None:
        self._items: dict[str, MediaItem] = {}
        self._flaky: dict[str, int] = {}
        self._bombs: dict[int, bytes] = {}
        self.hits: dict[str, int] = {}  # GETs per request path ("/media/photo.jpg", ...)

    # -- registry -------------------------------------------------------------------------------

    def add(self, name: str, data: bytes, content_type: str) -> str:
        """Register bytes under ``name``; returns the URL path (``/media/<quoted name>``)."""
        if not name or "/" in name or name.startswith("_"):
            raise ValueError(f"bad media name {name!r}: non-empty, no '/', no leading '_'")
        self._items[name] = MediaItem(data, content_type)
        return "/media/" + quote(name, safe="")

    def get(self, name: str) -> MediaItem | None:
        return self._items.get(name)

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def reset_counters(self) -> None:
        self._flaky.clear()
        self.hits.clear()

    def size_for_path(self, path: str, query: str = "") -> int | None:
        """The byte size this store would serve for a ``/media/...`` URL path, if known."""
        if not path.startswith("/media/"):
            return None
        parts = [unquote(p) for p in path[len("/media/") :].split("/")]
        if len(parts) == 1 and parts[0] == "_big":
            for pair in query.split("&"):
                key, _, value = pair.partition("=")
                if key == "size" and value.isdigit():
                    return int(value)
            return None
        if len(parts) == 2 and parts[0] in ("_slow", "_flaky"):
            parts = parts[1:]
        if len(parts) == 1 and not parts[0].startswith("_"):
            item = self._items.get(parts[0])
            return len(item.data) if item is not None else None
        return None

    def size_for_url(self, url: str) -> int | None:
        split = urlsplit(url)
        return self.size_for_path(split.path, split.query)

    # -- routes ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, _Handler]] = [
            ("/media/_expired/{name}", self._expired),
            ("/media/_gone/{name}", self._gone),
            ("/media/_slow/{name}", self._slow),
            ("/media/_big", self._big),
            ("/media/_gzipbomb", self._gzipbomb),
            ("/media/_redirect", self._redirect),
            ("/media/_flaky/{name}", self._flaky_route),
            ("/media/{name}", self._serve_route),
        ]
        for path, handler in routes:
            app.router.add_get(path, self._guard(handler))

    def _guard(self, handler: _Handler) -> _Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.hits[request.path] = self.hits.get(request.path, 0) + 1
            try:
                return await handler(request)
            except _BadQuery as exc:
                return web.Response(status=400, text=str(exc))

        return wrapped

    def _serve(self, name: str) -> web.Response:
        item = self._items.get(name)
        if item is None:
            return _not_found(name)
        return web.Response(body=item.data, content_type=item.content_type)

    async def _serve_route(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request.match_info["name"])

    async def _expired(self, request: web.Request) -> web.StreamResponse:
        now = datetime.now(UTC)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        extra = (
            "<X-Amz-Expires>604800</X-Amz-Expires>"
            f"<Expires>{(now - timedelta(days=1)).strftime(fmt)}</Expires>"
            f"<ServerTime>{now.strftime(fmt)}</ServerTime>"
        )
        return _xml(403, _s3_error("AccessDenied", "Request has expired", extra))

    async def _gone(self, request: web.Request) -> web.StreamResponse:
        return _not_found(request.match_info["name"])

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        delay = _number(request, "delay", 1.0, MAX_DELAY_S)
        await asyncio.sleep(delay)
        return self._serve(request.match_info["name"])

    async def _big(self, request: web.Request) -> web.StreamResponse:
        size = int(_number(request, "size", None, MAX_BIG))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            left = size
            while left > 0:
                chunk = _BLOCK if left >= len(_BLOCK) else _BLOCK[:left]
                await response.write(chunk)
                left -= len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading (e.g. it enforces a size cap)
        return response

    async def _gzipbomb(self, request: web.Request) -> web.StreamResponse:
        size = int(_number(request, "size", None, MAX_BOMB))
        body = self._bombs.get(size)
        if body is None:
            body = await asyncio.to_thread(_gzip_zeros, size)
            if len(self._bombs) >= 8:
                self._bombs.pop(next(iter(self._bombs)))
            self._bombs[size] = body
        return web.Response(
            body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
        )

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        target = request.query.get("to")
        if not target:
            raise _BadQuery("missing query parameter 'to'")
        return web.Response(status=302, headers={"Location": target})

    async def _flaky_route(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        fail = int(_number(request, "fail", 1, 1_000_000))
        seen = self._flaky.get(name, 0)
        if seen < fail:
            self._flaky[name] = seen + 1
            return _xml(503, _s3_error("SlowDown", "Please reduce your request rate."))
        return self._serve(name)
