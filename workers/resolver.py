"""Resolver worker: a received webhook -> an InboundMessage on smsbridge.events.

Finds the `to` number in the configuration and publishes to `inbound.<destination>`, or to
`inbound.unrouted` when the number has no configuration. Each Flowroute message id is
published once, however often Flowroute or RabbitMQ deliver it again and however many
resolvers run: the id is claimed before the publish and marked published after its confirm
(smsbridge/once.py in memory, smsbridge/ledger/inbound.py across replicas), and a publish
whose confirm was lost is settled against the journal before anything is published again
(smsbridge/journal.py). When the number's policy honours opt-out keywords, a STOP, START or
HELP message is acted on first (workers/keywords.py) and still reaches the PBX, with
`keyword` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from schemas.messages import INBOUND_MESSAGE_TYPE
from smsbridge import envelope, topology
from smsbridge.broker import Broker, PublishFailed
from smsbridge.config import Config
from smsbridge.flowroute.webhook import InboundSms, WebhookError, parse_inbound
from smsbridge.journal import Journal
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger
from smsbridge.metrics import PUBLISH_CONFIRM_SECONDS
from smsbridge.once import Claim, ClaimExpired, Claims, InboundHistory, Lease, MemoryClaims
from smsbridge.policies import match_keyword
from smsbridge.waiting import Backoff, MustWait
from workers.consumer import Consumer, Park
from workers.keywords import KeywordActions

log = get_logger(__name__)


class Resolver:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        claims: Claims | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.claims = claims or MemoryClaims(ttl=config.gateway.dedupe_seconds)
        self.journal = Journal(broker)
        self.keywords = KeywordActions(broker, ledger)
        self.region = config.inbound.default_region
        self._confirm = PUBLISH_CONFIRM_SECONDS.labels("resolver")
        # The provider of a prefix whose numbers all share one, for unrouted messages.
        self._prefix_provider: dict[str, str] = {}
        for prefix, numbers in config.prefixes().items():
            providers = {n.provider for n in numbers}
            if len(providers) == 1:
                self._prefix_provider[prefix] = providers.pop()

    def consumer(self) -> Consumer:
        return Consumer(
            self.broker,
            topology.INBOUND_QUEUE,
            "inbound",
            self.handle,
            prefetch=self.config.broker.prefetch,
        )

    async def handle(self, message: AbstractIncomingMessage) -> str:
        try:
            env = envelope.unwrap(message.body)
            sms = parse_inbound(env.webhook, self.region)
        except (envelope.EnvelopeError, WebhookError) as exc:
            raise Park(f"unreadable webhook: {exc}") from None
        number = self.config.number(sms.to)
        policy = self.config.policy_of(number)
        keyword = match_keyword(sms.body) if policy is not None and policy.opt_out else None
        event = self.inbound_message(sms, env)
        event["keyword"] = keyword
        claim = await self.claims.claim(sms.id, _history(event))
        if claim.done:
            return "duplicate"
        destination = event["destination"]
        outcome = "delivered_to_pbx" if destination else "unrouted"
        async with self._holding(claim) as lease:
            in_doubt = claim.in_doubt_since
            try:
                if in_doubt is not None:
                    message_id = topology.amqp_message_id(sms.id)
                    if await self.journal.published({message_id}, in_doubt):
                        await self._record(claim, outcome, destination, keyword)
                        return "duplicate"  # the publish whose confirm was lost was stored
                    in_doubt = None  # it was not: publish it now
                if keyword is not None and number is not None and policy is not None:
                    # when it was texted; never later than it reached us (a skewed clock
                    # must not put one change ahead of every later one)
                    received = _received_at(event)
                    at = min(sms.sent_at, received) if sms.sent_at else received
                    await self.keywords.act(sms, number, policy, keyword, at)
                body = orjson.dumps(event, option=orjson.OPT_UTC_Z)
                if not lease.valid:  # another resolver may have taken the id over meanwhile
                    raise ClaimExpired("the claim ran out before the publish; trying again")
                in_doubt = datetime.now(UTC)  # from now on it may be stored, whatever happens
                try:
                    await self._publish(topology.inbound_key(destination), sms.id, body)
                except PublishFailed as exc:
                    if not exc.in_doubt:
                        in_doubt = None  # surely not stored
                    raise
            except BaseException:
                await self.claims.released(claim, in_doubt)
                raise
            await self._record(claim, outcome, destination, keyword)
        return "published"

    @contextlib.asynccontextmanager
    async def _holding(self, claim: Claim) -> AsyncIterator[Lease]:
        """Keep the claim while the handler works on it (a journal scan, a keyword's actions,
        a publish the broker makes wait): another resolver must not take it over and publish
        the message a second time. The lease tells whether it is still ours: a publish must
        not begin once it may have run out (the ledger was away too long to renew it)."""
        lease = Lease(claim)

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease.renew_every)
                asked = time.monotonic()
                try:
                    if not await self.claims.renew(claim):
                        lease.lost = True
                        log.warning("claim taken over by another resolver")
                        return
                    lease.renewed(asked)
                except Exception as exc:  # the next round tries again; the lease is 3 rounds
                    log.warning("claim not renewed", error=str(exc))

        task = asyncio.create_task(renew(), name="claim-renewal")
        try:
            yield lease
        finally:
            task.cancel()

    async def _publish(self, key: str, message_id: str, body: bytes) -> None:
        message = topology.json_message(body, message_id=message_id, type_=INBOUND_MESSAGE_TYPE)
        self._confirm.observe(await self.broker.deliver(topology.JOURNALED, key, message))

    async def _record(
        self, claim: Claim, outcome: str, destination: str | None, keyword: str | None
    ) -> None:
        """Record the publish: it happened. If the ledger cannot record it within
        `hold_limit` (or refuses it), the claim's lease runs out and whoever meets the id
        again settles it against the journal; the delivery is acked: its result is stored."""
        backoff = Backoff()
        while backoff.waited < self.broker.hold_limit:
            try:
                ours = await self.claims.succeeded(
                    claim, outcome, destination=destination, keyword=keyword
                )
                if not ours:  # its publish began in time, but ended after another took over
                    log.warning("published after the claim was taken over by another resolver")
                return
            except MustWait as exc:
                log.warning("could not record a publish yet; retrying", error=str(exc))
                await asyncio.sleep(backoff.next())
            except Exception:
                log.exception("published, but the ledger refused the record")
                self.claims.unrecorded(claim)
                return
        log.warning("published, but the ledger could not record it; its claim runs out")
        self.claims.unrecorded(claim)

    def inbound_message(self, sms: InboundSms, env: envelope.Envelope) -> dict[str, Any]:
        number = self.config.number(sms.to)
        media: list[dict[str, Any]]
        if env.media is not None:
            media = env.media
        else:  # a media reference that never passed the media worker: say so, keep the message
            media = [
                {
                    "url": None,
                    "content_type": ref.content_type,
                    "file_name": ref.file_name,
                    "size": ref.size,
                    "sha256": None,
                    "error": "media not fetched",
                }
                for ref in sms.media
            ]
        return {
            "id": sms.id,
            "provider": number.provider if number else self._prefix_provider.get(env.prefix),
            "from": sms.from_,
            "to": sms.to,
            "body": sms.body,
            "destination": number.destination if number else None,
            "number_name": number.name if number else None,
            "sent_at": sms.sent_at,
            "received_at": env.received_at,
            "media": media,
            "provider_attributes": sms.attributes,
        }


def _received_at(event: dict[str, Any]) -> datetime:
    try:
        at = datetime.fromisoformat(str(event["received_at"]))
    except ValueError:
        return datetime.now(UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _history(event: dict[str, Any]) -> InboundHistory:
    created = _received_at(event)
    return InboundHistory(
        provider=event["provider"],
        from_=event["from"],
        to=event["to"],
        body=event["body"],
        media=event["media"],
        extension=event["destination"],
        created_at=created,
        raw=event["provider_attributes"],
    )
