"""Who may use the console, and the login page.

- **Bearer token** (API clients): `Authorization: Bearer <console.token>`. Compared in
  constant time, as SHA-256 digests of the bytes (equal lengths, so not even the length
  leaks). The token is never written anywhere: not in a page, a log line or an error.
- **Session cookie** (browsers), set by the login page: `<id>.<expires>.<signature>`, a random
  id, its expiry (epoch seconds, `console.session_hours` after login) and an HMAC-SHA256 of
  both under a key derived from the token, so changing the token ends every session. HttpOnly,
  SameSite=Strict, Path=/, and Secure when `console.public_url` is https. Logging out revokes
  the id in this process and clears the cookie.
- **CSRF**: every POST/DELETE made with the cookie carries the session's CSRF token (an HMAC of
  its id), in the form field `csrf` or the `X-CSRF-Token` header; else `403`. Bearer requests
  are exempt: no browser adds that header on its own.
- **Login rate limit**: failed attempts are counted per client address (behind
  `console.trusted_proxies`, the client their X-Forwarded-For names); after 5 within a
  minute, further attempts get `429` (with Retry-After) until the oldest is a minute old. A
  guess is counted once its body is in, in the same step as it is checked: clients that send
  their bodies late cannot all pass the check first. Their log lines are throttled.

Anything else gets `401`: JSON under /api/, a redirect to the login page elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from console.render import render
from console.responses import Problem, is_api, redirect
from console.state import AUTH, IDENTITY
from gateway.access import SourceCheck
from schemas.history import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE
from smsbridge.config import ConsoleConfig
from smsbridge.logs import Throttle, get_logger

log = get_logger(__name__)

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEY_LABEL = b"smsbridge console session v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    expires: int  # epoch seconds
    csrf: str


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Literal["bearer", "session"]
    session: Session | None = None

    @property
    def csrf(self) -> str | None:
        return self.session.csrf if self.session is not None else None

    @property
    def by(self) -> Literal["api", "console"]:
        """Who changed something, for the opt-out record."""
        return "console" if self.kind == "session" else "api"


def changed_by(request: web.Request) -> Literal["api", "console"]:
    """Who made a change, for the record: the API (bearer token) or the console (a session)."""
    return request[IDENTITY].by


class Sessions:
    """Signed, expiring session cookies; revocation is per process (until the expiry)."""

    def __init__(self, token: str, hours: float, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(token.encode("utf-8", "surrogatepass"), _KEY_LABEL, "sha256").digest()
        self.seconds = int(hours * 3600)
        self._clock = clock
        self._revoked: dict[str, int] = {}

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), "sha256").digest())

    def _session(self, session_id: str, expires: int) -> Session:
        return Session(session_id, expires, self._sign(f"csrf:{session_id}"))

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        now = self._clock() if now is None else now
        session = self._session(_b64(secrets.token_bytes(16)), int(now) + max(self.seconds, 1))
        payload = f"{session.id}.{session.expires}"
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, cookie: str | None) -> Session | None:
        # Ours are ASCII; other bytes arrive as surrogates that would not even encode.
        if not cookie or len(cookie) > 200 or not cookie.isascii():
            return None
        session_id, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(
            signature.encode(), self._sign(f"{session_id}.{expires}").encode()
        ):
            return None
        now = self._clock()
        if int(expires) <= now or session_id in self._revoked:
            return None
        return self._session(session_id, int(expires))

    def revoke(self, session: Session) -> None:
        now = self._clock()
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._revoked[session.id] = session.expires

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(_digest(given), _digest(session.csrf))


class LoginLimiter:
    """At most `attempts` failed logins per client address within `window` seconds."""

    MAX_CLIENTS = 10_000

    def __init__(
        self,
        attempts: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds to wait when `client` is over the limit, else None."""
        failures = self._recent(client)
        if len(failures) < self.attempts:
            return None
        return max(failures[0] + self.window - self._clock(), 1.0)

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        self._failures[client] = failures
        self._failures.move_to_end(client)
        failures.append(self._clock())
        while len(self._failures) > self.MAX_CLIENTS:
            self._failures.popitem(last=False)


class Auth:
    def __init__(self, config: ConsoleConfig) -> None:
        token = config.token.get_secret_value()
        self._token = _digest(token)
        self.sessions = Sessions(token, config.session_hours)
        self.limiter = LoginLimiter()
        self.secure_cookie = (config.public_url or "").startswith("https://")
        self._proxies = SourceCheck((), config.trusted_proxies)
        # Anyone can post wrong tokens: a few lines a minute per kind, then how many were not
        # written (flushed when the console stops, too).
        self.log_throttle = Throttle(10, window=60.0)

    def client(self, request: web.Request) -> str:
        """Who is logging in: the peer, or behind a trusted proxy the client it names."""
        forwarded = request.headers.getall("X-Forwarded-For", [])
        return self._proxies.client_ip(request.remote, forwarded) or "unknown"

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given), self._token)

    def identify(self, request: web.Request) -> Identity | None:
        """The request's identity; raises 401 for a wrong or malformed Authorization."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not self.token_ok(given.strip()):
                raise Problem(401, "wrong or malformed bearer token", _CHALLENGE)
            return Identity("bearer")
        session = self.sessions.verify(request.cookies.get(SESSION_COOKIE))
        return Identity("session", session) if session is not None else None

    def set_cookie(self, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=self.sessions.seconds,
            path="/",
            httponly=True,
            secure=self.secure_cookie,
            samesite="Strict",
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(
            SESSION_COOKIE, path="/", secure=self.secure_cookie, httponly=True, samesite="Strict"
        )


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="smsbridge console"'}


def _public(request: web.Request) -> bool:
    return request.path == LOGIN_PATH or request.path.startswith(PUBLIC_PREFIXES)


async def _csrf_token(request: web.Request) -> str | None:
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        value = (await request.post()).get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    return token


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "/"  # browsers drop tabs and newlines: "/\t/evil.example" is "//evil.example"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path == LOGIN_PATH:
        return "/"
    return value


def middleware(auth: Auth) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _public(request):
            return await handler(request)
        identity = auth.identify(request)
        if identity is None:
            if is_api(request):
                raise Problem(401, "authentication required", _CHALLENGE)
            if request.headers.get("HX-Request") == "true":  # htmx polling: the whole page goes
                raise Problem(401, "authentication required", {"HX-Redirect": LOGIN_PATH})
            if request.method in SAFE_METHODS and request.path_qs != "/":
                raise web.HTTPSeeOther(f"{LOGIN_PATH}?{urlencode({'next': request.path_qs})}")
            raise web.HTTPSeeOther(LOGIN_PATH)
        session = identity.session
        if (
            session is not None
            and request.method not in SAFE_METHODS
            and not auth.sessions.csrf_ok(session, await _csrf_token(request))
        ):
            raise Problem(403, "missing or wrong CSRF token (reload the page and try again)")
        request[IDENTITY] = identity
        return await handler(request)

    return authenticate


# -- the login page ------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    target = safe_next(request.query.get("next"))
    if auth.sessions.verify(request.cookies.get(SESSION_COOKIE)) is not None:
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", next=target, error=None)


async def login(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    client = auth.client(request)
    form = await request.post()
    # From here to failed(): no await, so no other guess is checked in between.
    wait = auth.limiter.retry_after(client)
    raw_next = form.get("next")
    target = safe_next(raw_next if isinstance(raw_next, str) else None)
    if wait is not None:
        if auth.log_throttle.allow("console login rate-limited"):
            log.warning("console login rate-limited", client=client)
        response = render(
            request,
            "login.html",
            status=429,
            next=target,
            error=f"Too many failed attempts. Try again in {int(wait) + 1} seconds.",
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    given = form.get("token")
    if not isinstance(given, str) or not auth.token_ok(given.strip()):
        auth.limiter.failed(client)
        if auth.log_throttle.allow("console login refused"):
            log.warning("console login refused", client=client)
        return render(
            request, "login.html", status=401, next=target, error="That token is not right."
        )
    cookie, _ = auth.sessions.issue()
    response = redirect(target)
    auth.set_cookie(response, cookie)
    log.info("console login", client=client)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    identity = request.get(IDENTITY)
    if identity is not None and identity.session is not None:
        auth.sessions.revoke(identity.session)
    response = redirect(LOGIN_PATH)
    auth.clear_cookie(response)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(LOGIN_PATH, login_page)
    app.router.add_post(LOGIN_PATH, login)
    app.router.add_post(LOGOUT_PATH, logout)
