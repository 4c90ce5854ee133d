"""Refused webhook bodies kept for inspection in `smsbridge.quarantine`, with bounded bytes.

The queue's arguments cannot change (deployments declared it already: 10,000 messages,
oldest dropped first), so the bytes are bounded here, before anything is published:

- only a source that passes `gateway.allow_ips` is kept at all: a refused source gets 403
  and nothing is kept (the callers check the source first);
- at most the first `KEEP_BYTES` (32 KiB) of a body are kept; the original size and
  whether it was truncated go in the headers `x-smsbridge-original-size` and
  `x-smsbridge-truncated`;
- at most `RATE` (20) bodies a second per gateway are kept, with bursts of `BURST` (20);
  the rest are counted in `smsbridge_quarantine_total{outcome="rate_limited"}` and dropped.

Worst case on the broker: 10,000 messages × (32 KiB of body + under 1 KiB of headers), about
330 MiB, where it was 10,000 × 1 MiB (about 10 GiB) before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from gateway.refusals import REFUSALS
from gateway.state import BROKER
from smsbridge import envelope, topology
from smsbridge.broker import PublishFailed
from smsbridge.logs import get_logger
from smsbridge.metrics import QUARANTINE

log = get_logger(__name__)

KEEP_BYTES: Final = 32 * 1024
RATE: Final = 20.0
BURST: Final = 20.0
H_ORIGINAL_SIZE: Final = "x-smsbridge-original-size"
H_TRUNCATED: Final = "x-smsbridge-truncated"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` spends one if there is one."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


QUARANTINE_BUCKET = web.AppKey("quarantine_bucket", TokenBucket)


def new_bucket() -> TokenBucket:
    return TokenBucket(RATE, BURST)


async def keep(
    request: web.Request, status: int, reason: str, raw: bytes, original_size: int | None = None
) -> None:
    """Publish (the head of) a refused body to the quarantine queue, if the rate allows."""
    if not request.app[QUARANTINE_BUCKET].take():
        QUARANTINE.labels("rate_limited").inc()
        return
    size = len(raw) if original_size is None else original_size
    truncated = len(raw) > KEEP_BYTES or size > len(raw)
    headers: dict[str, Any] = {
        topology.H_REASON: reason[:500],
        "x-smsbridge-http-status": status,
        "x-smsbridge-path": request.path[:200],
        "x-smsbridge-peer": request.remote or "",
        topology.H_PARKED_AT: envelope.now_rfc3339(),
        H_ORIGINAL_SIZE: size,
        H_TRUNCATED: truncated,
    }
    message = topology.json_message(
        raw[:KEEP_BYTES], message_id=f"quarantine-{uuid.uuid4().hex}", headers=headers
    )
    try:
        await request.app[BROKER].publish(topology.PARKING, topology.QUARANTINE_KEY, message, 1.0)
    except PublishFailed as exc:
        QUARANTINE.labels("broker_unavailable").inc()
        if REFUSALS.allow("quarantine broker_unavailable"):
            log.warning("refused body not quarantined", error=str(exc))
        return
    QUARANTINE.labels("truncated" if truncated else "kept").inc()
