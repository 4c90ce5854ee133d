"""An account's sender (`smsbridge.outbound.account.<name>`, single active consumer): one send
job -> at most one message accepted by Flowroute -> `status.sent` or `status.failed`.

For each job, read top to bottom:
1. claim the request id (`SendClaims`): sent before -> publish its `status.sent` again (the same
   event) and stop; failed for good -> stop; an earlier attempt's outcome unknown -> look it
   up in Flowroute's message records before anything is sent again;
2. the number's policy (rules.py): a recipient who opted out blocks it (`status.failed`, acked),
   quiet hours send it to a delay queue until they end (`status.progress` "quiet hours");
3. wait for the account's next rate slot (attempts, retries included, never exceed its limit);
4. record the attempt, POST it, retry quick transient failures (tenacity), and record the
   outcome: sent, failed (any other 4xx), or later (a delay queue: transient failures after
   the quick retries, until `max_age_seconds`);
5. publish the status event (with the message's `segments`); the consumer acks.

401/403 hold the account (see account.py). Nothing here holds a delivery for long: every wait
goes to a delay queue (smsbridge/delays.py).

From the moment a POST starts until its outcome is recorded, or known to be a refusal, the
send is "in doubt": whatever stops us there (a crash, a lost connection, a timeout) leaves it
to be looked up, never blindly resent.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from smsbridge import clock, receipt_token, topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.delays import Delays
from smsbridge.flowroute.client import (
    AuthFailure,
    Permanent,
    SendError,
    Sent,
    Transient,
    matching_records,
    message_body,
)
from smsbridge.logs import get_logger
from smsbridge.metrics import POLICY_BLOCKED, SEND_RETRIES, SEND_SECONDS, SENDS
from smsbridge.once import ClaimLost, Interrupted, SendClaim, SendClaims
from smsbridge.status import publish_status
from smsbridge.waiting import Backoff, MustWait
from workers.consumer import DeliveryLost, Park, int_header
from workers.outbound import rules
from workers.outbound.account import Account, AccountHeld, Records
from workers.outbound.intake import fail, now_ms, tell_failed
from workers.outbound.job import BadJob, SendJob

log = get_logger(__name__)

HELD_WAIT = 5.0  # seconds a request that met a held account waits before it is looked at again
RECORDS_RETRY = 30.0  # seconds before looking up Flowroute's records again after they failed
# Look for an in-doubt send this far around its attempt (clocks differ; records lag).
RECORDS_MARGIN = timedelta(minutes=5)
# A record stamped this long before the attempt began is another send of the same text (an
# earlier request, a send from Flowroute's portal), never this attempt's.
CLOCK_SKEW = timedelta(minutes=1)
# After a wait this long for a rate slot, the opt-out list is read again before the POST.
OPT_OUT_RECHECK_AFTER = 2.0
LOOK_UP_WAIT = 60.0  # seconds an in-doubt send waits for the account's look-up to be free


class _LookUpLater(Exception):
    """An in-doubt send cannot be looked up yet; the request waits in a delay queue."""


class _PolicyApplies(Exception):
    """The number's policy stopped a send after its wait for a rate slot (it was blocked, or
    it waits for quiet hours to end): `outcome` says which; it was handled."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass
class _Open:
    """A claim being worked on, and whether an attempt of it may have been accepted."""

    claim: SendClaim
    in_doubt_since: datetime | None
    closed: bool = False


OptOutCheck = Callable[[str, str], Awaitable[bool]]  # (our number, recipient) -> opted out?


class Sender:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        claims: SendClaims,
        delays: Delays,
        opted_out: OptOutCheck | None = None,
    ) -> None:
        self.config = config
        self.settings = config.outbound
        self.broker = broker
        self.claims = claims
        self.delays = delays
        self.opted_out = opted_out
        gw = config.gateway
        self._dlr_base = f"{gw.public_url}/{gw.dlr_path}/" if gw.public_url else None
        self._dlr_secret = gw.dlr_secret.get_secret_value().encode() if gw.dlr_secret else None
        self._dlr_lifetime = self.settings.max_age_seconds + gw.receipt_window_seconds
        # (to, from, body) of the sends in flight here (see _look_up).
        self._in_flight: collections.Counter[tuple[str, str, str | None]] = collections.Counter()

    async def handle(self, account: Account, message: AbstractIncomingMessage) -> str:
        try:
            job = SendJob.from_json(message.body)
        except BadJob as exc:
            await tell_failed(self.broker, message, str(exc))
            raise Park(str(exc)) from None
        if account.held:
            await self._later(message, account, HELD_WAIT, "account held")
            return "held"
        requeued = int_header(message, topology.H_REQUEUED)
        if requeued:
            await self.claims.requeued(job.id, requeued / 1000)
        try:
            claim = await self.claims.claim(job.id, job.history(), account.interrupt)
        except Interrupted:
            return await self._interrupted(account, message)
        if claim.provider_id is not None:
            # Sent before (a redelivery, or the PBX published the id twice): never again, but
            # make sure its status.sent was published (the same event, message_id included).
            await self._status_sent(job, claim.provider_id, claim.attempts)
            return "duplicate"
        if claim.settled is not None:
            # Failed or blocked for good before (this handler run again after its status
            # publish or its park failed, or the PBX reused the id): the same status.failed
            # again, and a failed request is parked as it was the first time.
            reason = claim.reason or "this request id failed or was blocked before"
            await publish_status(
                self.broker,
                job.id,
                "failed",
                reason=reason,
                attempts=claim.attempts,
                segments=job.segments,
            )
            if claim.settled == "failed":
                raise Park(reason)
            return "duplicate"
        work = _Open(claim, claim.in_doubt_since)
        try:
            if claim.receipted is not None:
                # A delivery receipt for this request came although its send was never
                # recorded (its answer was lost): it was accepted. Nothing to look up.
                attempts = max(int_header(message, topology.H_ATTEMPTS), claim.attempts)
                await self._record_sent(work, claim.receipted, attempts)
                await self._status_sent(job, claim.receipted, attempts)
                log.info("a send whose answer was lost is known from its delivery receipt")
                return "reconciled"
            if work.in_doubt_since is None:  # else it may be sent already: look it up first
                waiting = await self._policy(account, message, job, work)
                if waiting is not None:
                    return waiting
            return await self._send(account, message, job, work)
        finally:
            if not work.closed:
                try:
                    await self.claims.released(claim, work.in_doubt_since)
                except MustWait as exc:  # its lease runs out instead: in doubt, looked up
                    log.warning("claim not released", error=str(exc))

    async def _interrupted(self, account: Account, message: AbstractIncomingMessage) -> str:
        """A wait was cut short: give the delivery back when stopping, else (held) wait."""
        if account.draining:
            raise DeliveryLost()
        await self._later(message, account, HELD_WAIT, "account held")
        return "held"

    async def _policy(
        self,
        account: Account,
        message: AbstractIncomingMessage,
        job: SendJob,
        work: _Open,
        *,
        opt_out: bool = True,
    ) -> str | None:
        """The number's policy before a send (rules.py): a recipient who opted out blocks it
        (checked when `opt_out`: a query), quiet hours make it wait. None: go ahead."""
        policy = self.config.policy_of(self.config.number(job.from_))
        if policy is None or job.auto_reply is not None:
            return None
        if (
            opt_out
            and policy.opt_out
            and self.opted_out is not None
            and await self.opted_out(job.from_, job.to)
        ):
            refusal = rules.opted_out(job.from_, job.to, policy)
            POLICY_BLOCKED.labels(refusal.rule).inc()
            await self._settle(work, "blocked", refusal.reason, 0)
            await publish_status(
                self.broker, job.id, "failed", reason=refusal.reason, segments=job.segments
            )
            return "blocked"
        now = clock.now()
        until = rules.quiet_hours_end(policy, now)
        if until is None:
            return None
        if not int_header(message, topology.H_QUIET_NOTIFIED):
            await publish_status(
                self.broker, job.id, "progress", reason="quiet hours", segments=job.segments
            )
        wait = (until - now).total_seconds()
        await self._later(
            message, account, wait, "quiet hours", extra={topology.H_QUIET_NOTIFIED: 1}
        )
        log.info("quiet hours: the request waits", until=until.isoformat(), seconds=round(wait))
        return "quiet_hours"

    async def _send(
        self, account: Account, message: AbstractIncomingMessage, job: SendJob, work: _Open
    ) -> str:
        attempts = max(int_header(message, topology.H_ATTEMPTS), work.claim.attempts)
        if work.in_doubt_since is not None:
            # One look-up (and its record) at a time per account: two in-doubt requests with
            # the same to, from and body must not both take the one record found. Each is
            # quick (one listing of the records serves them all); a wait that is not goes to
            # a delay queue, not on as an unacked delivery.
            if not await _acquire(account.reconciling, account.interrupt, LOOK_UP_WAIT):
                if account.draining:
                    raise DeliveryLost()
                reason = "account held" if account.held else "another look-up is running"
                await self._later(message, account, HELD_WAIT, reason)
                return "in_doubt"
            try:
                try:
                    found = await self._look_up(account, message, job, work)
                except _LookUpLater:
                    return "in_doubt"  # waits in a delay queue
                if found is not None and not await self._record_sent(
                    work, found, attempts, reconciled=True
                ):
                    # Another request with the same text took that record first (or this
                    # one is no longer ours): look again, without it.
                    await self._later(message, account, HELD_WAIT, "its record belongs to another")
                    return "in_doubt"
            finally:
                account.reconciling.release()
            if found is not None:
                await self._status_sent(job, found, attempts)
                log.info("a send whose outcome was unknown had been accepted", provider_id=found)
                return "reconciled"
            log.info("a send whose outcome was unknown was not accepted; sending it now")
            work.in_doubt_since = None
            if self._too_old(message):
                reason = f"gave up after {attempts} attempts whose outcome stayed unknown"
                await self._settle(work, "failed", reason, attempts)
                await fail(self.broker, job.id, reason, attempts, job.segments)
            waiting = await self._policy(account, message, job, work)  # it may have changed
            if waiting is not None:
                return waiting
        dlr = self._dlr_url(job, account, attempts + 1)
        payload = message_body(job.to, job.from_, job.body, job.media_urls, dlr)
        try:
            sent, attempts = await self._attempts(account, message, work, payload, job, attempts)
        except _PolicyApplies as exc:
            return exc.outcome
        except AccountHeld:
            await self._later(message, account, HELD_WAIT, "account held", attempts)
            return "held"
        except Permanent as exc:
            await self._settle(work, "failed", f"Flowroute refused: {exc.reason}", exc.attempts)
            await fail(
                self.broker, job.id, f"Flowroute refused: {exc.reason}", exc.attempts, job.segments
            )
        except Transient as exc:
            if work.in_doubt_since is not None:
                await self._later(
                    message,
                    account,
                    self.settings.reconcile_after,
                    exc.reason,
                    exc.attempts,
                    {topology.H_RETRYING_SINCE: _retrying_since(message)},
                )
                return "in_doubt"
            return await self._retry_later(message, account, job, work, exc)
        await self._record_sent(work, sent.provider_id, attempts)
        await self._status_sent(job, sent.provider_id, attempts)
        return "sent"

    def _too_old(self, message: AbstractIncomingMessage) -> bool:
        """Retrying for longer than `max_age_seconds` (waits for quiet hours or a held account
        do not count: they are not failures)."""
        since = int_header(message, topology.H_RETRYING_SINCE)
        return bool(since) and time.time() - since / 1000 > self.settings.max_age_seconds

    async def _attempts(
        self,
        account: Account,
        message: AbstractIncomingMessage,
        work: _Open,
        payload: dict[str, Any],
        job: SendJob,
        attempts: int,
    ) -> tuple[Sent, int]:
        """POST, with quick retries of transient failures that surely were not accepted. Each
        attempt waits for its rate slot, reads the policy again, records itself (`_attempting`)
        and posts."""

        async def pause(seconds: float) -> None:  # a quick retry's wait ends when we stop
            if not await _wait_unless(account.interrupt, seconds):
                raise DeliveryLost() if account.draining else AccountHeld()

        content = (job.to, job.from_, job.body)
        async for attempt in AsyncRetrying(  # a new one per call: not shareable
            retry=retry_if_exception(lambda e: isinstance(e, Transient) and not e.in_doubt),
            stop=stop_after_attempt(self.settings.in_process_attempts),
            wait=_wait,
            sleep=pause,
            before_sleep=lambda _: SEND_RETRIES.labels(account.name, "quick").inc(),
            reraise=True,
        ):
            with attempt:
                attempts += 1
                waited = time.monotonic()
                slot_at = await account.slot(job.is_mms, message)
                # Quiet hours may have begun while it waited for the slot; after a long wait,
                # the recipient may have opted out too.
                long_wait = time.monotonic() - waited > OPT_OUT_RECHECK_AFTER
                outcome = await self._policy(account, message, job, work, opt_out=long_wait)
                if outcome is not None:
                    raise _PolicyApplies(outcome)
                await self._attempting(account, message, job, work, attempts, slot_at)
                work.in_doubt_since = datetime.now(UTC)
                started = time.perf_counter()
                self._in_flight[content] += 1
                try:
                    sent = await account.client.send(payload)
                except SendError as exc:
                    SENDS.labels(account.name, _outcome(exc)).inc()
                    account.last_minute.add(_outcome(exc))
                    exc.attempts = attempts
                    if not (isinstance(exc, Transient) and exc.in_doubt):
                        work.in_doubt_since = None  # refused: surely not accepted
                    if isinstance(exc, AuthFailure):
                        account.hold(exc)
                        raise AccountHeld() from exc
                    raise
                finally:
                    self._in_flight[content] -= 1
                    if not self._in_flight[content]:
                        del self._in_flight[content]
                    SEND_SECONDS.labels(account.name).observe(time.perf_counter() - started)
                SENDS.labels(account.name, "sent").inc()
                account.last_minute.add("sent")
        return sent, attempts

    async def _attempting(
        self,
        account: Account,
        message: AbstractIncomingMessage,
        job: SendJob,
        work: _Open,
        attempts: int,
        slot_at: float,
    ) -> None:
        """Record the attempt (durably: if we die from here on, the send is in doubt), then
        make sure the POST still starts within the rate slot's margin of its slot's start
        (`slot_at`): a busy event loop, a check of the opt-out list or a record that took
        longer could let this attempt land in the next second's allowance. Then it takes
        another slot, leaving that one unused."""
        while True:
            try:
                await self.claims.attempting(work.claim, attempts)
            except ClaimLost:
                raise DeliveryLost() from None
            if time.monotonic() - slot_at <= account.slot_margin(job.is_mms):
                return
            slot_at = await account.slot(job.is_mms, message)

    async def _look_up(
        self, account: Account, message: AbstractIncomingMessage, job: SendJob, work: _Open
    ) -> str | None:
        """Settle an in-doubt send against Flowroute's records: its provider id if it was
        accepted, None if it was not. Raises _LookUpLater when that cannot be told yet (the
        request was sent to a delay queue)."""
        since = work.in_doubt_since
        assert since is not None
        due = since.timestamp() + self.settings.reconcile_after - time.time()
        if due > 0:  # give Flowroute's records time to show it
            await self._later(message, account, due, "looking up a send whose outcome is unknown")
            raise _LookUpLater()
        context = await self.claims.look_up(job.id, (), job.history())
        if context.busy or (job.to, job.from_, job.body) in self._in_flight:
            # The same text to the same person is being sent right now: its record could be
            # taken for ours before its own answer is recorded. Look again in a moment.
            await self._later(message, account, HELD_WAIT, "the same text is being sent")
            raise _LookUpLater()
        attributes = message_body(job.to, job.from_, job.body, job.media_urls, None)
        settle = self.settings.reconcile_after
        try:
            listed = account.records  # one listing for every in-doubt send it covers
            if listed is None or not listed.cover(since, RECORDS_MARGIN, settle):
                now = datetime.now(UTC)
                # Wide enough to cover the other sends a crash left in doubt with this one,
                # and no wider however long ago the attempt was (a held account, records that
                # could not be read for hours): a send is stamped within minutes of it.
                start = since - 2 * RECORDS_MARGIN
                end = min(now, since + 2 * RECORDS_MARGIN) + RECORDS_MARGIN
                listed = Records(start, end, now, await account.client.records(start, end))
                account.records = listed
            candidates = matching_records(
                listed.records, attributes["data"]["attributes"], not_before=since - CLOCK_SKEW
            )
            # Which of them other requests hold (however old), and whether one with the same
            # text is in flight, as of now that the listing is in: one may have been sent
            # meanwhile.
            context = await self.claims.look_up(job.id, candidates, job.history())
            if context.busy or (job.to, job.from_, job.body) in self._in_flight:
                await self._later(message, account, HELD_WAIT, "the same text is being sent")
                raise _LookUpLater()
            found = next((c for c in candidates if c not in context.exclude), None)
        except AuthFailure as exc:
            account.hold(exc)
            await self._later(message, account, HELD_WAIT, "account held")
            raise _LookUpLater() from None
        except Transient as exc:
            await self._later(message, account, RECORDS_RETRY, exc.reason)
            raise _LookUpLater() from None
        return found

    async def _retry_later(
        self,
        message: AbstractIncomingMessage,
        account: Account,
        job: SendJob,
        work: _Open,
        exc: Transient,
    ) -> str:
        delays = self.settings.retry_delays  # never empty: the configuration requires one
        rounds = int_header(message, topology.H_RETRIES)
        delay = delays[min(rounds, len(delays) - 1)]
        # Counted from the first failure, not from when the request arrived: a night in
        # quiet hours or a held account must not use up the retry window.
        since = _retrying_since(message)
        age = time.time() - since / 1000
        if age + delay > self.settings.max_age_seconds:
            reason = f"gave up after {exc.attempts} attempts over {age:.0f} s: {exc.reason}"
            await self._settle(work, "failed", reason, exc.attempts)
            await fail(self.broker, job.id, reason, exc.attempts, job.segments)
        headers = {topology.H_RETRIES: rounds + 1, topology.H_RETRYING_SINCE: since}
        await self._later(message, account, delay, exc.reason, exc.attempts, headers, exact=True)
        SEND_RETRIES.labels(account.name, "delayed").inc()
        log.warning("send failed, retrying later", reason=exc.reason, retry_in=delay)
        return "retry"

    async def _later(
        self,
        message: AbstractIncomingMessage,
        account: Account,
        seconds: float,
        reason: str,
        attempts: int | None = None,
        extra: dict[str, Any] | None = None,
        *,
        exact: bool = False,
    ) -> None:
        headers: dict[str, Any] = {
            topology.H_REASON: reason[:500],
            topology.H_FIRST_SEEN: int_header(message, topology.H_FIRST_SEEN) or now_ms(),
            **(extra or {}),
        }
        if attempts is not None:
            headers[topology.H_ATTEMPTS] = attempts
        await self.delays.later(
            message,
            topology.account_key(account.name),
            seconds,
            headers,
            exact_tier=seconds if exact else None,
        )

    async def _record_sent(
        self, work: _Open, provider_id: str, attempts: int, *, reconciled: bool = False
    ) -> bool:
        """Record an accepted send, however long the ledger takes: until it is recorded, a
        redelivery could not tell it was sent. One found by a look-up (`reconciled`) is not
        recorded when another request holds its record already: False."""
        backoff = Backoff()
        while True:
            try:
                if reconciled:
                    if not await self.claims.reconciled(work.claim, provider_id, attempts):
                        return False
                else:
                    await self.claims.sent(work.claim, provider_id, attempts)
            except MustWait as exc:
                log.warning("could not record a send yet; retrying", error=str(exc))
                await asyncio.sleep(backoff.next())
                continue
            work.closed = True
            return True

    async def _settle(self, work: _Open, status: str, reason: str, attempts: int) -> None:
        await self.claims.settle(work.claim, status, reason, attempts)
        work.closed = True

    async def _status_sent(self, job: SendJob, provider_id: str, attempts: int) -> None:
        await publish_status(
            self.broker,
            job.id,
            "sent",
            provider_id=provider_id,
            attempts=attempts,
            segments=job.segments,
        )

    def _dlr_url(self, job: SendJob, account: Account, attempt: int) -> str | None:
        if not (self._dlr_base and self._dlr_secret):
            return None
        ref = receipt_token.ReceiptRef(
            job.id,
            account.name,
            attempt,
            receipt_token.expiry(self._dlr_lifetime),
            job.segments,
        )
        return self._dlr_base + receipt_token.sign(self._dlr_secret, ref)


async def _acquire(lock: asyncio.Lock, unless: asyncio.Event, seconds: float) -> bool:
    """Take `lock` within `seconds`; False (without it) on timeout or when `unless` is set."""
    if unless.is_set():
        return False
    taking = asyncio.ensure_future(lock.acquire())
    stopped = asyncio.ensure_future(unless.wait())
    try:
        await asyncio.wait({taking, stopped}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not taking.done():
            taking.cancel()
    if taking.done() and not taking.cancelled():
        if unless.is_set():
            lock.release()
            return False
        return True
    return False


async def _wait_unless(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; False (at once) if `event` is set first."""
    if event.is_set():
        return False
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return True
    return False


def _retrying_since(message: AbstractIncomingMessage) -> int:
    """Epoch milliseconds of the request's first failure (now, if this is it)."""
    return int_header(message, topology.H_RETRYING_SINCE) or now_ms()


def _outcome(exc: Exception) -> str:
    if isinstance(exc, AuthFailure):
        return "auth_failed"
    if isinstance(exc, Permanent):
        return "rejected"
    status = getattr(exc, "status", None)
    return "rate_limited" if status == 429 else "transient"


def _wait(state: RetryCallState) -> float:
    """Honour Retry-After (capped by the client) when present, else exponential + jitter."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Transient) and exc.retry_after is not None:
        return exc.retry_after
    return float(wait_exponential_jitter(initial=0.2, max=5.0, jitter=0.3)(state))
