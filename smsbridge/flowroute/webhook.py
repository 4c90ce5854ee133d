"""Inbound SMS/MMS webhooks: both body forms and the drift real traffic shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.flowroute import CompactWebhook, JsonApiWebhook, MessageAttributes
from smsbridge.phone import NumberError, normalize_sender, to_e164


class NotJson(ValueError):
    """The body is not JSON at all (HTTP 400)."""


class WebhookError(ValueError):
    """JSON that is not a Flowroute message (HTTP 422)."""


@dataclass(frozen=True, slots=True)
class MediaRef:
    url: str | None
    file_name: str | None
    content_type: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class InboundSms:
    id: str
    to: str  # E.164 with '+'
    from_: str  # E.164 with '+', or a short code's digits
    body: str
    sent_at: datetime | None
    media: tuple[MediaRef, ...]
    attributes: dict[str, Any]  # the provider's original attributes, untouched

    @property
    def is_mms(self) -> bool:
        return bool(self.media)


def decode_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotJson(f"body is not JSON: {exc}") from None


# Flowroute's bodies nest a few levels; a body nested deeper than this is not one of theirs
# (and past 254 levels it could be read but not written again, failing later workers).
MAX_DEPTH = 32


def parse_inbound(obj: Any, region: str = "US", *, shallow: bool = False) -> InboundSms:
    """`shallow`: the caller knows the body cannot nest too deeply (`too_deep`)."""
    if not isinstance(obj, dict):
        raise WebhookError("body is not a JSON object")
    if not shallow and _depth(obj) > MAX_DEPTH:
        raise WebhookError(f"body nested more than {MAX_DEPTH} levels deep")
    try:
        if "data" in obj:
            return _from_jsonapi(obj, region)
        return _from_compact(obj, region)
    except ValidationError as exc:
        raise WebhookError(_first_error(exc)) from None
    except NumberError as exc:
        raise WebhookError(str(exc)) from None


def too_deep(raw: bytes) -> bool:
    """Whether a JSON body may nest deeper than MAX_DEPTH: never with fewer opening brackets
    than that (the gateway's quick answer for every ordinary body)."""
    return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH


def _depth(obj: Any) -> int:
    """How deeply `obj` nests lists and objects (iterative: any depth is safe to measure)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_timestamp(value: object) -> datetime | None:
    """Flowroute's timestamps come as ...00Z, ...980000Z or +00:00; anything else is None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+01:00
        return None


def _from_jsonapi(obj: dict[str, Any], region: str) -> InboundSms:
    hook = JsonApiWebhook.model_validate(obj)
    if hook.data.type != "message":
        raise WebhookError(f"data.type is {hook.data.type!r}, not 'message'")
    media = tuple(
        MediaRef(
            url=item.attributes.url,
            file_name=item.attributes.file_name,
            content_type=item.attributes.mime_type,
            size=_int_or_none(item.attributes.file_size),
        )
        for item in hook.included or ()
        if item.type == "media"
    )
    return _build(hook.data.id, hook.data.attributes, obj["data"]["attributes"], media, region)


def _from_compact(obj: dict[str, Any], region: str) -> InboundSms:
    hook = CompactWebhook.model_validate(obj)
    urls = obj.get("media_urls")
    media = tuple(
        MediaRef(url=url, file_name=None, content_type=None, size=None)
        for url in (urls if isinstance(urls, list) else ())
        if isinstance(url, str)
    )
    return _build(hook.id, hook, obj, media, region)  # compact: the whole body is the attributes


def _build(
    message_id: str,
    attrs: MessageAttributes,
    original: dict[str, Any],
    media: tuple[MediaRef, ...],
    region: str,
) -> InboundSms:
    return InboundSms(
        id=message_id,
        to=to_e164(attrs.to, region),
        from_=normalize_sender(attrs.from_, region),
        body=attrs.body or "",
        sent_at=parse_timestamp(attrs.timestamp),
        media=media,
        attributes=original,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
