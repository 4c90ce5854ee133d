"""POST /<url_prefix>: Flowroute's inbound SMS/MMS webhook (docs/contract.md, section 7).

200 only once the message is confirmed stored and routed in RabbitMQ; 200 again, without a
second publish, for an id already accepted; 503 when the broker cannot confirm in time
(Flowroute resends). Refusals: 400 (not JSON, or a body that cannot be decoded), 408 (body
not received within `gateway.body_timeout`), 413, 422, 404 (unknown prefix) and 403 (source
not in `allow_ips`, checked before anything else, on every path).

Every refusal is one rate-limited warning line (`gateway.refusals`). Refused bodies from an
allowed source are kept in the quarantine queue, truncated and rate-limited so that hostile
input cannot fill the broker's disk: see `gateway.quarantine` (worst case 10,000 × 32 KiB).
A refused source is answered 403 and nothing is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import quarantine
from gateway.refusals import REFUSALS, BodyError, closing, read_body
from gateway.state import BROKER, CONFIG, RECENT, SOURCES
from smsbridge import envelope, topology
from smsbridge.broker import PublishFailed
from smsbridge.flowroute.webhook import (
    NotJson,
    WebhookError,
    decode_json,
    parse_inbound,
    too_deep,
)
from smsbridge.logs import get_logger
from smsbridge.metrics import PUBLISH_CONFIRM_SECONDS, WEBHOOK_REQUESTS

log = get_logger(__name__)

_OK = b'{"status":"accepted"}'
_DUPLICATE = b'{"status":"duplicate"}'
_outcomes = {
    name: WEBHOOK_REQUESTS.labels(name)
    for name in (
        "accepted",
        "duplicate",
        "bad_json",
        "bad_body",
        "disconnected",
        "body_timeout",
        "not_message",
        "too_large",
        "forbidden",
        "unknown_prefix",
        "broker_unavailable",
    )
}
_confirm = PUBLISH_CONFIRM_SECONDS.labels("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def webhook_handler(prefix: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await receive(request, prefix)

    return handle


def source_allowed(request: web.Request) -> bool:
    """The allow-list, with every X-Forwarded-For line (a client can send its own first)."""
    sources = request.app[SOURCES]
    if not sources.enabled:
        return True
    return sources.allowed(request.remote, request.headers.getall("X-Forwarded-For", []))


async def receive(request: web.Request, prefix: str) -> web.StreamResponse:
    app = request.app
    if not source_allowed(request):
        return await refuse(request, 403, "forbidden", "source address not allowed", b"")
    gateway = app[CONFIG].gateway
    limit = gateway.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return await refuse(request, 413, "too_large", f"body over {limit} bytes", b"")
    try:
        raw = await read_body(request, gateway.body_timeout)
    except BodyError as exc:
        return closing(await refuse(request, exc.status, exc.outcome, exc.reason, b""))
    try:
        sms = parse_inbound(
            decode_json(raw), app[CONFIG].inbound.default_region, shallow=not too_deep(raw)
        )
    except NotJson as exc:
        return await refuse(request, 400, "bad_json", str(exc), raw)
    except WebhookError as exc:
        return await refuse(request, 422, "not_message", f"not a Flowroute message: {exc}", raw)

    recent = app[RECENT]
    if recent.done(sms.id):
        _outcomes["duplicate"].inc()
        return _json(200, _DUPLICATE)
    twin = recent.pending(sms.id)
    if twin is not None:  # the same id is being published right now: share its outcome
        if await asyncio.shield(twin):
            _outcomes["duplicate"].inc()
            return _json(200, _DUPLICATE)
        _outcomes["broker_unavailable"].inc()
        return _json(503, b'{"error":"broker unavailable"}')

    recent.begin(sms.id)
    ok = False
    try:
        body = envelope.wrap(raw, prefix, envelope.now_rfc3339())
        key = topology.MEDIA_KEY if sms.media else topology.INBOUND_KEY
        message = topology.json_message(body, message_id=sms.id, type_=envelope.TYPE)
        _confirm.observe(await app[BROKER].publish(topology.INTERNAL, key, message))
        ok = True
    except PublishFailed as exc:
        _outcomes["broker_unavailable"].inc()
        log.warning("webhook not stored, answered 503", message_id=sms.id, reason=str(exc))
        return _json(503, b'{"error":"broker unavailable"}')
    finally:
        recent.finish(sms.id, ok)
    _outcomes["accepted"].inc()
    return _json(200, _OK)


async def unknown_prefix(request: web.Request) -> web.StreamResponse:
    if not source_allowed(request):
        return await refuse(request, 403, "forbidden", "source address not allowed", b"")
    gateway = request.app[CONFIG].gateway
    raw = b""
    if (request.content_length or 0) <= gateway.max_body_bytes:
        try:
            raw = await read_body(request, gateway.body_timeout)
        except BodyError as exc:
            if exc.status == 408:
                return closing(await refuse(request, 408, exc.outcome, exc.reason, b""))
            return closing(await refuse(request, 404, "unknown_prefix", "unknown URL prefix", b""))
    return await refuse(request, 404, "unknown_prefix", "unknown URL prefix", raw)


async def refuse(
    request: web.Request, status: int, outcome: str, reason: str, raw: bytes
) -> web.Response:
    """Answer a refusal and log it (rate-limited); from an allowed source, keep (the head of)
    the body in the quarantine queue (rate-limited too). A 403 keeps nothing."""
    _outcomes[outcome].inc()
    if REFUSALS.allow(f"webhook {outcome}"):
        log.warning(
            "webhook refused",
            outcome=outcome,
            status=status,
            reason=reason,
            path=request.path[:200],
            peer=request.remote,
            size=len(raw),
        )
    if status != 403:
        original = request.content_length if status == 413 else None
        await quarantine.keep(request, status, reason, raw, original)
    return web.json_response({"error": reason}, status=status)
