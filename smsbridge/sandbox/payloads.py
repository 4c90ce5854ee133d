"""Builders for the bodies Flowroute sends: inbound SMS/MMS webhooks and delivery receipts.

Shapes follow Flowroute's documentation and captured payloads (JSON:API form with a ``data``
wrapper, and the compact form without it). Numbers are written without the leading ``+``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "DEFAULT_API_BASE",
    "Form",
    "MediaSpec",
    "dlr",
    "inbound_mms",
    "inbound_sms",
    "is_message_id",
    "media_id",
    "new_message_id",
    "segments",
]

Form = Literal["jsonapi", "compact"]

DEFAULT_API_BASE = "https://api.flowroute.com/v2.2"

SMS_NANODOLLARS_PER_SEGMENT = 7_000_000
MMS_NANODOLLARS = 19_500_000

_DLR_DESCRIPTIONS: dict[str, str] = {
    "smsc submit": "Message has been sent",
    "message buffered": "Message accepted by Carrier",
    "delivery success": "Message delivered to handset",
    "delivery failure": "Message delivery failed",
    "smsc reject": "Message rejected by carrier",
}


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """One media item of an inbound MMS (an entry of ``included[]``)."""

    url: str
    file_name: str
    mime_type: str
    file_size: int
    id: str | None = None  # Flowroute style: "551234567890-photo.jpg"; derived when None


def new_message_id() -> str:
    """A Flowroute message id: ``mdr2-`` followed by 32 lowercase hex digits."""
    return "mdr2-" + os.urandom(16).hex()


def is_message_id(value: str) -> bool:
    hexpart = value[5:]
    return (
        value.startswith("mdr2-")
        and len(hexpart) == 32
        and all(c in "0123456789abcdef" for c in hexpart)
    )


def _digits(number: str) -> str:
    return number[1:] if number.startswith("+") else number


def _inbound_timestamp(now: datetime | None = None) -> str:
    """UTC timestamp in the style of captured inbound payloads: ``2026-11-20T17:03:11.52Z``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 10000:02d}Z"


def _dlr_timestamp(now: datetime | None = None) -> str:
    """UTC timestamp in the style of captured receipts: ``2026-11-20T17:20:01+00:00``."""
    now = now or datetime.now(UTC)
    return now.replace(microsecond=0).isoformat()


def _encoding(body: str | None) -> int:
    return 0 if body is None or body.isascii() else 8


def segments(body: str | None) -> int:
    """Billed segments: ASCII up to 160 is one, then 140 each; any non-ASCII: 70 each."""
    if not body:
        return 1
    if body.isascii():
        return 1 if len(body) <= 160 else math.ceil(len(body) / 140)
    return math.ceil(len(body) / 70)


def _amount(nanodollars: int) -> tuple[str, int]:
    return f"${nanodollars / 1e9:.4f}", nanodollars


def inbound_sms(
    to: str,
    from_: str,
    body: str,
    *,
    form: Form = "jsonapi",
    message_id: str | None = None,
    message_type: str = "longcode",
    callback_url: str | None = None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    """The webhook body Flowroute posts for an inbound SMS."""
    mid = message_id or new_message_id()
    if form == "compact":
        return {"to": _digits(to), "body": body, "from": _digits(from_), "id": mid}
    if form != "jsonapi":
        raise ValueError(f"unknown form {form!r}")
    display, nano = _amount(SMS_NANODOLLARS_PER_SEGMENT * segments(body))
    attributes: dict[str, Any] = {
        "amount_display": display,
        "amount_nanodollars": nano,
        "body": body,
        "delivery_receipts": [],
        "direction": "inbound",
        "from": _digits(from_),
        "is_mms": False,
        "message_encoding": _encoding(body),
        "message_type": message_type,
        "status": "delivered",
        "timestamp": timestamp or _inbound_timestamp(),
        "to": _digits(to),
    }
    if callback_url is not None:
        attributes["message_callback_url"] = callback_url
    return {"data": {"type": "message", "id": mid, "attributes": attributes}}


def media_id(message_id: str, file_name: str, index: int) -> str:
    """A Flowroute-style media id (``<12 digits>-<file name>``), stable for a message."""
    seed = int(message_id[5:17], 16) if is_message_id(message_id) else 0
    return f"{str(seed).zfill(10)[:10]}{index % 100:02d}-{file_name}"


def inbound_mms(
    to: str,
    from_: str,
    body: str | None,
    media: list[MediaSpec],
    *,
    message_id: str | None = None,
    message_type: str = "longcode",
    callback_url: str | None = None,
    timestamp: str | None = None,
    api_base: str = DEFAULT_API_BASE,
) -> dict[str, Any]:
    """The webhook body Flowroute posts for an inbound MMS (JSON:API form, media in included)."""
    mid = message_id or new_message_id()
    display, nano = _amount(MMS_NANODOLLARS)
    attributes: dict[str, Any] = {
        "amount_display": display,
        "amount_nanodollars": nano,
        "body": body,
        "delivery_receipts": [],
        "direction": "inbound",
        "from": _digits(from_),
        "is_mms": True,
        "message_encoding": _encoding(body),
        "message_type": message_type,
        "status": "",
        "timestamp": timestamp or _inbound_timestamp(),
        "to": _digits(to),
    }
    if callback_url is not None:
        attributes["message_callback_url"] = callback_url
    refs: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    for index, item in enumerate(media):
        item_id = item.id or media_id(mid, item.file_name, index)
        refs.append({"type": "media", "id": item_id})
        included.append(
            {
                "type": "media",
                "id": item_id,
                "attributes": {
                    "file_name": item.file_name,
                    "file_size": item.file_size,
                    "mime_type": item.mime_type,
                    "url": item.url,
                },
                "links": {"self": f"{api_base}/media/{item_id}"},
            }
        )
    return {
        "data": {
            "type": "message",
            "id": mid,
            "attributes": attributes,
            "relationships": {"media": {"data": refs}},
        },
        "included": included,
    }


def dlr(
    message_id: str,
    level: int,
    status: str,
    status_code: int | str | None,
    *,
    form: Form = "jsonapi",
    body: str = "",
    to: str | None = None,
    from_: str | None = None,
    description: str | None = None,
    timestamp: str | None = None,
    api_base: str = DEFAULT_API_BASE,
) -> dict[str, Any]:
    """A delivery receipt as Flowroute posts it to a ``dlr_callback``.

    JSON:API form (``dlr.jsonapi.json`` / ``dlr.level1.jsonapi.json``) or the compact form
    without the ``data`` wrapper (``dlr.compact.json``).
    """
    if form == "compact":
        attrs: dict[str, Any] = {}
        if to is not None:
            attrs["to"] = _digits(to)
        if from_ is not None:
            attrs["from"] = _digits(from_)
        attrs["body"] = body
        attrs["status"] = status
        if status_code is not None:
            attrs["status_code"] = status_code
        return {"type": "delivery_receipt", "id": message_id, "attributes": attrs}
    if form != "jsonapi":
        raise ValueError(f"unknown form {form!r}")
    return {
        "data": {
            "type": "delivery_receipt",
            "id": message_id,
            "attributes": {
                "body": body,
                "level": level,
                "status": status,
                "status_code": status_code,
                "status_code_description": description
                or _DLR_DESCRIPTIONS.get(status, status.capitalize()),
                "timestamp": timestamp or _dlr_timestamp(),
            },
            "links": {"related": f"{api_base}/messages/{message_id}"},
        }
    }
