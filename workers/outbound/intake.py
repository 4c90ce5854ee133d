"""Outbound intake (`smsbridge.outbound.requests`, any replica): an OutboundRequest from the PBX
becomes a send job on its provider account's queue.

It validates the request against the contract's rules, picks the sending number (from `from`,
or from `extension` through the numbers' `source` lists), normalizes `to`, refuses locally
an MMS that Flowroute would refuse for its size when the size is known, and applies the
number's policy (rules.py: smart quotes, segments, destination country). An invalid request
gets `status.failed` with a readable reason and is parked; a request the policy blocks gets
`status.failed` naming the rule and is acked.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NoReturn, cast

import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from schemas.messages import OutboundRequest
from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.config import Config, NumberConfig
from smsbridge.ledger import inbound
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger
from smsbridge.media_store import MediaStore
from smsbridge.metrics import POLICY_BLOCKED, QUOTES_REPLACED, SEGMENTS_SAVED
from smsbridge.once import SendClaims
from smsbridge.phone import NumberError, to_e164
from smsbridge.policies import Keyword, match_keyword
from smsbridge.status import publish_status
from workers.consumer import Park
from workers.outbound import job as jobs
from workers.outbound import rules

log = get_logger(__name__)

MMS_MAX_BYTES = 767_840  # Flowroute's limit for all media of one MMS, text included


class Invalid(Exception):
    """The request breaks a contract rule: never sent."""


def now_ms() -> int:
    # AMQP headers carry floats as 32-bit: epoch seconds would lose minutes. Integers are exact.
    return round(time.time() * 1000)


class Intake:
    def __init__(
        self, config: Config, broker: Broker, claims: SendClaims, ledger: Ledger | None = None
    ) -> None:
        self.config = config
        self.broker = broker
        self.claims = claims
        self.ledger = ledger
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
        if job.id.startswith(topology.AUTO_REPLY_PREFIX):
            family = await self._keyword_reply(job, message)
            if family is None:
                reason = (
                    f"invalid request: ids starting '{topology.AUTO_REPLY_PREFIX}' are reserved "
                    "for the bridge's replies to STOP, START and HELP"
                )
                await fail(self.broker, job.id, reason, 0)
            job = dataclasses.replace(job, auto_reply=family)  # the bridge's own reply
        blocked = rules.refusal(job.to, job.segments, self.config.policy_of(self._number(job)))
        if blocked is not None:
            POLICY_BLOCKED.labels(blocked.rule).inc()
            await self.claims.blocked(job.id, job.history(), blocked.reason)
            await publish_status(
                self.broker, job.id, "failed", reason=blocked.reason, segments=job.segments
            )
            return "blocked"
        # Recorded before it is queued: its sender finds it in the history.
        await self.claims.queued(job.id, job.history())
        headers = {topology.H_FIRST_SEEN: now_ms(), topology.H_ATTEMPTS: 0}
        requeued = (message.headers or {}).get(topology.H_REQUEUED)
        if isinstance(requeued, int):
            headers[topology.H_REQUEUED] = requeued
        queued = topology.json_message(
            job.to_json(), message_id=job.id, type_=jobs.TYPE, headers=headers
        )
        await self.broker.deliver(topology.INTERNAL, topology.account_key(job.account), queued)
        return "queued"

    async def _keyword_reply(
        self, job: jobs.SendJob, message: AbstractIncomingMessage
    ) -> Keyword | None:
        """The keyword family an `auto-` request answers, when it is the bridge's own reply:
        the ledger has the keyword message it answers, from its recipient to its number.
        Anyone who can publish to smsbridge.outbound can set the header, and a reply is
        neither held back by an opt-out nor by quiet hours."""
        family = (message.headers or {}).get(topology.H_AUTO_REPLY)
        if self.ledger is None or family not in ("stop", "start", "help"):
            return None
        texted = await inbound.texted(self.ledger, job.id.removeprefix(topology.AUTO_REPLY_PREFIX))
        if (
            texted is None
            or texted.to != job.from_
            or texted.from_ != job.to
            or match_keyword(texted.body) != family
        ):
            return None
        return cast(Keyword, family)

    def plan(self, request: OutboundRequest) -> jobs.SendJob:
        """Resolve a valid request into what to send, from which number and account."""
        number = self._sending_number(request)
        try:
            to = to_e164(request.to, self.region)
        except NumberError as exc:
            raise Invalid(f"'to': {exc}") from None
        if request.media_urls:
            self._check_media_size(request)
        policy = self.config.policy_of(number)
        prepared = rules.prepare(request.body, bool(request.media_urls), policy)
        if prepared.quotes_replaced:
            log.info(
                "typographic quotes replaced",
                characters=prepared.quotes_replaced,
                segments_saved=prepared.segments_saved,
                policy=policy.name if policy else None,
            )
            QUOTES_REPLACED.inc(prepared.quotes_replaced)
            SEGMENTS_SAVED.inc(max(prepared.segments_saved, 0))
        return jobs.SendJob(
            id=request.id,
            account=number.provider,
            to=to,
            from_=number.number,
            body=prepared.body,
            media_urls=request.media_urls,
            extension=request.extension,
            segments=prepared.segments,
        )

    def _number(self, job: jobs.SendJob) -> NumberConfig | None:
        return self.config.number(job.from_)

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


async def fail(
    broker: Broker, request_id: str, reason: str, attempts: int, segments: int | None = None
) -> NoReturn:
    """Publish status.failed (confirmed), then park the message with the same reason."""
    await publish_status(
        broker, request_id, "failed", reason=reason, attempts=attempts, segments=segments
    )
    raise Park(reason)


async def tell_failed(broker: Broker, message: AbstractIncomingMessage, reason: str) -> None:
    """The park hook of the outbound consumers: a request parked for a reason its handler did
    not report (a bug, a crash loop) still gets its status.failed."""
    request_id = message.message_id or "unknown"
    try:
        raw = orjson.loads(message.body)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
            request_id = raw["id"][:128]
    except orjson.JSONDecodeError:
        pass
    attempts = (message.headers or {}).get(topology.H_ATTEMPTS, 0)
    await publish_status(
        broker,
        request_id,
        "failed",
        reason=reason,
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
    )


def _validation_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
