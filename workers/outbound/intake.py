"""Outbound intake (`smsbridge.outbound.requests`, any replica): an OutboundRequest from the PBX
becomes a send job on its provider account's queue.

It validates the request against the contract's rules, picks the sending number (from `from`,
or from `extension` through the numbers' `source` lists), normalizes `to`, and refuses locally
an MMS that Flowroute would refuse for its size when the size is known. An invalid request
gets `status.failed` with a readable reason and is parked.
"""

from __future__ import annotations

import time
from typing import NoReturn

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from schemas.messages import OutboundRequest
from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.config import Config, NumberConfig
from smsbridge.media_store import MediaStore
from smsbridge.phone import NumberError, to_e164
from smsbridge.status import publish_status
from workers.consumer import Park
from workers.outbound import job as jobs

MMS_MAX_BYTES = 767_840  # Flowroute's limit for all media of one MMS, text included


class Invalid(Exception):
    """The request breaks a contract rule: never sent."""


def now_ms() -> int:
    # AMQP headers carry floats as 32-bit: epoch seconds would lose minutes. Integers are exact.
    return round(time.time() * 1000)


class Intake:
    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.region = config.outbound.default_region
        self.media_store = MediaStore(config.media.dir)
        gw = config.gateway
        self._media_prefix = f"{gw.public_url}/media/" if gw.public_url else None

    async def handle(self, message: AbstractIncomingMessage) -> str:
        request_id = message.message_id or "unknown"
        try:
            raw = orjson.loads(message.body)
            if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
                request_id = raw["id"][:128]
            request = OutboundRequest.model_validate(raw)
            job = self.plan(request)
        except orjson.JSONDecodeError:
            await fail(self.broker, request_id, "invalid request: body is not JSON", 0)
        except ValidationError as exc:
            await fail(self.broker, request_id, f"invalid request: {_validation_reason(exc)}", 0)
        except Invalid as exc:
            await fail(self.broker, request_id, f"invalid request: {exc}", 0)
        headers = {topology.H_FIRST_SEEN: now_ms(), topology.H_ATTEMPTS: 0}
        queued = topology.json_message(
            job.to_json(), message_id=job.id, type_=jobs.TYPE, headers=headers
        )
        await self.broker.deliver(topology.INTERNAL, topology.account_key(job.account), queued)
        return "queued"

    def plan(self, request: OutboundRequest) -> jobs.SendJob:
        """Resolve a valid request into what to send, from which number and account."""
        number = self._sending_number(request)
        try:
            to = to_e164(request.to, self.region)
        except NumberError as exc:
            raise Invalid(f"'to': {exc}") from None
        if request.media_urls:
            self._check_media_size(request)
        return jobs.SendJob(
            id=request.id,
            account=number.provider,
            to=to,
            from_=number.number,
            body=request.body,
            media_urls=request.media_urls,
            extension=request.extension,
        )

    def _sending_number(self, request: OutboundRequest) -> NumberConfig:
        if request.from_:
            try:
                e164 = to_e164(request.from_, self.region)
            except NumberError as exc:
                raise Invalid(f"'from': {exc}") from None
            number = self.config.number(e164)
            if number is None:
                raise Invalid(f"'from' {e164} is not a configured number")
            if request.extension and request.extension not in number.source:
                raise Invalid(f"extension {request.extension} may not send from {e164}")
            return number
        for number in self.config.numbers:
            if request.extension in number.source:
                return number
        raise Invalid(f"no configured number lists extension {request.extension} in its source")

    def _check_media_size(self, request: OutboundRequest) -> None:
        """Refuse locally what Flowroute would refuse, when the size is known (our own media)."""
        if self._media_prefix is None:
            return
        total = len((request.body or "").encode())
        for url in request.media_urls:
            if url.startswith(self._media_prefix):
                found = self.media_store.get(url.removeprefix(self._media_prefix))
                if found is not None:
                    total += found[1].size
        if total > MMS_MAX_BYTES:
            raise Invalid(f"MMS media over Flowroute's {MMS_MAX_BYTES}-byte limit ({total} bytes)")


async def fail(broker: Broker, request_id: str, reason: str, attempts: int) -> NoReturn:
    """Publish status.failed (confirmed), then park the message with the same reason."""
    await publish_status(broker, request_id, "failed", reason=reason, attempts=attempts)
    raise Park(reason)


def _validation_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
