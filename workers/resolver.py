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
from smsbridge.once import Claim, Claims, InboundHistory, MemoryClaims
from smsbridge.policies import match_keyword
from smsbridge.waiting import Backoff, MustWait
from workers.consumer import Consumer, Park
from workers.keywords import KeywordActions

log = get_logger(__name__)

RENEW_EVERY = 10.0  # seconds: a publish that waits for its confirm keeps its claim


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
        in_doubt = claim.in_doubt_since
        try:
            if in_doubt is not None:
                message_id = topology.amqp_message_id(sms.id)
                if await self.journal.published({message_id}, in_doubt):
                    await self._record(claim, outcome, destination)
                    return "duplicate"  # the publish whose confirm was lost was stored
                in_doubt = None  # it was not: publish it now
            if keyword is not None and number is not None and policy is not None:
                await self.keywords.act(sms, number, policy, keyword)
            body = orjson.dumps(event, option=orjson.OPT_UTC_Z)
            started = datetime.now(UTC)
            try:
                await self._publish(claim, topology.inbound_key(destination), sms.id, body)
            except PublishFailed as exc:
                if exc.in_doubt:
                    in_doubt = started
                raise
        except BaseException:
            await self.claims.released(claim, in_doubt)
            raise
        await self._record(claim, outcome, destination)
        return "published"

    async def _publish(self, claim: Claim, key: str, message_id: str, body: bytes) -> None:
        """Publish, confirmed, renewing the claim while the broker makes us wait (a memory
        alarm): another resolver must not take it over and publish it a second time."""
        message = topology.json_message(body, message_id=message_id, type_=INBOUND_MESSAGE_TYPE)
        task = asyncio.ensure_future(self.broker.deliver(topology.JOURNALED, key, message))
        while True:
            done, _ = await asyncio.wait({task}, timeout=RENEW_EVERY)
            if done:
                self._confirm.observe(task.result())
                return
            with contextlib.suppress(MustWait):
                await self.claims.renew(claim)

    async def _record(self, claim: Claim, outcome: str, destination: str | None) -> None:
        """Record the publish, however long the ledger takes: it happened."""
        backoff = Backoff()
        while True:
            try:
                await self.claims.succeeded(claim, outcome, destination=destination)
                return
            except MustWait as exc:
                log.warning("could not record a publish yet; retrying", error=str(exc))
                await asyncio.sleep(backoff.next())

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


def _history(event: dict[str, Any]) -> InboundHistory:
    try:
        created = datetime.fromisoformat(str(event["received_at"]))
    except ValueError:
        created = datetime.now(UTC)
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
