"""Flowroute's messaging API side: sending, message records and account-level callbacks.

``POST /v2.2/messages``                       send an SMS/MMS: 202 with an ``mdr2-`` id
``GET  /v2.2/messages``                       the account's message records (``start_date``,
                                              ``end_date``, ``limit``, ``offset``; ``links.next``)
``GET  /v2.2/messages/<id>``                  one message record
``PUT  /v2.1/messages/sms_callback``          set the account's inbound SMS callback URL (202)
``PUT  /v2.1/messages/mms_callback``          set the account's inbound MMS callback URL (202)
``PUT  /v2.1/messages/dlr_callback``          set the account's delivery receipt callback URL (202)

Every route checks Basic auth (401 with an ``errors`` body). Sending validates bodies like
Flowroute (JSON:API or compact form), rate limits per access key per wall-clock second (SMS and
MMS counted separately, every attempt counts), records what it accepted, and posts delivery
receipts to ``dlr_callback``. Faults can be injected on sending: status codes, latency, dropped
connections, and accepted-then-dropped (recorded, but the 202 never sent).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, Literal, cast
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
from aiohttp import web

from .media import MediaStore
from .payloads import Form, dlr, new_message_id

__all__ = [
    "CALLBACK_KINDS",
    "LIST_LIMIT_DEFAULT",
    "LIST_LIMIT_MAX",
    "MMS_BYTE_LIMIT",
    "AcceptedMessage",
    "AccountSpec",
    "CallbackKind",
    "Fault",
    "FlowrouteApi",
    "Kind",
    "ReceiptPost",
]

Kind = Literal["sms", "mms"]
CallbackKind = Literal["sms", "mms", "dlr"]
CALLBACK_KINDS: Final[tuple[CallbackKind, ...]] = ("sms", "mms", "dlr")
MMS_BYTE_LIMIT: Final = 767_840
LIST_LIMIT_DEFAULT: Final = 10
LIST_LIMIT_MAX: Final = 200
JSONAPI: Final = "application/vnd.api+json"
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """A Flowroute account the sandbox accepts: Basic auth user/password and rate limits."""

    access_key: str
    secret_key: str
    sms_per_second: int = 5
    mms_per_second: int = 1


@dataclass(slots=True)
class Fault:
    """An injected fault on ``POST /v2.2/messages`` (see ``FlowrouteApi.set_fault``)."""

    status: int | None = None
    count: int | None = None  # remaining requests affected; None = no count limit
    seconds: float | None = None
    latency_ms: float = 0.0
    drop: bool = False
    retry_after: str | None = None
    detail: str | None = None
    accept_then_drop: bool = False  # record and accept, then close instead of answering 202
    deadline: float | None = None  # loop-independent monotonic deadline
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("deadline")
        return out


@dataclass(slots=True)
class AcceptedMessage:
    """A message ``POST /v2.2/messages`` accepted: answered 202, or (``answered`` False) closed
    without an answer by an ``accept_then_drop`` fault, so the sender cannot know it was sent."""

    id: str
    account: str
    kind: Kind
    attributes: dict[str, Any]
    auth_user: str
    received_at: float
    form: Form
    content_type: str
    status: str = "accepted"  # updated with each delivery receipt posted
    answered: bool = True  # False: accepted, then the connection was closed (accept_then_drop)

    @property
    def timestamp(self) -> datetime:
        """When it was accepted, as its record shows it (and as the listing filters on)."""
        return datetime.fromtimestamp(self.received_at, UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ReceiptPost:
    """One delivery receipt POST to a ``dlr_callback`` and how it was answered."""

    message_id: str
    level: int
    url: str
    status: int | None  # the receiver's HTTP status; None when the post failed
    error: str | None
    at: float
    payload: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Window:
    __slots__ = ("count", "max", "second")

    def __init__(self) -> None:
        self.second = 0
        self.count = 0
        self.max = 0

    def hit(self, second: int) -> int:
        if second != self.second:
            self.second = second
            self.count = 0
        self.count += 1
        if self.count > self.max:
            self.max = self.count
        return self.count


class _AccountStats:
    __slots__ = ("accepted", "attempts", "rate_limited", "windows")

    def __init__(self) -> None:
        self.attempts = {"sms": 0, "mms": 0}
        self.accepted = {"sms": 0, "mms": 0}
        self.rate_limited = {"sms": 0, "mms": 0}
        self.windows = {"sms": _Window(), "mms": _Window()}

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": dict(self.attempts),
            "accepted": dict(self.accepted),
            "rate_limited": dict(self.rate_limited),
            "violations": self.rate_limited["sms"] + self.rate_limited["mms"],
            "max_per_second": {k: w.max for k, w in self.windows.items()},
        }


def _errors(status: int, detail: Any, title: str | None = None) -> bytes:
    if title is None:
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
    item = {"id": str(uuid.uuid4()), "status": status, "title": title, "detail": detail}
    return orjson.dumps({"errors": [item]})


def _error_response(
    status: int, detail: Any, title: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=_errors(status, detail, title), content_type=JSONAPI, headers=headers
    )


def _basic_header(access_key: str, secret_key: str) -> str:
    return "Basic " + base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()


def _is_number(value: Any) -> bool:
    return isinstance(value, str) and 11 <= len(value) <= 15 and value.isascii() and value.isdigit()


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _is_callback_url(value: Any) -> bool:
    """Stricter than ``_is_http_url``: an account setting must name a host, not just a scheme."""
    if not isinstance(value, str):
        return False
    try:
        split = urlsplit(value)
    except ValueError:
        return False
    return split.scheme in ("http", "https") and bool(split.hostname)


class _Invalid(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _query_time(name: str, value: str) -> datetime:
    """A listing bound: RFC 3339 (``Z`` or ``+00:00``, fraction optional) or any ISO 8601 date
    or date-time Python reads; without an offset it is UTC, as Flowroute documents."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        # an unencoded "+00:00" reaches us as " 00:00": say so rather than guess
        hint = "; encode '+' as %2B" if " " in value else ""
        detail = f"{name} must be an RFC 3339 date-time such as 2026-01-01T00:00:00Z{hint}"
        raise _Invalid(400, f"{detail} (got {value!r})") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _query_int(name: str, value: str, minimum: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise _Invalid(400, f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


@dataclass(frozen=True, slots=True)
class _ListQuery:
    """The parameters of ``GET /v2.2/messages``; the window is [start, end)."""

    start: datetime | None
    end: datetime | None
    limit: int
    offset: int

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> _ListQuery:
        start = query.get("start_date")
        end = query.get("end_date")
        window = (
            None if start is None else _query_time("start_date", start),
            None if end is None else _query_time("end_date", end),
        )
        if window[0] is not None and window[1] is not None and window[1] < window[0]:
            raise _Invalid(400, "end_date must not be before start_date")
        limit = _query_int("limit", query.get("limit", str(LIST_LIMIT_DEFAULT)), 1)
        offset = _query_int("offset", query.get("offset", "0"), 0)
        return cls(*window, min(limit, LIST_LIMIT_MAX), offset)

    def includes(self, at: datetime) -> bool:
        return (self.start is None or at >= self.start) and (self.end is None or at < self.end)


class FlowrouteApi:
    """State and handlers of the ``/v2.2`` routes. Owned by ``Sandbox``."""

    def __init__(
        self,
        accounts: Mapping[str, AccountSpec],
        media: MediaStore,
        *,
        dlr_delay: float = 0.05,
        dlr_status: str = "delivery success",
        dlr_status_code: int | str | None = 1000,
        dlr_description: str | None = None,
        dlr_form: Form = "jsonapi",
        rate_limit_retry_after: str | None = None,
    ) -> None:
        self.media = media
        self.dlr_delay = dlr_delay
        self.dlr_form: Form = dlr_form
        self.rate_limit_retry_after = rate_limit_retry_after
        self.set_dlr_outcome(dlr_status, dlr_status_code, dlr_description)
        self.session: aiohttp.ClientSession | None = None
        self.base_url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self.accounts: dict[str, AccountSpec] = {}
        self._auth: dict[str, AccountSpec] = {}
        for spec in accounts.values():
            self.set_account(spec)
        self.media_sizes: dict[str, int] = {}
        self.messages: list[AcceptedMessage] = []
        self._by_id: dict[str, AcceptedMessage] = {}
        self.receipts: list[ReceiptPost] = []
        self.fault: Fault | None = None
        # account settings, like accounts themselves: reset() keeps them
        self._callbacks: dict[str, dict[CallbackKind, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reset()

    # -- configuration ----------------------------------------------------------------------------

    def set_account(self, spec: AccountSpec) -> None:
        """Add or replace an account (its credentials and rate limits)."""
        self.accounts[spec.access_key] = spec
        self._auth = {_basic_header(a.access_key, a.secret_key): a for a in self.accounts.values()}

    def set_dlr_outcome(
        self, status: str, status_code: int | str | None, description: str | None = None
    ) -> None:
        """What the level-2 receipt says, e.g. ("delivery failure", 1003, "...")."""
        self.dlr_status = status
        self.dlr_status_code = status_code
        self.dlr_description = description

    def declare_media_size(self, url: str, size: int) -> None:
        """Tell the sandbox the size of an external media URL (for the 767840-byte check)."""
        self.media_sizes[url] = size

    def set_fault(
        self,
        status: int | None = None,
        *,
        count: int | None = None,
        seconds: float | None = None,
        latency_ms: float = 0.0,
        drop: bool = False,
        retry_after: str | None = None,
        detail: str | None = None,
        accept_then_drop: bool = False,
    ) -> Fault:
        if status is None and not drop and not accept_then_drop and latency_ms <= 0:
            raise ValueError(
                "a fault needs a status, drop=True, accept_then_drop=True or latency_ms > 0"
            )
        if accept_then_drop and (drop or status is not None):
            raise ValueError("accept_then_drop excludes drop and status")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        if latency_ms < 0 or (seconds is not None and seconds < 0):
            raise ValueError("latency_ms and seconds must be >= 0")
        deadline = time.monotonic() + seconds if seconds is not None else None
        self.fault = Fault(
            status,
            count,
            seconds,
            latency_ms,
            drop,
            retry_after,
            detail,
            accept_then_drop=accept_then_drop,
            deadline=deadline,
        )
        return self.fault

    def clear_faults(self) -> None:
        self.fault = None

    def set_callback(self, access_key: str, kind: CallbackKind, url: str | None) -> None:
        """Set (or with None forget) an account-level callback URL, as the ``PUT`` does."""
        if access_key not in self.accounts:
            raise KeyError(access_key)
        if kind not in CALLBACK_KINDS:
            raise ValueError(f"kind must be one of {', '.join(CALLBACK_KINDS)}")
        own = self._callbacks.setdefault(access_key, {})
        if url is None:
            own.pop(kind, None)
        elif _is_callback_url(url):
            own[kind] = url
        else:
            raise ValueError("a callback URL must be an http(s) URL with a host")

    def callbacks_for(self, access_key: str) -> dict[str, str | None]:
        """The account's callback URLs by kind (None: not set). KeyError for unknown accounts."""
        if access_key not in self.accounts:
            raise KeyError(access_key)
        own = self._callbacks.get(access_key, {})
        return {kind: own.get(kind) for kind in CALLBACK_KINDS}

    def reset(self) -> None:
        """Forget messages and receipts and zero all counters.

        Accounts, faults and account-level callbacks stay: they are settings, not records.
        """
        self.messages.clear()
        self._by_id.clear()
        self.receipts.clear()
        self.attempts = 0
        self.accepted = 0
        self.rate_limited = 0
        self.faulted = 0
        self.dropped = 0  # connections closed without an answer, accepted_dropped included
        self.accepted_dropped = 0
        self.by_status: dict[int, int] = {}
        self.account_stats: dict[str, _AccountStats] = {}

    # -- introspection ----------------------------------------------------------------------------

    def message(self, message_id: str) -> AcceptedMessage | None:
        return self._by_id.get(message_id)

    def stats(self) -> dict[str, Any]:
        receipt_statuses: dict[str, int] = {}
        failed = 0
        for r in self.receipts:
            key = str(r.status) if r.status is not None else "error"
            receipt_statuses[key] = receipt_statuses.get(key, 0) + 1
            if r.status is None or not 200 <= r.status < 300:
                failed += 1
        return {
            "attempts": self.attempts,
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "faulted": self.faulted,
            "dropped": self.dropped,
            "accepted_dropped": self.accepted_dropped,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "accounts": {k: v.to_json() for k, v in self.account_stats.items()},
            "receipts": {
                "posted": len(self.receipts),
                "failed": failed,
                "by_status": receipt_statuses,
                "pending_tasks": len(self._tasks),
            },
        }

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every scheduled delivery receipt has been posted (or failed)."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- routes -----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2.2/messages", self.post_message)
        app.router.add_get("/v2.2/messages", self.list_messages)
        app.router.add_get("/v2.2/messages/{id}", self.get_message)
        app.router.add_put("/v2.1/messages/{kind:sms|mms|dlr}_callback", self.put_callback)

    def _authenticate(self, request: web.Request) -> AccountSpec | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        account = self._auth.get(header)
        if account is not None:
            return account
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        account = self.accounts.get(user)
        if account is None or account.secret_key != password:
            return None
        return account

    def _take_fault(self) -> Fault | None:
        fault = self.fault
        if fault is None:
            return None
        if fault.deadline is not None and time.monotonic() >= fault.deadline:
            self.fault = None
            return None
        if fault.count is not None:
            if fault.count <= 0:
                self.fault = None
                return None
            fault.count -= 1
        fault.hits += 1
        return fault

    def _answer(self, response: web.Response) -> web.Response:
        self.by_status[response.status] = self.by_status.get(response.status, 0) + 1
        return response

    def _close_unanswered(self, request: web.Request) -> web.Response:
        self.dropped += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)  # never reaches the client

    async def post_message(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        fault = self._take_fault()
        # accept_then_drop only affects a request that is accepted; others get their answer
        withhold_202 = fault is not None and fault.accept_then_drop
        if fault is not None:
            if fault.latency_ms > 0:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.drop:
                return self._close_unanswered(request)
            if fault.status is not None:
                self.faulted += 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                detail = fault.detail or "Injected fault: please try again later"
                return self._answer(_error_response(fault.status, detail, headers=headers))

        account = self._authenticate(request)
        if account is None:
            return self._answer(_error_response(401, "Invalid credentials", "Unauthorized"))

        content_type = request.content_type
        if "json" not in content_type:
            detail = f"Unsupported content type {content_type!r}"
            return self._answer(_error_response(415, detail))
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._answer(_error_response(400, "Malformed JSON body", "Bad Request"))
        if not isinstance(body, dict):
            return self._answer(_error_response(400, "Body must be a JSON object", "Bad Request"))

        form: Form
        if "data" in body:
            form = "jsonapi"
            data = body["data"]
            attrs = data.get("attributes") if isinstance(data, dict) else None
            if not isinstance(attrs, dict):
                detail = "data.attributes must be an object"
                return self._answer(_error_response(422, detail))
        else:
            form = "compact"
            attrs = body
        media_urls = attrs.get("media_urls")
        kind: Kind = "mms" if attrs.get("is_mms") is True or media_urls else "sms"

        stats = self.account_stats.get(account.access_key)
        if stats is None:
            stats = self.account_stats[account.access_key] = _AccountStats()
        stats.attempts[kind] += 1
        in_window = stats.windows[kind].hit(int(time.time()))
        limit = account.sms_per_second if kind == "sms" else account.mms_per_second
        if in_window > limit:
            self.rate_limited += 1
            stats.rate_limited[kind] += 1
            retry = self.rate_limit_retry_after
            detail = f"Rate limit exceeded: {limit} {kind.upper()} per second"
            return self._answer(
                _error_response(
                    429,
                    detail,
                    "Too Many Requests",
                    headers={"Retry-After": retry} if retry else None,
                )
            )

        try:
            self._validate(attrs, kind)
        except _Invalid as exc:
            return self._answer(_error_response(exc.status, exc.detail))

        message_id = new_message_id()
        message = AcceptedMessage(
            id=message_id,
            account=account.access_key,
            kind=kind,
            attributes=attrs,
            auth_user=account.access_key,
            received_at=time.time(),
            form=form,
            content_type=content_type,
            answered=not withhold_202,
        )
        self.messages.append(message)
        self._by_id[message_id] = message
        self.accepted += 1
        stats.accepted[kind] += 1
        callback = attrs.get("dlr_callback")
        if callback:
            task = asyncio.create_task(self._deliver_receipts(message, callback))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if withhold_202:
            self.accepted_dropped += 1
            return self._close_unanswered(request)
        answer = {
            "data": {
                "type": "message",
                "id": message_id,
                "links": {"self": f"{self.base_url}/v2.2/messages/{message_id}"},
            }
        }
        return self._answer(
            web.Response(status=202, body=orjson.dumps(answer), content_type=JSONAPI)
        )

    def _validate(self, attrs: dict[str, Any], kind: Kind) -> None:
        for key in ("to", "from"):
            value = attrs.get(key)
            if value is None:
                raise _Invalid(422, f"'{key}' is required")
            if not _is_number(value):
                raise _Invalid(422, f"'{key}' must be 11 to 15 digits without '+' (got {value!r})")
        text = attrs.get("body")
        if text is not None and not isinstance(text, str):
            raise _Invalid(422, "'body' must be a string")
        media_urls = attrs.get("media_urls")
        if media_urls is not None and (
            not isinstance(media_urls, list) or not all(_is_http_url(u) for u in media_urls)
        ):
            raise _Invalid(422, "'media_urls' must be a list of http(s) URLs")
        if not text and not media_urls:
            raise _Invalid(422, "'body' is required when no media is given")
        callback = attrs.get("dlr_callback")
        if callback is not None and callback != "" and not _is_http_url(callback):
            raise _Invalid(422, "'dlr_callback' must be an http(s) URL")
        if kind == "mms" and media_urls:
            total = len(text.encode()) if text else 0
            for url in media_urls:
                size = self._media_size(url)
                if size is None:
                    continue
                total += size
                if total > MMS_BYTE_LIMIT:
                    raise _Invalid(
                        422,
                        f'Error fetching media: File at "{url}" is over {MMS_BYTE_LIMIT} '
                        "byte limit.",
                    )

    def _media_size(self, url: str) -> int | None:
        declared = self.media_sizes.get(url)
        if declared is not None:
            return declared
        try:
            split = urlsplit(url)
            port = split.port
        except ValueError:
            return None
        if port == self.port and (split.hostname in _LOOPBACK or split.hostname == self.host):
            return self.media.size_for_path(split.path, split.query)
        return None

    def _record(self, message: AcceptedMessage) -> dict[str, Any]:
        """A message record as Flowroute's MDR routes show it (the listing and the lookup)."""
        attrs = message.attributes
        text = attrs.get("body")
        return {
            "type": "message",
            "id": message.id,
            "attributes": {
                "body": text,
                "direction": "outbound",
                "from": attrs.get("from"),
                "to": attrs.get("to"),
                "is_mms": message.kind == "mms",
                "media_urls": attrs.get("media_urls") or [],
                "message_encoding": 0 if not text or text.isascii() else 8,
                "message_type": "longcode",
                "status": message.status,
                "timestamp": message.timestamp.isoformat(),
            },
            "links": {"self": f"{self.base_url}/v2.2/messages/{message.id}"},
        }

    def _page_url(self, request: web.Request, limit: int, offset: int) -> str:
        """The absolute URL of another page: the same query with another ``offset``."""
        params = {k: v for k, v in request.query.items() if k not in ("limit", "offset")}
        params.update(limit=str(limit), offset=str(offset))
        return f"{self.base_url}/v2.2/messages?{urlencode(params)}"

    async def list_messages(self, request: web.Request) -> web.StreamResponse:
        """The account's message records, as Flowroute's "look up a set of messages".

        Records whose timestamp is in [``start_date``, ``end_date``) (either may be absent here;
        Flowroute requires ``start_date``), only the caller's. ``limit`` 1.. (default 10, more
        than 200 is served as 200), ``offset`` >= 0; bad values are 400. Order: oldest first,
        i.e. the order accepted, so offsets stay valid while messages arrive. Flowroute does not
        document an order, so callers must not depend on it. ``links.next`` is the absolute URL
        of the next page, null on the last. The bridge probes keys with ``?limit=1``.
        """
        account = self._authenticate(request)
        if account is None:
            return _error_response(401, "Invalid credentials", "Unauthorized")
        try:
            query = _ListQuery.parse(request.query)
        except _Invalid as exc:
            return _error_response(exc.status, exc.detail, "Bad Request")
        matching = [
            m
            for m in self.messages
            if m.account == account.access_key and query.includes(m.timestamp)
        ]
        limit, offset = query.limit, query.offset
        page = matching[offset : offset + limit]
        more = offset + limit < len(matching)
        links = {
            "prev": self._page_url(request, limit, max(0, offset - limit)) if offset else None,
            "next": self._page_url(request, limit, offset + limit) if more else None,
        }
        answer = {"data": [self._record(m) for m in page], "links": links}
        return web.Response(body=orjson.dumps(answer), content_type=JSONAPI)

    async def get_message(self, request: web.Request) -> web.StreamResponse:
        account = self._authenticate(request)
        if account is None:
            return _error_response(401, "Invalid credentials", "Unauthorized")
        message = self._by_id.get(request.match_info["id"])
        if message is None or message.account != account.access_key:
            return _error_response(404, "Message not found", "Not Found")
        return web.Response(
            body=orjson.dumps({"data": self._record(message)}), content_type=JSONAPI
        )

    async def put_callback(self, request: web.Request) -> web.StreamResponse:
        """``PUT /v2.1/messages/{sms,mms,dlr}_callback``: the account-level callback URL.

        Body ``{"data": {"attributes": {"callback_url": "https://..."}}}``; answers 202 with an
        empty body like Flowroute's SDKs expect ("ACCEPTED").
        """
        account = self._authenticate(request)
        if account is None:
            return _error_response(401, "Invalid credentials", "Unauthorized")
        if "json" not in request.content_type:
            return _error_response(415, f"Unsupported content type {request.content_type!r}")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error_response(400, "Malformed JSON body", "Bad Request")
        data = body.get("data") if isinstance(body, dict) else None
        attrs = data.get("attributes") if isinstance(data, dict) else None
        url = attrs.get("callback_url") if isinstance(attrs, dict) else None
        if url is None:
            return _error_response(422, "'data.attributes.callback_url' is required")
        if not _is_callback_url(url):
            return _error_response(422, "'callback_url' must be an http(s) URL with a host")
        kind = cast(CallbackKind, request.match_info["kind"])  # the route admits only these
        self.set_callback(account.access_key, kind, url)
        return web.Response(status=202)

    # -- delivery receipts ------------------------------------------------------------------------

    async def _deliver_receipts(self, message: AcceptedMessage, url: str) -> None:
        await asyncio.sleep(self.dlr_delay)
        await self._post_receipt(message, url, 1, "smsc submit", None, None)
        await asyncio.sleep(self.dlr_delay)
        await self._post_receipt(
            message, url, 2, self.dlr_status, self.dlr_status_code, self.dlr_description
        )

    async def _post_receipt(
        self,
        message: AcceptedMessage,
        url: str,
        level: int,
        status: str,
        code: int | str | None,
        description: str | None,
    ) -> None:
        attrs = message.attributes
        text = attrs.get("body")
        payload = dlr(
            message.id,
            level,
            status,
            code,
            form=self.dlr_form,
            body=text if isinstance(text, str) else "",
            to=attrs.get("to"),
            from_=attrs.get("from"),
            description=description,
            api_base=f"{self.base_url}/v2.2",
        )
        answer: int | None = None
        error: str | None = None
        try:
            if self.session is None:
                raise RuntimeError("sandbox is not started")
            async with self.session.post(
                url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                answer = response.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # receipts must never crash the sandbox
            error = f"{type(exc).__name__}: {exc}"
        message.status = status
        self.receipts.append(
            ReceiptPost(message.id, level, url, answer, error, time.time(), payload)
        )
