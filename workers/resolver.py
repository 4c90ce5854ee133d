"""Resolver worker: a received webhook -> an InboundMessage on smsbridge.events.

Finds the `to` number in the configuration and publishes to `inbound.<destination>`, or to
`inbound.unrouted` when the number has no configuration. Each Flowroute message id is
published once (RecentIds), however often Flowroute or RabbitMQ deliver it again.
"""

from __future__ import annotations

from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from schemas.messages import INBOUND_MESSAGE_TYPE
from smsbridge import envelope, topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.flowroute.webhook import InboundSms, WebhookError, parse_inbound
from smsbridge.metrics import PUBLISH_CONFIRM_SECONDS
from smsbridge.recent import RecentIds
from workers.consumer import Consumer, Park


class Resolver:
    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.recent = RecentIds(ttl=config.gateway.dedupe_seconds)
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
        if self.recent.done(sms.id) or self.recent.pending(sms.id) is not None:
            return "duplicate"  # the in-flight twin publishes (or is requeued on failure)
        self.recent.begin(sms.id)
        ok = False
        try:
            destination, body = self.inbound_message(sms, env)
            self._confirm.observe(
                await self.broker.publish(
                    topology.EVENTS,
                    topology.inbound_key(destination),
                    topology.json_message(body, message_id=sms.id, type_=INBOUND_MESSAGE_TYPE),
                )
            )
            ok = True
        finally:
            self.recent.finish(sms.id, ok)
        return "published"

    def inbound_message(self, sms: InboundSms, env: envelope.Envelope) -> tuple[str | None, bytes]:
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
        destination = number.destination if number else None
        message = {
            "id": sms.id,
            "provider": number.provider if number else self._prefix_provider.get(env.prefix),
            "from": sms.from_,
            "to": sms.to,
            "body": sms.body,
            "destination": destination,
            "number_name": number.name if number else None,
            "sent_at": sms.sent_at,
            "received_at": env.received_at,
            "media": media,
            "provider_attributes": sms.attributes,
        }
        return destination, orjson.dumps(message, option=orjson.OPT_UTC_Z)
