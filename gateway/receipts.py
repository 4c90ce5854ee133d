"""POST /<dlr path>/<token>: Flowroute delivery receipts for messages the bridge sent.

The token in the URL was signed by the outbound worker and names the request; a missing,
forged or altered token gets 403 and nothing is published. A valid receipt becomes a
`status.delivered`, `status.undelivered` or `status.progress` event carrying the raw level,
status and status code, answered 200 once the event is confirmed.
"""

from __future__ import annotations

from aiohttp import web

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


async def missing_token(_request: web.Request) -> web.Response:
    RECEIPTS.labels("forbidden").inc()
    return web.json_response({"error": "missing token"}, status=403)


async def receive_receipt(request: web.Request) -> web.Response:
    secret = request.app[CONFIG].gateway.dlr_secret
    try:
        if secret is None:
            raise receipt_token.BadToken("delivery receipts are not enabled (no dlr_secret)")
        ref = receipt_token.verify(secret.get_secret_value().encode(), request.match_info["token"])
    except receipt_token.BadToken as exc:
        RECEIPTS.labels("forbidden").inc()
        log.warning("delivery receipt refused", reason=str(exc), peer=request.remote)
        return web.json_response({"error": "invalid token"}, status=403)
    try:
        receipt = parse_receipt(decode_json(await request.read()))
    except NotJson as exc:
        RECEIPTS.labels("bad_json").inc()
        return web.json_response({"error": str(exc)}, status=400)
    except ReceiptError as exc:
        RECEIPTS.labels("not_receipt").inc()
        log.warning("delivery receipt refused", reason=str(exc), request_id=ref.request_id)
        return web.json_response({"error": f"not a delivery receipt: {exc}"}, status=422)
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
        )
    except PublishFailed as exc:
        RECEIPTS.labels("broker_unavailable").inc()
        log.warning("delivery receipt not stored, answered 503", error=str(exc))
        return web.json_response({"error": "broker unavailable"}, status=503)
    RECEIPTS.labels(receipt.status).inc()
    return web.json_response({"status": "accepted"})
