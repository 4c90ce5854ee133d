"""Media worker: downloads an inbound MMS's media before the PBX sees the message.

Flowroute's media links are pre-signed and expire, so each item is fetched at once, stored
under an unguessable key, and replaced by the gateway's /media/<key> URL. An item that cannot
be fetched gets `url: null` and an `error`; the message goes on to the resolver regardless.

An item that failed for a passing reason (a timeout, a connection error, HTTP 429 or 5xx) is
tried again: the message waits in a delay queue (`media.retry_delays`) with
what was fetched so far, for up to `media.retry_for_seconds` after it arrived, before it goes
on with the error. Flowroute's links stay valid for days; a short outage must not cost the
PBX the picture.

A webhook is untrusted, so one message's cost is bounded: at most `media.max_items` items are
fetched (the rest get an error), `media.fetch_concurrency` at a time, and at most
`media.max_message_bytes` are stored for all of them together (an item that would go over is
refused and its partial file removed). A local storage error such as a full disk (`ENOSPC`)
fails only that item, and leaves no partial or temp file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from smsbridge import envelope, topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.delays import Delays
from smsbridge.flowroute.webhook import MediaRef, WebhookError, parse_inbound
from smsbridge.logs import get_logger
from smsbridge.media_store import MediaStore
from smsbridge.metrics import MEDIA_FETCHES, MEDIA_PURGED, PUBLISH_CONFIRM_SECONDS
from workers.consumer import Consumer, Park, int_header
from workers.fetcher import ByteBudget, FetchError, FetchPolicy, MediaFetcher, redact_url

log = get_logger(__name__)

PURGE_EVERY_SECONDS = 3600.0
FETCHED_KEPT = 1000  # fetched media kept for a forward that has to wait for the broker
RETRY = "retry"  # an item's mark, between tries: it failed for a passing reason
H_MEDIA_TRIES = "x-smsbridge-media-tries"  # tries made so far


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
        self._fetched: dict[str, list[dict[str, Any]]] = {}
        self._confirm = PUBLISH_CONFIRM_SECONDS.labels("media")
        self.delays = Delays(broker, config.media.retry_delays)
        broker.declare_also(self._declare)

    async def start(self) -> None:
        await self.fetcher.start()
        self._purger = asyncio.create_task(self._purge_forever(), name="media-retention")

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self.fetcher.close()

    async def _declare(self, channel: AbstractChannel) -> topology.Topology:
        return await topology.declare_delays(channel, self.config.media.retry_delays)

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
        # Fetched once: when the forward must wait for the broker, the handler runs again.
        media = self._fetched.get(sms.id)
        if media is None:
            media = self._fetched[sms.id] = await self.fetch_all(sms.media, env.fetched)
            while len(self._fetched) > FETCHED_KEPT:  # of deliveries that went elsewhere
                self._fetched.pop(next(iter(self._fetched)))
        if any(item.get(RETRY) for item in media) and await self._later(message, env, media):
            self._fetched.pop(sms.id, None)
            return "media_retry"
        final = [{k: v for k, v in item.items() if k != RETRY} for item in media]
        forward = topology.json_message(
            env.with_media(final), message_id=sms.id, type_=envelope.TYPE
        )
        self._confirm.observe(
            await self.broker.deliver(topology.INTERNAL, topology.INBOUND_KEY, forward)
        )
        self._fetched.pop(sms.id, None)
        return "published"

    async def _later(
        self, message: AbstractIncomingMessage, env: envelope.Envelope, media: list[dict[str, Any]]
    ) -> bool:
        """Try the failed items again later, if the message may still wait: it goes to a
        delay queue with what was fetched so far. False: it goes on as it is."""
        settings = self.config.media
        tries = int_header(message, H_MEDIA_TRIES)
        delay = settings.retry_delays[min(tries, len(settings.retry_delays) - 1)]
        if _age(env.received_at) + delay > settings.retry_for_seconds:
            return False
        await self.delays.later(
            message,
            topology.MEDIA_KEY,
            delay,
            {H_MEDIA_TRIES: tries + 1},
            exact_tier=delay,
            body=env.with_fetched(media),
        )
        failed = sum(1 for item in media if item.get(RETRY))
        log.info("media not fetched yet; trying again later", items=failed, retry_in=delay)
        return True

    async def fetch_all(
        self, refs: Sequence[MediaRef], earlier: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of one message, in order: the first `max_items` fetched, at most
        `fetch_concurrency` at a time, within one `max_message_bytes` budget. Items `earlier`
        tries got (or failed for good) are kept; those that failed for a passing reason are
        fetched again."""
        settings = self.config.media
        budget = ByteBudget(settings.max_message_bytes)
        for item in earlier or []:
            if isinstance(item, dict) and isinstance(item.get("size"), int) and item.get("url"):
                budget.take(item["size"])
        gate = asyncio.Semaphore(settings.fetch_concurrency)

        async def one(index: int, ref: MediaRef) -> dict[str, Any]:
            before = earlier[index] if earlier and index < len(earlier) else None
            if isinstance(before, dict) and not before.get(RETRY):
                return before
            async with gate:
                return await self.fetch(ref, budget)

        wanted, rest = refs[: settings.max_items], refs[settings.max_items :]
        items = list(await asyncio.gather(*(one(i, ref) for i, ref in enumerate(wanted))))
        if rest:
            MEDIA_FETCHES.labels("over_item_limit").inc(len(rest))
            log.warning(
                "media items over the limit not fetched",
                items=len(refs),
                limit=settings.max_items,
            )
            reason = f"not fetched: over {settings.max_items} media items in one message"
            items.extend(_item(ref, error=reason) for ref in rest)
        return items

    async def fetch(self, ref: MediaRef, budget: ByteBudget | None = None) -> dict[str, Any]:
        item = _item(ref)
        if not ref.url:
            item["error"] = "no media URL in the webhook"
            MEDIA_FETCHES.labels("missing").inc()
            return item
        try:
            stored = await self.fetcher.fetch(
                ref.url, file_name=ref.file_name, declared_type=ref.content_type, budget=budget
            )
        except FetchError as exc:
            MEDIA_FETCHES.labels("failed").inc()
            log.warning("media not fetched", url=redact_url(ref.url), reason=exc.reason)
            item["error"] = exc.reason
            item[RETRY] = exc.transient
            return item
        except OSError as exc:
            # The local disk (full, read-only, gone...): this item only; the fetcher removed
            # its temp file. An operator's problem, so an error line, without a traceback.
            MEDIA_FETCHES.labels("storage_error").inc()
            detail = exc.strerror or type(exc).__name__
            log.error(
                "media not stored: local storage error",
                url=redact_url(ref.url),
                error=detail,
                errno=exc.errno,
            )
            item["error"] = f"not stored: local storage error ({detail})"
            return item  # at once: a full disk is an operator's to fix, not a passing fault
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


def _age(received_at: str) -> float:
    """Seconds since the gateway accepted the message."""
    try:
        at = datetime.fromisoformat(received_at)
    except ValueError:
        return 0.0
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (datetime.now(UTC) - at).total_seconds()


def _item(ref: MediaRef, error: str | None = None) -> dict[str, Any]:
    return {
        "url": None,
        "content_type": ref.content_type,
        "file_name": ref.file_name,
        "size": ref.size,
        "sha256": None,
        "error": error,
    }
