"""The internal message between the gateway, the media worker and the resolver.

It carries Flowroute's webhook exactly as received (so nothing is lost or reinterpreted),
when the bridge accepted it, the URL prefix it came in on, and, after the media worker, the
stored media.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

TYPE = "smsbridge.internal.webhook.v1"


class EnvelopeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Envelope:
    received_at: str
    prefix: str
    webhook: Any
    media: list[dict[str, Any]] | None = None  # the media worker's final word
    fetched: list[dict[str, Any]] | None = None  # its results so far, while it tries again

    def with_media(self, media: list[dict[str, Any]]) -> bytes:
        return self._dumps(media=media)

    def with_fetched(self, fetched: list[dict[str, Any]]) -> bytes:
        """For the media worker's next try: what it fetched so far (and what failed)."""
        return self._dumps(fetched=fetched)

    def _dumps(self, **extra: Any) -> bytes:
        return orjson.dumps(
            {"received_at": self.received_at, "prefix": self.prefix, "webhook": self.webhook}
            | extra
        )


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def now_rfc3339() -> str:
    """Now, as RFC 3339 UTC with milliseconds (the gateway stamps every webhook: a second's
    text is formatted once)."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


def wrap(raw_json: bytes, prefix: str, received_at: str) -> bytes:
    """Envelope a validated JSON body without re-serializing it (the gateway's hot path).

    `prefix` comes from the configuration (URL-safe characters only), `raw_json` was parsed.
    """
    return b'{"received_at":"%s","prefix":"%s","webhook":%s}' % (
        received_at.encode(),
        prefix.encode(),
        raw_json,
    )


def unwrap(body: bytes) -> Envelope:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or "webhook" not in data:
        raise EnvelopeError("not an smsbridge webhook envelope")
    media, fetched = data.get("media"), data.get("fetched")
    return Envelope(
        received_at=str(data.get("received_at") or now_rfc3339()),
        prefix=str(data.get("prefix") or ""),
        webhook=data["webhook"],
        media=media if isinstance(media, list) else None,
        fetched=fetched if isinstance(fetched, list) else None,
    )
