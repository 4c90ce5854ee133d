"""Signed delivery-receipt tokens: the dlr_callback URL names the request it belongs to.

Flowroute's receipts are not signed, so the URL is: `<payload>.<mac>`, both base64url, the
payload naming the request, account, attempt and expiry, the MAC an HMAC-SHA256 under
`gateway.dlr_secret`. A missing, forged, altered or expired token is refused (403) and nothing
is published.

The MAC domain is `smsbridge-dlr-v2`: v1 tokens (no expiry) never verify, so no token lives
forever. The sender sets `expires_at` to its send time plus `outbound.max_age_seconds` plus
`gateway.receipt_window_seconds`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field

import orjson

_DOMAIN = b"smsbridge-dlr-v2:"
MAX_TOKEN = 1024
# The lifetime of a ReceiptRef built without an explicit expiry: the configuration's defaults
# (outbound.max_age_seconds 6 h + gateway.receipt_window_seconds 3 days). The sender always
# passes its own.
DEFAULT_LIFETIME = 6 * 3600 + 3 * 86400
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class BadToken(ValueError):
    pass


def expiry(lifetime_seconds: float, now: float | None = None) -> int:
    """`expires_at` for a token issued now (integer epoch seconds)."""
    return int((time.time() if now is None else now) + lifetime_seconds)


@dataclass(frozen=True, slots=True)
class ReceiptRef:
    request_id: str
    account: str
    attempts: int
    expires_at: int = field(default_factory=lambda: expiry(DEFAULT_LIFETIME))
    segments: int = 1  # the message's, for the status events its receipts become


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return _b64(hmac.new(secret, _DOMAIN + payload, hashlib.sha256).digest()).encode()


def sign(secret: bytes, ref: ReceiptRef) -> str:
    payload = _b64(
        orjson.dumps([ref.request_id, ref.account, ref.attempts, ref.expires_at, ref.segments])
    )
    return f"{payload}.{_mac(secret, payload.encode()).decode()}"


def verify(secret: bytes, token: str, now: float | None = None) -> ReceiptRef:
    """The request a token names; BadToken when it is malformed, forged or expired."""
    if len(token) > MAX_TOKEN or not token.isascii():
        # compare_digest refuses non-ASCII str (TypeError): refuse such tokens up front.
        raise BadToken("malformed token")
    payload, dot, mac = token.partition(".")
    if not dot or not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(mac):
        raise BadToken("malformed token")
    if not hmac.compare_digest(mac.encode(), _mac(secret, payload.encode())):
        raise BadToken("bad signature")
    try:
        fields = orjson.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        raise BadToken("malformed payload") from None
    if not isinstance(fields, list) or len(fields) != 5:
        raise BadToken("malformed payload")
    request_id, account, attempts, expires_at, segments = fields
    if (
        not isinstance(request_id, str)
        or not isinstance(account, str)
        or type(attempts) is not int
        or type(expires_at) is not int
        or type(segments) is not int
    ):
        raise BadToken("malformed payload")
    if (time.time() if now is None else now) > expires_at:
        raise BadToken("expired")
    return ReceiptRef(request_id, account, attempts, expires_at, segments)
