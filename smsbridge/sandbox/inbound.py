"""Posting inbound webhooks to a gateway the way Flowroute does (with its resend behaviour)."""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

from .payloads import Form

__all__ = ["InboundKind", "InboundMedia", "InboundResult", "deliver", "parse_media"]

InboundKind = Literal["sms", "mms"]


@dataclass(frozen=True, slots=True)
class InboundMedia:
    """A media item for an inbound MMS the sandbox sends.

    Without ``url`` the sandbox registers ``data`` (or ``media_bytes(name, size, content_type)``
    when ``data`` is None) and points the webhook at its own ``/media/`` URL. With ``url`` the
    webhook references that URL as is (e.g. ``<sandbox>/media/_expired/x.jpg``) and ``size``
    is reported as ``file_size``.
    """

    name: str
    content_type: str = "image/jpeg"
    size: int = 1024
    url: str | None = None
    data: bytes | None = None


def parse_media(item: InboundMedia | Mapping[str, Any]) -> InboundMedia:
    """Accept an ``InboundMedia`` or a JSON mapping ``{name, content_type, size, url}``."""
    if isinstance(item, InboundMedia):
        return item
    name = item.get("name")
    guessed = mimetypes.guess_type(name)[0] if isinstance(name, str) else None
    content_type = item.get("content_type", guessed or "application/octet-stream")
    size = item.get("size", 1024)
    url = item.get("url")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError("media item needs a 'name' without '/'")
    if not isinstance(content_type, str):
        raise ValueError("media 'content_type' must be a string")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 64 << 20:
        raise ValueError("media 'size' must be an integer between 0 and 64 MiB")
    if url is not None and not isinstance(url, str):
        raise ValueError("media 'url' must be a string")
    return InboundMedia(name, content_type, size, url)


@dataclass(slots=True)
class InboundResult:
    """What happened when the sandbox posted one inbound webhook."""

    message_id: str
    gateway_url: str
    kind: InboundKind
    form: Form
    payload: dict[str, Any] = field(repr=False)
    media_urls: list[str] = field(default_factory=list)
    statuses: list[int | None] = field(default_factory=list)  # one per attempt; None = no answer
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        """The gateway's last answer status (None if it never answered)."""
        return self.statuses[-1] if self.statuses else None

    @property
    def attempts(self) -> int:
        return len(self.statuses)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        out["attempts"] = self.attempts
        return out


async def deliver(
    session: aiohttp.ClientSession,
    result: InboundResult,
    *,
    max_attempts: int,
    interval: float,
) -> InboundResult:
    """POST ``result.payload`` until the gateway answers 200, at most ``max_attempts`` times."""
    data = orjson.dumps(result.payload)
    headers = {"Content-Type": "application/json"}
    for attempt in range(max(1, max_attempts)):
        if attempt:
            await asyncio.sleep(interval)
        status: int | None = None
        try:
            async with session.post(result.gateway_url, data=data, headers=headers) as response:
                await response.read()
                status = response.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no answer: Flowroute resends
            result.errors.append(f"{type(exc).__name__}: {exc}")
        result.statuses.append(status)
        if status == 200:
            break
    return result
