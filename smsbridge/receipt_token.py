"""Signed delivery-receipt tokens: the dlr_callback URL names the request it belongs to.

Flowroute's receipts are not signed, so the URL is: `<payload>.<mac>`, both base64url, the
payload naming the account and request, the MAC an HMAC-SHA256 under `gateway.dlr_secret`.
A missing, forged or altered token is refused (403) and nothing is published.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson


class BadToken(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ReceiptRef:
    request_id: str
    account: str
    attempts: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, b"smsbridge-dlr-v1:" + payload.encode(), hashlib.sha256).digest())


def sign(secret: bytes, ref: ReceiptRef) -> str:
    payload = _b64(orjson.dumps([ref.request_id, ref.account, ref.attempts]))
    return f"{payload}.{_mac(secret, payload)}"


def verify(secret: bytes, token: str) -> ReceiptRef:
    payload, dot, mac = token.partition(".")
    if not dot or not payload or len(token) > 1024:
        raise BadToken("malformed token")
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise BadToken("bad signature")
    try:
        request_id, account, attempts = orjson.loads(_unb64(payload))
    except (ValueError, TypeError):
        raise BadToken("malformed payload") from None
    if not isinstance(request_id, str) or not isinstance(account, str):
        raise BadToken("malformed payload")
    return ReceiptRef(request_id, account, int(attempts))
