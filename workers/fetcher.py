"""SSRF-safe, size-capped download of inbound MMS media into the MediaStore.

Media URLs arrive in webhooks, so they are untrusted: every connection (including each redirect
hop) may only reach a global address, over http/https, on an allowed port. The check lives in a
resolver that wraps aiohttp's default one, so the addresses checked are exactly the addresses
connected to (no DNS-rebinding window). aiohttp skips the resolver for IP-literal hosts, so those
are checked before each request.

Pre-signed S3 links carry their signature in the query string: neither logs nor error texts
ever contain it (see ``redact_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from yarl import URL

from smsbridge.logs import get_logger
from smsbridge.media_store import DEFAULT_CONTENT_TYPE, MediaStore, StoredMedia, clean_content_type

__all__ = [
    "AddressGuard",
    "ByteBudget",
    "FetchError",
    "FetchPolicy",
    "MediaFetcher",
    "parse_retry_after",
    "redact_url",
]

log = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CHUNK_SIZE: Final = 64 * 1024
RETRY_AFTER_CAP: Final = 5.0
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

# Ranges that ipaddress (3.11) calls global although they can reach internal hosts or are no
# unicast destination at all: NAT64 and 6to4/Teredo/IPv4-compatible forms embed an IPv4
# address that a gateway may translate to a private one; CGNAT is the provider's internal net.
_DENIED: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64:ff9b::/96",  # NAT64 well-known prefix
        "64:ff9b:1::/48",  # NAT64 local-use prefix
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "100.64.0.0/10",  # CGNAT shared address space
        "192.88.99.0/24",  # 6to4 relay anycast
    )
)


_GENERIC_TYPES = frozenset({"binary/octet-stream", "application/octet-stream"})


class FetchError(Exception):
    """A download failed. ``transient`` tells the caller whether a later retry may succeed."""

    def __init__(self, reason: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after  # seconds the server asked for, already capped

    def __repr__(self) -> str:
        return f"FetchError({self.reason!r}, transient={self.transient})"


class ByteBudget:
    """The bytes one message's media may take on disk, all items together.

    Shared by the message's concurrent downloads: each chunk is taken from it as it is written,
    and a download that fails (or is refused for going over) gives back what it took, so the
    budget counts what is actually stored.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def remaining(self) -> int:
        return self.limit - self.used

    def take(self, size: int) -> bool:
        if size > self.remaining:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)

    def over(self) -> FetchError:
        return FetchError(
            f"not stored: the message's media would exceed {self.limit} bytes in all",
            transient=False,
        )


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 15 * 1024 * 1024  # counted after decompression
    total_timeout: float = 30.0  # per attempt: every redirect hop plus the whole body
    connect_timeout: float = 5.0  # per address tried
    read_timeout: float = 10.0  # between two reads
    attempts: int = 3  # tenacity attempts for transient failures
    max_redirects: int = 5
    allowed_ports: frozenset[int] | None = None  # None = any port
    # Opt-in CIDRs allowed although not global, e.g. ("127.0.0.1/32",) for tests.
    allow_networks: tuple[str, ...] = ()


def redact_url(url: str | URL) -> str:
    """``scheme://host[:port]/path``: no credentials, query or fragment (S3 signatures)."""
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if not parsed.absolute:
            return "<relative url>"
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid url>"


class AddressGuard:
    """Decides whether a resolved address may be connected to."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)

    def allows(self, host: str) -> bool:
        try:
            ip: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:10.0.0.1 connects to 10.0.0.1: judge the address actually reached.
            ip = ip.ipv4_mapped
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            return False  # zone-scoped addresses are link-local by definition
        if any(ip in net for net in self._allowed):
            return True
        if ip.is_multicast or any(ip in net for net in _DENIED):
            return False
        return ip.is_global


class _GuardedResolver(AbstractResolver):
    """Drops resolved addresses the guard refuses; fails when none is left.

    aiohttp caches what this returns (ttl_dns_cache), so only checked addresses are cached.
    """

    def __init__(self, inner: AbstractResolver, guard: AddressGuard) -> None:
        self._inner = inner
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allows(r["host"])]
        if not allowed:
            # Not an OSError, so aiohttp passes it through unwrapped to fetch().
            first = results[0]["host"] if results else "none"
            raise FetchError(f"blocked address {first}", transient=False)
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped at 5 s."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone accepts "²", which float() refuses
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - time.time(), 0.0), RETRY_AFTER_CAP)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, FetchError) and exc.transient


def _looks_like_ip(host: str) -> bool:
    # Same heuristic aiohttp uses (helpers.is_ip_address) to skip the resolver: every host it
    # would connect to without resolving must pass through _check_url's literal check.
    return ":" in host or host.replace(".", "").isdigit()


@dataclass(frozen=True)
class _Body:
    """A complete download in a temp file, not yet committed to the store."""

    temp: Path
    content_type: str
    size: int
    sha256: str


class MediaFetcher:
    def __init__(self, store: MediaStore, policy: FetchPolicy = FetchPolicy()) -> None:
        self._store = store
        self._policy = policy
        self._guard = AddressGuard(policy.allow_networks)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _GuardedResolver | None = None
        # 0.2 s, 0.4 s, ... capped at 2 s, plus up to 1 s jitter. tenacity 9.2 deprecated the
        # name "initial" for this first wait in favour of "multiplier".
        self._backoff = wait_exponential_jitter(multiplier=0.2, max=2)

    async def start(self) -> None:
        if self._session is not None:
            return
        p = self._policy
        # DefaultResolver needs the running loop, hence built here rather than in __init__.
        self._resolver = _GuardedResolver(aiohttp.DefaultResolver(), self._guard)
        connector = aiohttp.TCPConnector(limit=64, resolver=self._resolver, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # sock_connect is per address tried, so one dead address cannot eat the budget;
            # total bounds DNS, pool waits and each hop (fetch() also bounds the whole attempt).
            timeout=aiohttp.ClientTimeout(
                total=p.total_timeout, sock_connect=p.connect_timeout, sock_read=p.read_timeout
            ),
            trust_env=False,  # no proxy from the environment: it would bypass the guard
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookies carried from one URL to another
            auto_decompress=True,  # so the byte cap applies to decompressed bytes
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            # The connector does not own a resolver it was given.
            await self._resolver.close()
            self._resolver = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def fetch(
        self,
        url: str,
        *,
        file_name: str | None = None,
        declared_type: str | None = None,
        budget: ByteBudget | None = None,
    ) -> StoredMedia:
        """Download ``url`` into the store, within ``budget`` (the message's bytes) if given.

        Raises FetchError for anything on the remote side (never an aiohttp error) and for an
        item that would overrun the budget; an OSError from the local disk (ENOSPC...) passes
        through. Either way no temp file is left behind.
        """
        if self._session is None:
            raise RuntimeError("MediaFetcher.start() was not called")
        session = self._session
        try:
            start = URL(url)
        except (ValueError, TypeError):
            raise FetchError("invalid url", transient=False) from None
        # A new AsyncRetrying per call: a shared one corrupts its state across coroutines.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._policy.attempts),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            before_sleep=lambda state: self._log_retry(start, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(session, start, file_name, declared_type, budget)
        raise AssertionError("unreachable: tenacity returns or reraises")

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, FetchError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(state)

    def _log_retry(self, url: URL, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "media fetch retry",
            url=redact_url(url),
            reason=getattr(exc, "reason", repr(exc)),
            attempt=state.attempt_number,
            wait=round(state.upcoming_sleep, 3),
        )

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        file_name: str | None,
        declared_type: str | None,
        budget: ByteBudget | None = None,
    ) -> StoredMedia:
        """One attempt: follow redirects, then stream the body. Maps errors to FetchError.

        ``from None`` everywhere: aiohttp's messages embed the full URL, signature included.
        """
        try:
            async with asyncio.timeout(self._policy.total_timeout):
                body = await self._download(session, url, declared_type, budget)
        except FetchError:
            raise
        except TimeoutError:  # also aiohttp's ServerTimeoutError / ConnectionTimeoutError
            raise FetchError("timeout", transient=True) from None
        except aiohttp.ClientPayloadError:
            raise FetchError("truncated or malformed body", transient=True) from None
        except aiohttp.ClientConnectionError as exc:  # refused, reset, DNS, ServerDisconnected
            raise FetchError(f"connection error: {type(exc).__name__}", transient=True) from None
        except aiohttp.ClientError as exc:  # invalid URL and friends: retrying cannot help
            raise FetchError(f"client error: {type(exc).__name__}", transient=False) from None
        # Outside the timeout: a commit cut short in its thread would still complete, leaving
        # a stored file nobody knows about and a retry that stores it twice.
        try:
            return await asyncio.to_thread(
                self._store.commit,
                body.temp,
                content_type=body.content_type,
                file_name=file_name,
                size=body.size,
                sha256=body.sha256,
            )
        except BaseException:
            _discard(body.temp)
            if budget is not None:
                budget.give_back(body.size)
            raise

    async def _download(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        declared_type: str | None,
        budget: ByteBudget | None = None,
    ) -> _Body:
        # Redirects are followed here, not by aiohttp, so each hop is checked before connecting.
        for _hop in range(self._policy.max_redirects + 1):
            self._check_url(url)
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    url = self._redirect_target(url, resp.headers.get(aiohttp.hdrs.LOCATION))
                    continue
                self._check_status(resp)
                served = clean_content_type(resp.headers.get(aiohttp.hdrs.CONTENT_TYPE))
                if served in _GENERIC_TYPES:
                    served = None  # S3 often says binary/octet-stream: Flowroute knows better
                content_type = served or clean_content_type(declared_type) or DEFAULT_CONTENT_TYPE
                return await self._read_body(resp, content_type, budget)
        raise FetchError(f"too many redirects (over {self._policy.max_redirects})", transient=False)

    def _check_url(self, url: URL) -> None:
        if url.scheme not in ("http", "https"):
            raise FetchError(f"unsupported scheme {url.scheme or 'none'!r}", transient=False)
        host = url.raw_host
        if not host:
            raise FetchError("url without host", transient=False)
        port = url.port
        allowed_ports = self._policy.allowed_ports
        if port is None or (allowed_ports is not None and port not in allowed_ports):
            raise FetchError(f"port not allowed: {port}", transient=False)
        if _looks_like_ip(host) and not self._guard.allows(host):
            # Includes forms ipaddress cannot parse (127.1, 2130706433): refused, not resolved.
            raise FetchError(f"blocked address {host}", transient=False)

    @staticmethod
    def _redirect_target(current: URL, location: str | None) -> URL:
        if not location:
            raise FetchError("redirect without Location", transient=False)
        try:
            # Relative Locations resolve against the current URL, as browsers do.
            return current.join(URL(location)).with_fragment(None)
        except (ValueError, TypeError):
            raise FetchError("invalid redirect Location", transient=False) from None

    @staticmethod
    def _check_status(resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if status == 200:
            return
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(resp.headers.get(aiohttp.hdrs.RETRY_AFTER))
            raise FetchError(f"HTTP {status}", transient=True, retry_after=retry_after)
        # 403 (expired pre-signed link), 404, other 4xx and odd 2xx/3xx: retrying cannot help.
        raise FetchError(f"HTTP {status}", transient=False)

    async def _read_body(
        self, resp: aiohttp.ClientResponse, content_type: str, budget: ByteBudget | None = None
    ) -> _Body:
        """Stream the body into a temp file of the store, hashing and counting on the way.

        Each chunk is taken from ``budget`` before it is written; on any failure the temp file
        is removed and the bytes are given back.
        """
        max_bytes = self._policy.max_bytes
        too_large = FetchError(f"too large: over {max_bytes} bytes", transient=False)
        encoded = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity") != "identity"
        declared = None if encoded else resp.content_length
        if declared is not None and declared > max_bytes:
            raise too_large  # declared size is the real size: refuse before reading a byte
        if budget is not None and declared is not None and declared > budget.remaining:
            raise budget.over()
        temp = self._store.temp_path()
        digest = hashlib.sha256()
        size = 0
        taken = 0
        try:
            fh = await asyncio.to_thread(temp.open, "xb")
            try:
                # Chunks arrive decompressed, so the count below is the size on disk.
                async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_large
                    if budget is not None:
                        if not budget.take(len(chunk)):
                            raise budget.over()
                        taken += len(chunk)
                    digest.update(chunk)
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                fh.close()  # no fsync here (commit does it): cheap enough on the loop
        except BaseException:
            # Synchronous on purpose: it must also run when the task is being cancelled.
            _discard(temp)
            if budget is not None:
                budget.give_back(taken)
            raise
        return _Body(temp=temp, content_type=content_type, size=size, sha256=digest.hexdigest())


def _discard(path: Path) -> None:
    # Never masks the error being handled (e.g. ENOSPC) with one from the cleanup.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
