"""POST /<dlr path>/<token>: Flowroute delivery receipts for messages the bridge sent.

The token in the URL was signed by the outbound worker and names the request; a missing,
forged, altered or expired token gets 403 and nothing is published. A body that cannot be read
gets 400 (undecodable Content-Encoding) or 408 (slower than `gateway.body_timeout`), and a
receipt with an unusable field 422: never a 500. Refusals are logged rate-limited.

A valid receipt becomes a `status.delivered`, `status.undelivered` or `status.progress` event
carrying the raw level, status and status code, answered 200 once the event is confirmed.
"""

from __future__ import annotations

from aiohttp import web

from gateway.refusals import REFUSALS, BodyError, closing, read_body
from gateway.state import BROKER, CONFIG
from smsbridge import receipt_token
from smsbridge.broker import PublishFailed
from smsbridge.config import Config
from smsbridge.flowroute.receipts import ReceiptError, parse_receipt
from smsbridge.flowroute.webhook import NotJson, decode_json
from smsbridge.logs import get_logger
from smsbridge.metrics import RECEIPTS
from smsbridge.status import publish_status

log = get_logger(__name__)


def add_routes(app: web.Application, config: Config) -> None:
    path = config.gateway.dlr_path
    app.router.add_post(f"/{path}/{{token}}", receive_receipt)
    app.router.add_post(f"/{path}", missing_token)
    app.router.add_post(f"/{path}/", missing_token)


def _refuse(
    request: web.Request, status: int, outcome: str, reason: str, **fields: str
) -> web.Response:
    RECEIPTS.labels(outcome).inc()
    if REFUSALS.allow(f"dlr {outcome}"):
        log.warning(
            "delivery receipt refused",
            outcome=outcome,
            status=status,
            reason=reason,
            peer=request.remote,
            **fields,
        )
    return web.json_response({"error": reason}, status=status)


async def missing_token(request: web.Request) -> web.Response:
    return _refuse(request, 403, "forbidden", "missing token")


async def receive_receipt(request: web.Request) -> web.Response:
    gateway = request.app[CONFIG].gateway
    secret = gateway.dlr_secret
    try:
        if secret is None:
            raise receipt_token.BadToken("delivery receipts are not enabled (no dlr_secret)")
        ref = receipt_token.verify(secret.get_secret_value().encode(), request.match_info["token"])
    except receipt_token.BadToken as exc:
        RECEIPTS.labels("forbidden").inc()
        if REFUSALS.allow("dlr forbidden"):
            log.warning(
                "delivery receipt refused",
                outcome="forbidden",
                status=403,
                reason=str(exc),
                peer=request.remote,
            )
        return web.json_response({"error": "invalid token"}, status=403)
    try:
        receipt = parse_receipt(decode_json(await read_body(request, gateway.body_timeout)))
    except BodyError as exc:
        return closing(
            _refuse(request, exc.status, exc.outcome, exc.reason, request_id=ref.request_id)
        )
    except NotJson as exc:
        return _refuse(request, 400, "bad_json", str(exc), request_id=ref.request_id)
    except ReceiptError as exc:
        return _refuse(
            request, 422, "not_receipt", f"not a delivery receipt: {exc}", request_id=ref.request_id
        )
    reason = None
    if receipt.status == "undelivered":
        reason = receipt.description or receipt.provider_status
    try:
        await publish_status(
            request.app[BROKER],
            ref.request_id,
            receipt.status,
            provider_id=receipt.provider_id,
            reason=reason,
            attempts=ref.attempts,
            provider_status=receipt.provider_status,
            provider_status_code=receipt.provider_status_code,
            level=receipt.level,
            segments=ref.segments,
            timeout=request.app[CONFIG].broker.publish_timeout,  # answer 503 in time
        )
    except PublishFailed as exc:
        RECEIPTS.labels("broker_unavailable").inc()
        log.warning("delivery receipt not stored, answered 503", error=str(exc))
        return web.json_response({"error": "broker unavailable"}, status=503)
    RECEIPTS.labels(receipt.status).inc()
    return web.json_response({"status": "accepted"})
