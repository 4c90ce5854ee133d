"""Flowroute's messages API (POST and GET <api_url>/messages) and its error vocabulary.

Every answer to a send is classified into a small vocabulary that drives what the outbound
worker does: Sent (202), Transient (429, 5xx, connection errors, timeouts: retry),
AuthFailure (401/403: hold the account), Permanent (any other 4xx: fail the request).

A Transient is `in_doubt` when Flowroute may have accepted the message although we never saw
the 202 (a timeout, a connection lost after the request went out, a gateway timeout in front
of Flowroute). Flowroute has no idempotency key, so such a send is never simply retried: it is
first looked up in the account's message records (`matching_records`).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from smsbridge.config import ProviderConfig

RETRY_AFTER_CAP = 30.0
_HEADERS = {
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


@dataclass(frozen=True, slots=True)
class Sent:
    provider_id: str


class SendError(Exception):
    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.attempts = 0  # filled in by the sender: attempts made when it gave up


class Transient(SendError):
    def __init__(
        self,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        in_doubt: bool = False,
    ):
        super().__init__(reason, status)
        self.retry_after = retry_after
        self.in_doubt = in_doubt


class AuthFailure(SendError):
    """The account's keys are refused: nothing will send until they are fixed."""


class Permanent(SendError):
    """Flowroute refused this message for good (bad number, media too large, 10DLC, ...)."""


def message_body(
    to: str, from_: str, body: str | None, media_urls: list[str], dlr_callback: str | None
) -> dict[str, Any]:
    """The JSON:API body; numbers as E.164 digits without '+' (what Flowroute expects)."""
    attributes: dict[str, Any] = {"to": to.lstrip("+"), "from": from_.lstrip("+")}
    if body:
        attributes["body"] = body
    if media_urls:
        attributes["is_mms"] = True
        attributes["media_urls"] = media_urls
    if dlr_callback:
        attributes["dlr_callback"] = dlr_callback
    return {"data": {"type": "message", "attributes": attributes}}


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def error_detail(status: int, raw: bytes) -> str:
    """Flowroute's `errors[0].detail` (which may not be a string), else the status."""
    try:
        data = orjson.loads(raw)
        first = data["errors"][0]
        detail = first.get("detail")
        title = first.get("title")
        text = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
        if detail is None:
            text = str(title or "")
        return f"HTTP {status}: {text}"[:500] if text else f"HTTP {status}"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return f"HTTP {status}"


class FlowrouteClient:
    def __init__(self, session: aiohttp.ClientSession, provider: ProviderConfig) -> None:
        self.session = session
        self.url = f"{provider.api_url}/messages"
        credentials = (
            f"{provider.access_key.get_secret_value()}:{provider.secret_key.get_secret_value()}"
        )
        self._headers = {
            **_HEADERS,
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
        }

    def __repr__(self) -> str:  # never show the credentials
        return f"FlowrouteClient({self.url!r})"

    def headers(self) -> dict[str, str]:
        """Authentication and content type, for the account's other endpoints (callbacks)."""
        return dict(self._headers)

    async def check_auth(self) -> None:
        """Are the keys accepted? Lists one message record (another endpoint than sending, so
        it never sends anything nor counts against the send rate). Raises AuthFailure."""
        try:
            async with self.session.get(
                self.url, params={"limit": "1"}, headers=self._headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Transient(f"key probe failed: {type(exc).__name__}") from None
        if status in (401, 403):
            raise AuthFailure(error_detail(status, raw), status)

    async def send(self, payload: dict[str, Any]) -> Sent:
        try:
            async with self.session.post(
                self.url, data=orjson.dumps(payload), headers=self._headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise Transient("timeout waiting for Flowroute", in_doubt=True) from None
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            raise Transient(f"connection error: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:  # the request may have gone out (and been accepted)
            raise Transient(f"connection error: {type(exc).__name__}", in_doubt=True) from None
        except asyncio.CancelledError:
            raise
        if status in (200, 201, 202):
            try:
                provider_id = orjson.loads(raw)["data"]["id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                provider_id = None
            if not isinstance(provider_id, str) or not provider_id:
                # Accepted, most likely: look it up in the records rather than resend it.
                raise Transient(f"HTTP {status} without a message id", in_doubt=True) from None
            return Sent(provider_id)
        reason = error_detail(status, raw)
        if status == 429 or status >= 500:
            # A proxy's 502/504 may hide a send that reached Flowroute.
            raise Transient(reason, status, retry_after, in_doubt=status in (502, 504))
        if status in (401, 403):
            raise AuthFailure(reason, status)
        raise Permanent(reason, status)

    async def records(
        self, since: datetime, until: datetime, *, page_size: int = 200, max_pages: int = 1000
    ) -> list[Any]:
        """The account's message records in [since, until), every page. Raises Transient or
        AuthFailure when they cannot be read, Transient when there are more than `max_pages`
        pages (a listing cut short would call sends that are in it "not accepted")."""
        params: dict[str, str] | None = {
            "start_date": _rfc3339(since),
            "end_date": _rfc3339(until),
            "limit": str(page_size),
        }
        url = self.url
        found: list[Any] = []
        for _page in range(max_pages):  # bounded: a runaway `next` link must not loop forever
            try:
                async with self.session.get(url, params=params, headers=self._headers) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise Transient(f"message records not readable: {type(exc).__name__}") from None
            if status in (401, 403):
                raise AuthFailure(error_detail(status, raw), status)
            if status != 200:
                raise Transient(f"message records: {error_detail(status, raw)}", status)
            try:
                page = orjson.loads(raw)
                records = page["data"]
                next_url = (page.get("links") or {}).get("next")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise Transient("message records: unreadable answer") from None
            if isinstance(records, list):
                found.extend(records)
            if not next_url:
                return found
            url, params = str(next_url), None
        raise Transient(f"message records: more than {max_pages} pages of {page_size}")


def matching_records(
    records: Iterable[Any], attributes: dict[str, Any], *, not_before: datetime | None = None
) -> list[str]:
    """Among `records` (Flowroute's message records), the ids of the outbound ones with the
    same to, from and body as `attributes` (what was POSTed) stamped no earlier than
    `not_before` (an older one is another send of the same text), earliest first; those whose
    timestamp cannot be read come last."""
    found = [m for m in (_matching_record(r, attributes) for r in records) if m]
    if not_before is not None:
        found = [m for m in found if m[0] is None or m[0] >= not_before]
    dated = sorted((when, record_id) for when, record_id in found if when is not None)
    return [record_id for _, record_id in dated] + [r for when, r in found if when is None]


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _matching_record(record: Any, attributes: dict[str, Any]) -> tuple[datetime | None, str] | None:
    """(timestamp, id) of a record that is the send of `attributes`, else None."""
    if not isinstance(record, dict) or not isinstance(record.get("attributes"), dict):
        return None
    record_id = record.get("id")
    found = record["attributes"]
    if not isinstance(record_id, str):
        return None
    if str(found.get("direction", "outbound")) != "outbound":
        return None
    for key in ("to", "from"):
        if str(found.get(key) or "").lstrip("+") != str(attributes.get(key) or "").lstrip("+"):
            return None
    if (found.get("body") or "") != (attributes.get("body") or ""):
        return None
    return _timestamp(found.get("timestamp")), record_id


def _timestamp(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
