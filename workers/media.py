"""Media worker: downloads an inbound MMS's media before the PBX sees the message.

Flowroute's media links are pre-signed and expire, so each item is fetched at once, stored
under an unguessable key, and replaced by the gateway's /media/<key> URL. An item that cannot
be fetched gets `url: null` and an `error`; the message goes on to the resolver regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from smsbridge import envelope, topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.flowroute.webhook import MediaRef, WebhookError, parse_inbound
from smsbridge.logs import get_logger
from smsbridge.media_store import MediaStore
from smsbridge.metrics import MEDIA_FETCHES, MEDIA_PURGED, PUBLISH_CONFIRM_SECONDS
from workers.consumer import Consumer, Park
from workers.fetcher import FetchError, FetchPolicy, MediaFetcher, redact_url

log = get_logger(__name__)

PURGE_EVERY_SECONDS = 3600.0


class MediaWorker:
    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.store = MediaStore(config.media.dir)
        self.fetcher = MediaFetcher(
            self.store,
            FetchPolicy(
                max_bytes=config.media.max_bytes,
                total_timeout=config.media.fetch_timeout,
                allow_networks=tuple(config.media.allow_networks),
                allowed_ports=(
                    None if config.media.allow_any_port else frozenset(config.media.allowed_ports)
                ),
            ),
        )
        if config.gateway.public_url is None:
            log.warning("gateway.public_url is not set: media URLs use the listen address")
        self.media_base = f"{config.gateway.base_url}/media/"
        self._purger: asyncio.Task[None] | None = None
        self._confirm = PUBLISH_CONFIRM_SECONDS.labels("media")

    async def start(self) -> None:
        await self.fetcher.start()
        self._purger = asyncio.create_task(self._purge_forever(), name="media-retention")

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self.fetcher.close()

    def consumer(self) -> Consumer:
        # Downloads are slow and large: a smaller window than the resolver's.
        prefetch = min(self.config.broker.prefetch, 32)
        return Consumer(self.broker, topology.MEDIA_QUEUE, "media", self.handle, prefetch=prefetch)

    async def handle(self, message: AbstractIncomingMessage) -> str:
        try:
            env = envelope.unwrap(message.body)
            sms = parse_inbound(env.webhook, self.config.inbound.default_region)
        except (envelope.EnvelopeError, WebhookError) as exc:
            raise Park(f"unreadable webhook: {exc}") from None
        media = list(await asyncio.gather(*(self.fetch(ref) for ref in sms.media)))
        forward = topology.json_message(
            env.with_media(media), message_id=sms.id, type_=envelope.TYPE
        )
        self._confirm.observe(
            await self.broker.publish(topology.INTERNAL, topology.INBOUND_KEY, forward)
        )
        return "published"

    async def fetch(self, ref: MediaRef) -> dict[str, Any]:
        item: dict[str, Any] = {
            "url": None,
            "content_type": ref.content_type,
            "file_name": ref.file_name,
            "size": ref.size,
            "sha256": None,
            "error": None,
        }
        if not ref.url:
            item["error"] = "no media URL in the webhook"
            MEDIA_FETCHES.labels("missing").inc()
            return item
        try:
            stored = await self.fetcher.fetch(
                ref.url, file_name=ref.file_name, declared_type=ref.content_type
            )
        except FetchError as exc:
            MEDIA_FETCHES.labels("failed").inc()
            log.warning("media not fetched", url=redact_url(ref.url), reason=exc.reason)
            item["error"] = exc.reason
            return item
        MEDIA_FETCHES.labels("stored").inc()
        item.update(
            url=self.media_base + stored.key,
            content_type=stored.content_type,
            file_name=stored.file_name or ref.file_name,
            size=stored.size,
            sha256=stored.sha256,
        )
        return item

    async def purge_once(self) -> int:
        age = self.config.media.retention_days * 86400
        removed = await asyncio.to_thread(self.store.purge, age)
        if removed:
            MEDIA_PURGED.inc(removed)
            log.info("expired media removed", count=removed)
        return removed

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception:
                log.exception("media retention failed")
            await asyncio.sleep(PURGE_EVERY_SECONDS)
