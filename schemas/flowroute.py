"""Flowroute's webhook bodies, as they really arrive (see FACTS.md: real payloads drift).

Lenient on purpose: amounts may be strings or numbers, bodies null, statuses empty, and
unknown fields appear; `extra="allow"` keeps them so the original is never lost.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | None


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class MessageAttributes(_Lenient):
    to: str = Field(min_length=1, max_length=32)
    from_: str = Field(alias="from", min_length=1, max_length=32)
    body: str | None = None
    is_mms: bool | None = None
    timestamp: str | None = None
    status: str | None = None
    direction: str | None = None
    amount_display: Scalar = None
    amount_nanodollars: Scalar = None
    message_encoding: Scalar = None
    message_type: str | None = None
    message_callback_url: str | None = None
    delivery_receipts: list[Any] | None = None


class MediaAttributes(_Lenient):
    url: str | None = None
    file_name: str | None = None
    file_size: Scalar = None
    mime_type: str | None = None


class IncludedMedia(_Lenient):
    type: str
    id: str | None = None
    attributes: MediaAttributes = Field(default_factory=MediaAttributes)


class MessageData(_Lenient):
    type: str = "message"
    id: str = Field(min_length=1, max_length=128)
    attributes: MessageAttributes
    relationships: dict[str, Any] | None = None


class JsonApiWebhook(_Lenient):
    """Inbound SMS/MMS, JSON:API form: `{"data": {...}, "included": [...]}`."""

    data: MessageData
    included: list[IncludedMedia] | None = None


class CompactWebhook(MessageAttributes):
    """Inbound SMS, compact form: `{"to", "from", "body", "id"}`."""

    id: str = Field(min_length=1, max_length=128)


class ReceiptAttributes(_Lenient):
    body: str | None = None
    level: Scalar = None
    status: str | None = None
    status_code: Scalar = None
    status_code_description: str | None = None
    timestamp: str | None = None


class ReceiptData(_Lenient):
    type: str = "delivery_receipt"
    id: str = Field(min_length=1, max_length=128)
    attributes: ReceiptAttributes = Field(default_factory=ReceiptAttributes)


class JsonApiReceipt(_Lenient):
    """Delivery receipt, JSON:API form."""

    data: ReceiptData


class CompactReceipt(ReceiptData):
    """Delivery receipt without the `data` wrapper."""
