"""POST /<url_prefix>: Flowroute's inbound SMS/MMS webhook (CONTRACT §2).

200 only once the message is confirmed stored and routed in RabbitMQ; 200 again, without a
second publish, for an id already accepted; 400/413/422/403/404 refusals are logged and
kept in the quarantine queue; 503 when the broker cannot confirm in time (Flowroute resends).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.state import BROKER, CONFIG, RECENT, SOURCES
from smsbridge import envelope, topology
from smsbridge.broker import PublishFailed
from smsbridge.flowroute.webhook import NotJson, WebhookError, decode_json, parse_inbound
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


async def receive(request: web.Request, prefix: str) -> web.StreamResponse:
    app = request.app
    sources = app[SOURCES]
    if sources.enabled and not sources.allowed(
        request.remote, request.headers.get("X-Forwarded-For")
    ):
        return await refuse(request, 403, "forbidden", "source address not allowed", b"")
    limit = app[CONFIG].gateway.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return await refuse(request, 413, "too_large", f"body over {limit} bytes", b"")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return await refuse(request, 413, "too_large", f"body over {limit} bytes", b"")
    try:
        sms = parse_inbound(decode_json(raw), app[CONFIG].inbound.default_region)
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
    raw = b""
    if (request.content_length or 0) <= request.app[CONFIG].gateway.max_body_bytes:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = b""
    return await refuse(request, 404, "unknown_prefix", "unknown URL prefix", raw)


async def refuse(
    request: web.Request, status: int, outcome: str, reason: str, raw: bytes
) -> web.Response:
    """Answer a refusal, log it, and keep the body in the bounded quarantine queue."""
    _outcomes[outcome].inc()
    log.warning(
        "webhook refused",
        status=status,
        reason=reason,
        path=request.path,
        peer=request.remote,
        size=len(raw),
    )
    headers: dict[str, Any] = {
        topology.H_REASON: reason[:500],
        "x-smsbridge-http-status": status,
        "x-smsbridge-path": request.path[:200],
        "x-smsbridge-peer": request.remote or "",
        topology.H_PARKED_AT: envelope.now_rfc3339(),
    }
    message = topology.json_message(
        raw, message_id=f"quarantine-{uuid.uuid4().hex}", headers=headers
    )
    try:
        await request.app[BROKER].publish(topology.PARKING, topology.QUARANTINE_KEY, message, 1.0)
    except PublishFailed as exc:
        log.warning("refused body not quarantined", error=str(exc))
    return web.json_response({"error": reason}, status=status)
