"""Flowroute's messaging API side: ``POST /v2.2/messages`` and ``GET /v2.2/messages/<id>``.

Checks Basic auth, validates bodies like Flowroute (JSON:API or compact form), rate limits per
access key per wall-clock second (SMS and MMS counted separately, every attempt counts), answers
202 with an ``mdr2-`` id, records what it accepted, and posts delivery receipts to
``dlr_callback``. Faults (status codes, latency, dropped connections) can be injected.
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
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from .media import MediaStore
from .payloads import Form, dlr, new_message_id

__all__ = [
    "MMS_BYTE_LIMIT",
    "AcceptedMessage",
    "AccountSpec",
    "Fault",
    "FlowrouteApi",
    "Kind",
    "ReceiptPost",
]

Kind = Literal["sms", "mms"]
MMS_BYTE_LIMIT: Final = 767_840
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
    deadline: float | None = None  # loop-independent monotonic deadline
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("deadline")
        return out


@dataclass(slots=True)
class AcceptedMessage:
    """A message ``POST /v2.2/messages`` answered 202 for."""

    id: str
    account: str
    kind: Kind
    attributes: dict[str, Any]
    auth_user: str
    received_at: float
    form: Form
    content_type: str
    status: str = "accepted"  # updated with each delivery receipt posted

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


class _Invalid(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


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
    ) -> Fault:
        if status is None and not drop and latency_ms <= 0:
            raise ValueError("a fault needs a status, drop=True or latency_ms > 0")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        if latency_ms < 0 or (seconds is not None and seconds < 0):
            raise ValueError("latency_ms and seconds must be >= 0")
        deadline = time.monotonic() + seconds if seconds is not None else None
        self.fault = Fault(
            status, count, seconds, latency_ms, drop, retry_after, detail, deadline=deadline
        )
        return self.fault

    def clear_faults(self) -> None:
        self.fault = None

    def reset(self) -> None:
        """Forget messages and receipts and zero all counters (accounts and faults stay)."""
        self.messages.clear()
        self._by_id.clear()
        self.receipts.clear()
        self.attempts = 0
        self.accepted = 0
        self.rate_limited = 0
        self.faulted = 0
        self.dropped = 0
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

    async def post_message(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        fault = self._take_fault()
        if fault is not None:
            if fault.latency_ms > 0:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.drop:
                self.dropped += 1
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client
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

    async def list_messages(self, request: web.Request) -> web.StreamResponse:
        """Flowroute's message list (the bridge probes held keys with ``?limit=1``)."""
        account = self._authenticate(request)
        if account is None:
            return _error_response(401, "Invalid credentials", "Unauthorized")
        try:
            limit = max(0, min(int(request.query.get("limit", "10")), 200))
        except ValueError:
            return _error_response(400, "limit must be an integer", "Bad Request")
        own = [m for m in self.messages if m.account == account.access_key][-limit:]
        data = [{"type": "message", "id": m.id} for m in own] if limit else []
        return web.json_response({"data": data, "links": {}})

    async def get_message(self, request: web.Request) -> web.StreamResponse:
        account = self._authenticate(request)
        if account is None:
            return _error_response(401, "Invalid credentials", "Unauthorized")
        message = self._by_id.get(request.match_info["id"])
        if message is None or message.account != account.access_key:
            return _error_response(404, "Message not found", "Not Found")
        attrs = message.attributes
        text = attrs.get("body")
        record = {
            "data": {
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
                    "timestamp": datetime.fromtimestamp(message.received_at, UTC).isoformat(),
                },
                "links": {"self": f"{self.base_url}/v2.2/messages/{message.id}"},
            }
        }
        return web.Response(body=orjson.dumps(record), content_type=JSONAPI)

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
