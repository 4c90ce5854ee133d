"""A number's policy applied to an outbound request. The rules themselves are pure functions
(smsbridge/policies); this says when each applies and how a refusal reads.

- At intake: typographic quotes and dashes are replaced when the policy says
  `smart_quotes = "replace"`, segments are counted, and a destination country that is not
  allowed, or more segments than `max_segments`, blocks the request.
- Before each send: a recipient who opted out of the number blocks it; quiet hours make it
  wait (in a delay queue) until they end.

A blocked request gets `status.failed` with a reason naming the rule (and is `blocked` in the
ledger); nothing is wrong with it, so it is acked, not parked. The bridge's own reply to a
keyword is held back neither by the opt-out it confirms nor by quiet hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smsbridge.config import PolicyConfig
from smsbridge.policies import (
    count_segments,
    country_allowed,
    country_of,
    quiet_until,
    replace_smart_quotes,
    segments_saved,
)


@dataclass(frozen=True, slots=True)
class Prepared:
    body: str | None
    segments: int
    quotes_replaced: int = 0
    segments_saved: int = 0


def prepare(body: str | None, is_mms: bool, policy: PolicyConfig | None) -> Prepared:
    """The body to send and its segment count (an MMS is one)."""
    if not body:
        return Prepared(body, 1)
    replaced = saved = 0
    if policy is not None and policy.smart_quotes == "replace":
        new_body, replaced = replace_smart_quotes(body)
        saved = segments_saved(body, new_body)
        body = new_body
    segments = 1 if is_mms else count_segments(body).count
    return Prepared(body, segments, replaced, saved)


@dataclass(frozen=True, slots=True)
class Refusal:
    rule: str  # country, segments, opt_out (a metric label)
    reason: str  # for status.failed: names the policy and the rule


def refusal(to: str, segments: int, policy: PolicyConfig | None) -> Refusal | None:
    """Why intake blocks the request (destination country, length), or None."""
    if policy is None:
        return None
    if not country_allowed(to, policy.allowed_countries):
        country = country_of(to) or "unknown"
        allowed = ", ".join(policy.allowed_countries or []) or "none"
        return Refusal(
            "country",
            f"blocked by policy {policy.name}: destination country {country} is not allowed "
            f"(allowed_countries: {allowed})",
        )
    if policy.max_segments is not None and segments > policy.max_segments:
        return Refusal(
            "segments",
            f"blocked by policy {policy.name}: {segments} segments, over max_segments "
            f"{policy.max_segments}",
        )
    return None


def opted_out(number: str, recipient: str, policy: PolicyConfig) -> Refusal:
    return Refusal(
        "opt_out",
        f"blocked by policy {policy.name}: {recipient} opted out of {number} (texted STOP)",
    )


def quiet_hours_end(policy: PolicyConfig | None, now: datetime) -> datetime | None:
    """When the policy's quiet hours end, if `now` is inside them."""
    if policy is None or policy.quiet_hours is None:
        return None
    window = policy.quiet_hours
    return quiet_until(now, window.start, window.end, window.timezone)
