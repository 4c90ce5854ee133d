"""The messages smsbridge exchanges with PBX services (the public contract, v1.1).

These models are the single source of truth: the JSON Schemas in `schemas/json/` and the
AsyncAPI document are generated from them (`python -m schemas.generate`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.names import (
    INBOUND_MESSAGE_TYPE,
    OUTBOUND_REQUEST_TYPE,
    POLICY_TYPE,
    STATUS_TYPE,
)

__all__ = [
    "INBOUND_MESSAGE_TYPE",
    "OUTBOUND_REQUEST_TYPE",
    "POLICY_TYPE",
    "STATUS_TYPE",
    "InboundMessage",
    "Keyword",
    "MediaItem",
    "OutboundRequest",
    "PolicyEvent",
    "Status",
    "StatusEvent",
]

Status = Literal["sent", "delivered", "undelivered", "progress", "failed"]
Keyword = Literal["stop", "start", "help"]


class MediaItem(BaseModel):
    """One MMS attachment as stored by the bridge."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(description="The bridge's /media/<key> URL; null if not fetched")
    content_type: str | None = None
    file_name: str | None = None
    size: int | None = Field(default=None, description="Bytes stored (after decompression)")
    sha256: str | None = Field(default=None, description="Hex digest of the stored bytes")
    error: str | None = Field(default=None, description="Why the item could not be fetched")


class InboundMessage(BaseModel):
    """An SMS/MMS received from Flowroute, for the PBX (routing key `inbound.<destination>`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(description="Flowroute's message id (mdr2-...)")
    provider: str | None = Field(description="The provider account's configured name")
    from_: str = Field(alias="from", description="E.164 with +")
    to: str = Field(description="E.164 with +")
    body: str = Field(description='The text; "" when Flowroute sent none')
    destination: str | None = Field(description="The number's destination; null when unrouted")
    number_name: str | None = None
    sent_at: datetime | None = Field(description="Flowroute's timestamp, UTC")
    received_at: datetime = Field(description="When the bridge accepted the webhook, UTC")
    media: list[MediaItem] = Field(default_factory=list)
    provider_attributes: dict[str, Any] = Field(default_factory=dict)
    keyword: Keyword | None = Field(
        default=None,
        description="The opt-out keyword the body is (STOP, START or HELP families), when the "
        "number's policy honours them; null otherwise",
    )


class OutboundRequest(BaseModel):
    """A PBX service's request to send an SMS/MMS (exchange smsbridge.outbound, key `send`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(min_length=1, max_length=128, description="The caller's id")
    to: str = Field(min_length=1, max_length=32, description="E.164, + optional")
    from_: str | None = Field(default=None, alias="from", max_length=32)
    extension: str | None = Field(default=None, max_length=64)
    body: str | None = None
    media_urls: list[str] = Field(default_factory=list, max_length=10)

    @field_validator("media_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"media URL must be http(s): {url[:80]!r}")
        return urls

    @model_validator(mode="after")
    def _rules(self) -> OutboundRequest:
        if not self.from_ and not self.extension:
            raise ValueError("one of 'from' and 'extension' is required")
        if not self.body and not self.media_urls:
            raise ValueError("'body' is required unless 'media_urls' is non-empty")
        return self

    @property
    def is_mms(self) -> bool:
        return bool(self.media_urls)


class StatusEvent(BaseModel):
    """What happened to an OutboundRequest (routing key `status.<status>`)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The OutboundRequest id")
    status: Status
    provider_id: str | None = None
    reason: str | None = None
    attempts: int = 0
    provider_status: str | None = None
    provider_status_code: str | int | None = None
    level: int | None = None
    at: datetime
    segments: int | None = Field(
        default=None,
        description="SMS segments of the message as carriers count them (GSM-7: 160, or 153 "
        "per part; UCS-2: 70, or 67 per part; MMS: 1); set on every event of a sent message",
    )


class PolicyEvent(BaseModel):
    """A recipient opted out of (or back in to) one of our numbers, by keyword (routing key
    `policy.opted_out` / `policy.opted_in`)."""

    model_config = ConfigDict(extra="forbid")

    number: str = Field(description="Our number, E.164 with +")
    recipient: str = Field(description="Their number, E.164 with +")
    keyword: Keyword = Field(description="The keyword family they texted: stop or start")
    at: datetime
