"""Outbound worker: OutboundRequests from the PBX -> Flowroute's /messages API.

Two stages:
1. intake (`smsbridge.outbound.requests`, any replica): validate the request, pick the sending
   number and provider account, normalize `to`, and queue the send on the account's queue.
   An invalid request gets `status.failed` with the reason and is parked.
2. account senders (`smsbridge.outbound.account.<name>`, single active consumer): pace attempts
   under the account's limits, send, retry transient failures briefly in process (tenacity)
   and then through delay-tier retry queues, publish `status.sent`/`status.failed`, then ack.
   401/403 hold the account (one probe with growing backoff) instead of failing its backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from schemas.messages import OutboundRequest
from smsbridge import receipt_token, topology
from smsbridge.broker import Broker
from smsbridge.config import Config, NumberConfig, ProviderConfig
from smsbridge.flowroute.client import (
    AuthFailure,
    FlowrouteClient,
    Permanent,
    Sent,
    Transient,
    message_body,
)
from smsbridge.logs import get_logger
from smsbridge.media_store import MediaStore
from smsbridge.metrics import (
    ACCOUNT_HELD,
    ACCOUNT_QUEUE_DEPTH,
    SEND_RETRIES,
    SEND_SECONDS,
    SENDS,
)
from smsbridge.phone import NumberError, to_e164
from smsbridge.recent import RecentIds
from smsbridge.status import publish_status
from workers.consumer import Consumer, DeliveryLost, Park, channel_open
from workers.ratelimit import SlidingWindowLimiter

log = get_logger(__name__)

MMS_MAX_BYTES = 767_840  # Flowroute's limit for all media of one MMS, text included
HOLD_BACKOFF_MAX = 60.0  # seconds between key probes, at most


class Invalid(Exception):
    """The request breaks a contract rule: never sent."""


@dataclass
class Account:
    """One provider account (one access key): its client, its pace, and its hold state.

    While held (401/403), no message is sent: deliveries wait, unacked, and one background
    probe checks the keys with growing backoff, without sending anything, until they work.
    """

    provider: ProviderConfig
    client: FlowrouteClient
    sms: SlidingWindowLimiter
    mms: SlidingWindowLimiter
    released: asyncio.Event = field(default_factory=asyncio.Event)
    held: bool = False
    draining: bool = False  # shutting down: give deliveries back instead of sending them
    fresh: bool = True  # no delivery yet since our consumer (re)opened
    _prober: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.released.set()

    @property
    def name(self) -> str:
        return self.provider.name

    def opened(self) -> None:
        self.fresh = True

    def drain(self) -> None:
        self.draining = True
        self.released.set()  # wake the waiters so they give their deliveries back

    async def attempt(
        self, payload: dict[str, Any], is_mms: bool, delivery: AbstractIncomingMessage
    ) -> Sent:
        if self.fresh:
            # The first delivery after (re)opening may mean we just became the account's
            # active consumer: the previous one may have used this second's whole allowance.
            self.fresh = False
            self.sms.prime()
            self.mms.prime()
        limiter = self.mms if is_mms else self.sms
        while True:
            await limiter.acquire()
            # Checked after the (possibly long) wait for a slot: the account may have been
            # held meanwhile.
            if self.released.is_set():
                break
            await self.released.wait()
        if self.draining or not channel_open(delivery):
            # Shutting down, or our channel closed while we waited: the broker hands this
            # request to another replica. Sending it here too would duplicate it and break
            # the account's limit.
            raise DeliveryLost()
        started = time.perf_counter()
        try:
            sent = await self.client.send(payload)
        except (Transient, Permanent, AuthFailure) as exc:
            SENDS.labels(self.name, _outcome(exc)).inc()
            raise
        finally:
            SEND_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        SENDS.labels(self.name, "sent").inc()
        return sent

    def hold(self, exc: AuthFailure) -> None:
        if self.held:
            return
        self.held = True
        self.released.clear()
        ACCOUNT_HELD.labels(self.name).set(1)
        log.error(
            "provider account refused our keys; sending held until they work",
            account=self.name,
            reason=exc.reason,
        )
        self._prober = asyncio.create_task(self._probe(), name=f"probe-{self.name}")

    async def _probe(self) -> None:
        delay = 1.0
        while self.held:
            await asyncio.sleep(delay)
            delay = min(delay * 2, HOLD_BACKOFF_MAX)
            try:
                await self.client.check_auth()
            except AuthFailure as exc:
                log.error(
                    "provider account still refuses our keys; sending held",
                    account=self.name,
                    reason=exc.reason,
                    retry_in=delay,
                )
                continue
            except Exception as exc:  # not a refusal of the keys: let sending find out
                log.warning("key probe inconclusive; resuming", account=self.name, error=str(exc))
            self.release()

    def release(self) -> None:
        if self.held:
            log.warning("provider account keys work again; sending resumed", account=self.name)
        self.held = False
        ACCOUNT_HELD.labels(self.name).set(0)
        self.released.set()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober


def _outcome(exc: Exception) -> str:
    if isinstance(exc, AuthFailure):
        return "auth_failed"
    if isinstance(exc, Permanent):
        return "rejected"
    status = getattr(exc, "status", None)
    return "rate_limited" if status == 429 else "transient"


def _header(message: AbstractIncomingMessage, name: str, default: float) -> float:
    value = (message.headers or {}).get(name)
    return float(value) if isinstance(value, int | float) else default


class OutboundWorker:
    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.settings = config.outbound
        self.sent = RecentIds(ttl=self.settings.sent_ids_seconds)
        self.accounts: dict[str, Account] = {}
        self.media_store = MediaStore(config.media.dir)
        self._session: aiohttp.ClientSession | None = None
        self._depth_task: asyncio.Task[None] | None = None
        gw = config.gateway
        self._dlr_base = f"{gw.public_url}/{gw.dlr_path}/" if gw.public_url else None
        if gw.dlr_secret is not None and gw.public_url is None:
            log.warning("gateway.dlr_secret is set but public_url is not: no receipts requested")
        self._dlr_secret = gw.dlr_secret.get_secret_value().encode() if gw.dlr_secret else None
        self._media_prefix = f"{gw.public_url}/media/" if gw.public_url else None
        broker.declare_also(self._declare)

    async def _declare(self, channel: AbstractChannel) -> topology.Topology:
        return await topology.declare_outbound(
            channel, [p.name for p in self.config.providers], self.settings.retry_delays
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout, connect=5),
            connector=aiohttp.TCPConnector(limit=self.settings.concurrency * 2, limit_per_host=0),
            trust_env=False,
        )
        for provider in self.config.providers:
            self.accounts[provider.name] = Account(
                provider,
                FlowrouteClient(self._session, provider),
                SlidingWindowLimiter(provider.sms_per_second, self.settings.rate_margin),
                SlidingWindowLimiter(provider.mms_per_second, self.settings.rate_margin),
            )
        self._depth_task = asyncio.create_task(self._watch_depth(), name="outbound-depth")

    async def close(self) -> None:
        if self._depth_task is not None:
            self._depth_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._depth_task
        for account in self.accounts.values():
            await account.close()
        if self._session is not None:
            await self._session.close()

    def consumers(self) -> list[Consumer]:
        intake = Consumer(
            self.broker,
            topology.OUTBOUND_QUEUE,
            "outbound",
            self.intake,
            prefetch=self.config.broker.prefetch,
        )
        senders = [
            Consumer(
                self.broker,
                topology.account_queue(name),
                "outbound",
                self._sender(account),
                prefetch=self.settings.concurrency,
                on_open=account.opened,
                on_stop=account.drain,
            )
            for name, account in self.accounts.items()
        ]
        return [intake, *senders]

    # -- stage 1: intake ---------------------------------------------------------------
    async def intake(self, message: AbstractIncomingMessage) -> str:
        request_id = message.message_id or "unknown"
        try:
            raw = orjson.loads(message.body)
            if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
                request_id = raw["id"][:128]
            request = OutboundRequest.model_validate(raw)
            job = self.plan(request)
        except orjson.JSONDecodeError:
            await self._fail(request_id, "invalid request: body is not JSON", 0)
        except ValidationError as exc:
            await self._fail(request_id, f"invalid request: {_validation_reason(exc)}", 0)
        except Invalid as exc:
            await self._fail(request_id, f"invalid request: {exc}", 0)
        headers = {topology.H_FIRST_SEEN: _now_ms(), topology.H_ATTEMPTS: 0}
        queued = topology.json_message(
            orjson.dumps(job),
            message_id=request.id,
            type_="smsbridge.internal.send.v1",
            headers=headers,
        )
        await self.broker.publish(topology.INTERNAL, topology.account_key(job["account"]), queued)
        return "queued"

    def plan(self, request: OutboundRequest) -> dict[str, Any]:
        """Resolve a valid request into what to send, from which number and account."""
        number = self._sending_number(request)
        try:
            to = to_e164(request.to, self.settings.default_region)
        except NumberError as exc:
            raise Invalid(f"'to': {exc}") from None
        if request.media_urls:
            self._check_media_size(request)
        return {
            "id": request.id,
            "account": number.provider,
            "to": to,
            "from": number.number,
            "body": request.body,
            "media_urls": request.media_urls,
        }

    def _sending_number(self, request: OutboundRequest) -> NumberConfig:
        if request.from_:
            try:
                e164 = to_e164(request.from_, self.settings.default_region)
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

    # -- stage 2: one account's sender -------------------------------------------------
    def _sender(self, account: Account) -> Any:
        async def handle(message: AbstractIncomingMessage) -> str:
            return await self.send(account, message)

        return handle

    async def send(self, account: Account, message: AbstractIncomingMessage) -> str:
        try:
            job = orjson.loads(message.body)
            request_id = str(job["id"])
            payload_args = (job["to"], job["from"], job.get("body"), list(job["media_urls"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise Park(f"unreadable send job: {exc}") from None
        if self.sent.pending(request_id) is not None:
            return "duplicate"  # the same id is being sent right now
        record = self.sent.value(request_id)
        if record is not None:
            # Sent before (a redelivery, or the PBX published the id twice): never send
            # again, but make sure its status.sent was published (at least once; the same
            # event, message_id included, so the PBX can dedupe it).
            provider_id, _, sent_attempts = record.partition(" ")
            await publish_status(
                self.broker,
                request_id,
                "sent",
                provider_id=provider_id,
                attempts=int(sent_attempts or 0),
            )
            return "duplicate"
        attempts = int(_header(message, topology.H_ATTEMPTS, 0))
        first_seen = _header(message, topology.H_FIRST_SEEN, _now_ms()) / 1000
        dlr = None
        if self._dlr_base and self._dlr_secret:
            ref = receipt_token.ReceiptRef(request_id, account.name, attempts + 1)
            dlr = self._dlr_base + receipt_token.sign(self._dlr_secret, ref)
        payload = message_body(*payload_args, dlr_callback=dlr)
        is_mms = bool(payload_args[3])

        self.sent.begin(request_id)
        sent: Sent | None = None
        try:
            try:
                sent, attempts = await self._deliver(account, payload, is_mms, attempts, message)
            except Permanent as exc:
                await self._fail(request_id, f"Flowroute refused: {exc.reason}", exc.attempts)
            except Transient as exc:
                await self._retry_later(message, request_id, exc, exc.attempts, first_seen)
                return "retry"
            assert sent is not None
            # Remember before publishing: a redelivery must not send again even if the
            # status publish fails (it is retried from the `sent` record instead).
            self.sent.finish(request_id, True, f"{sent.provider_id} {attempts}")
            await publish_status(
                self.broker, request_id, "sent", provider_id=sent.provider_id, attempts=attempts
            )
            return "sent"
        finally:
            if self.sent.pending(request_id) is not None:
                self.sent.finish(request_id, False)

    async def _deliver(
        self,
        account: Account,
        payload: dict[str, Any],
        is_mms: bool,
        attempts: int,
        delivery: AbstractIncomingMessage,
    ) -> tuple[Sent, int]:
        while True:
            try:
                async for attempt in AsyncRetrying(  # a new one per call: not shareable
                    retry=retry_if_exception_type(Transient),
                    stop=stop_after_attempt(self.settings.in_process_attempts),
                    wait=_wait,
                    before_sleep=lambda state: SEND_RETRIES.labels(account.name, "quick").inc(),
                    reraise=True,
                ):
                    with attempt:
                        attempts += 1
                        sent = await account.attempt(payload, is_mms, delivery)
                return sent, attempts
            except AuthFailure as exc:
                account.hold(exc)  # then wait, unacked, until the keys work again
            except (Permanent, Transient) as exc:
                exc.attempts = attempts
                raise

    async def _retry_later(
        self,
        message: AbstractIncomingMessage,
        request_id: str,
        exc: Transient,
        attempts: int,
        first_seen: float,
    ) -> None:
        delays = self.settings.retry_delays  # never empty: the configuration requires one
        rounds = int(_header(message, topology.H_RETRIES, 0))
        delay = delays[min(rounds, len(delays) - 1)]
        age = time.time() - first_seen
        if age + delay > self.settings.max_age_seconds:
            await self._fail(
                request_id,
                f"gave up after {attempts} attempts over {age:.0f} s: {exc.reason}",
                attempts,
            )
        headers = dict(message.headers or {})
        headers.pop("x-death", None)
        headers.update(
            {
                topology.H_ATTEMPTS: attempts,
                topology.H_RETRIES: rounds + 1,
                topology.H_FIRST_SEEN: round(first_seen * 1000),
                topology.H_RETRY_TIER: topology.retry_tier(delay),
                topology.H_REASON: exc.reason,
            }
        )
        retry = topology.json_message(
            message.body, message_id=request_id, type_=message.type, headers=headers
        )
        await self.broker.publish(topology.RETRY, message.routing_key or "", retry)
        SEND_RETRIES.labels(message.routing_key or "", "delayed").inc()
        log.warning("send failed, retrying later", reason=exc.reason, retry_in=delay)

    async def _fail(self, request_id: str, reason: str, attempts: int) -> NoReturn:
        """Publish status.failed (confirmed), then park the message with the same reason."""
        await publish_status(self.broker, request_id, "failed", reason=reason, attempts=attempts)
        raise Park(reason)

    async def _watch_depth(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            for name in self.accounts:
                with contextlib.suppress(Exception):
                    depth = await self.broker.queue_depth(topology.account_queue(name))
                    ACCOUNT_QUEUE_DEPTH.labels(name).set(depth)


def _now_ms() -> int:
    # AMQP headers carry floats as 32-bit: epoch seconds would lose minutes. Integers are exact.
    return round(time.time() * 1000)


def _wait(state: RetryCallState) -> float:
    """Honour Retry-After (capped by the client) when present, else exponential + jitter."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Transient) and exc.retry_after is not None:
        return exc.retry_after
    return float(wait_exponential_jitter(initial=0.2, max=5.0, jitter=0.3)(state))


def _validation_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg
