"""Doing a message's irreversible step once: claims on its id.

The resolver publishes one InboundMessage per Flowroute id. Before it publishes, it claims the
id; after the confirm, it marks the claim done. A claim tells the handler what happened before:
- `done`: a twin (a Flowroute resend, a redelivery) already did it: ack and stop;
- `in_doubt_since`: an earlier attempt lost its confirm, so it may have been stored: settle
  that first (the journal) instead of doing it again;
- otherwise: go.

`MemoryClaims` keeps claims in this process (single replica, forgotten on restart); the ledger
keeps them in PostgreSQL for every replica (smsbridge/ledger).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from smsbridge.recent import RecentIds
from smsbridge.waiting import MustWait


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    done: bool = False
    in_doubt_since: datetime | None = None
    token: str = ""
    # When the claim's lease runs out unless renewed (time.monotonic(); None: never), and how
    # long each renewal extends it.
    expires: float | None = None
    lease: float | None = None


class Lease:
    """Our hold on a claim while its handler works: valid until its lease runs out (less a
    margin for the step about to start) or a renewal finds it taken over. After that, the step
    must not start: another handler may have taken the id over and done it."""

    MARGIN = 5.0  # seconds (at most a third of the lease): the step must finish within it

    def __init__(self, claim: Claim) -> None:
        self._expires = claim.expires
        self._lease = claim.lease
        self.lost = False

    def renewed(self, at: float) -> None:
        """A renewal that was sent at `at` (time.monotonic()) succeeded."""
        if self._lease is not None:
            self._expires = at + self._lease

    @property
    def renew_every(self) -> float:
        """How often to renew: three chances before it runs out."""
        return 10.0 if self._lease is None else self._lease / 3

    @property
    def valid(self) -> bool:
        if self.lost:
            return False
        if self._expires is None or self._lease is None:
            return True
        return time.monotonic() < self._expires - min(self.MARGIN, self._lease / 3)


class ClaimExpired(MustWait):
    """Our claim ran out (or was taken over) before the step began: the step is not done, and
    the handler runs again (it claims the id anew, or finds it done by another)."""


@dataclass(frozen=True, slots=True)
class InboundHistory:
    """What the ledger keeps of an inbound message (nothing without a ledger)."""

    provider: str | None = None
    from_: str | None = None
    to: str | None = None
    body: str | None = None
    media: list[dict[str, Any]] | None = None
    extension: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] | None = None


class Claims(Protocol):
    async def claim(self, key: str, history: InboundHistory | None = None) -> Claim:
        """Take `key` for this handler. Waits while another handler holds it."""
        ...

    async def succeeded(self, claim: Claim, status: str = ..., **detail: Any) -> bool:
        """The step is done and confirmed: twins are duplicates from now on. `status` and
        `detail` go into the message's history. False: the claim was no longer ours."""
        ...

    def unrecorded(self, claim: Claim) -> None:
        """The step was done but cannot be recorded (the ledger stayed away): twins in this
        process are duplicates; elsewhere, the claim's lease runs out and whoever takes it
        over settles the doubt."""
        ...

    async def released(self, claim: Claim, in_doubt_since: datetime | None) -> None:
        """The step did not complete; `in_doubt_since` when it may have (a lost confirm)."""
        ...

    async def renew(self, claim: Claim) -> bool:
        """Still working on it (a publish waits for its confirm): keep the claim. False: it
        is no longer ours (it ran out and another handler took it over)."""
        ...


class MemoryClaims:
    """Claims in this process's memory, for `ttl` seconds after success."""

    def __init__(self, ttl: float) -> None:
        self.recent = RecentIds(ttl=ttl)
        self._in_doubt: dict[str, datetime] = {}

    async def claim(self, key: str, history: InboundHistory | None = None) -> Claim:
        while True:
            if self.recent.done(key):
                return Claim(key, done=True)
            twin = self.recent.pending(key)
            if twin is None:
                break
            # The same id is being handled right now (a resend, or the redelivery of a
            # delivery whose channel closed while its handler went on): its outcome decides.
            await asyncio.shield(twin)
        self.recent.begin(key)
        return Claim(key, in_doubt_since=self._in_doubt.get(key))

    async def succeeded(
        self, claim: Claim, status: str = "delivered_to_pbx", **detail: Any
    ) -> bool:
        self._in_doubt.pop(claim.key, None)
        self.recent.finish(claim.key, True)
        return True

    def unrecorded(self, claim: Claim) -> None:
        self.recent.finish(claim.key, True)

    async def released(self, claim: Claim, in_doubt_since: datetime | None) -> None:
        if in_doubt_since is not None:
            self._in_doubt.setdefault(claim.key, in_doubt_since)
        self.recent.finish(claim.key, False)

    async def renew(self, claim: Claim) -> bool:
        return True  # nobody else can take it


@dataclass(frozen=True, slots=True)
class SendClaim:
    """What is known of an outbound request when its sender takes it."""

    request_id: str
    provider_id: str | None = None  # it was sent: Flowroute's id
    attempts: int = 0  # attempts made so far (when it was sent, or settled)
    settled: str | None = None  # "failed" or "blocked" for good: never sent
    reason: str | None = None  # why it was settled
    in_doubt_since: datetime | None = None  # an attempt whose outcome is unknown began then
    # A delivery receipt for this request (its signed token names it) reported this provider
    # id: an attempt whose outcome we never saw was accepted.
    receipted: str | None = None
    token: str = ""


@dataclass(frozen=True, slots=True)
class LookUp:
    """What a look-up of an in-doubt send in Flowroute's records must know."""

    exclude: set[str]  # provider ids that belong to other requests: never this one's
    busy: bool  # another request with the same to, from and body may be in flight right now


class ClaimLost(Exception):
    """Our claim ran out and another handler took the request over: do not send it."""


class Interrupted(Exception):
    """A wait for another handler of the same request was cut short by `abort` (the worker
    stops, the account was held): nothing was claimed."""


async def wait_or_abort(
    waiting: asyncio.Future[Any] | None, seconds: float | None, abort: asyncio.Event | None
) -> None:
    """Wait for `waiting` (or `seconds`); raise Interrupted as soon as `abort` is set."""
    if abort is None:
        if waiting is not None:
            await asyncio.wait_for(asyncio.shield(waiting), seconds)
        else:
            await asyncio.sleep(seconds or 0)
        return
    if abort.is_set():
        raise Interrupted()
    aborted = asyncio.ensure_future(abort.wait())
    pending: set[asyncio.Future[Any]] = {aborted}
    if waiting is not None:
        pending.add(waiting)
    try:
        await asyncio.wait(pending, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        aborted.cancel()
    if abort.is_set():
        raise Interrupted()


@dataclass(frozen=True, slots=True)
class OutboundHistory:
    """What the ledger keeps of an outbound request (nothing without a ledger)."""

    provider: str
    from_: str
    to: str
    body: str | None
    media: list[str]
    extension: str | None


class SendClaims(Protocol):
    """At most one accepted send per request id: claim before, record the outcome after."""

    async def queued(self, request_id: str, history: OutboundHistory) -> None:
        """The request was accepted and waits for its account's sender (history)."""
        ...

    async def blocked(self, request_id: str, history: OutboundHistory, reason: str) -> None:
        """A policy refused the request before it was queued: never sent."""
        ...

    async def claim(
        self,
        request_id: str,
        history: OutboundHistory | None = None,
        abort: asyncio.Event | None = None,
    ) -> SendClaim:
        """Take the request for this handler. Waits while another handler holds it (raises
        Interrupted when `abort` is set meanwhile)."""
        ...

    async def attempting(self, claim: SendClaim, attempt: int) -> None:
        """Record, durably, that attempt number `attempt` is about to be POSTed: if we die
        before `sent`, whoever takes the request over knows it is in doubt. Raises ClaimLost
        when the request is no longer ours."""
        ...

    async def sent(self, claim: SendClaim, provider_id: str, attempts: int) -> None: ...

    async def reconciled(self, claim: SendClaim, provider_id: str, attempts: int) -> bool:
        """Record that a look-up found this in-doubt request's send as `provider_id`, unless
        another request holds that record already (or the request is no longer ours): False,
        nothing recorded, look again. Two look-ups of the same text never both take one
        record."""
        ...

    async def settle(self, claim: SendClaim, status: str, reason: str, attempts: int) -> None:
        """Failed or blocked for good: it will never be sent."""
        ...

    async def released(self, claim: SendClaim, in_doubt_since: datetime | None) -> None:
        """Not sent this time (it waits, or retries later); `in_doubt_since` when an attempt
        may have been accepted although we never saw the answer."""
        ...

    async def requeued(self, request_id: str, at: float) -> None:
        """An operator requeued the request at `at` (epoch seconds): if it was settled before
        then, it may be sent again (the requeue tools reopen it in the ledger themselves)."""
        ...

    async def look_up(
        self, request_id: str, candidates: Collection[str], history: OutboundHistory
    ) -> LookUp:
        """Looking `request_id` up in Flowroute's records: which of `candidates` (the provider
        ids of the records that could be its send) other requests hold, however old, and
        whether another request saying the same thing to the same person is being sent right
        now (its record could be taken for ours before its own answer is recorded)."""
        ...


class MemorySendClaims:
    """Send claims in this process's memory: exact for one replica; forgotten on restart."""

    def __init__(self, ttl: float) -> None:
        self.sent_ids = RecentIds(ttl=ttl)
        self.settled_ids = RecentIds(ttl=ttl)
        # id -> (status, reason, attempts, when it was settled)
        self._settled: dict[str, tuple[str, str, int, float]] = {}
        self._in_doubt: dict[str, datetime] = {}

    async def queued(self, request_id: str, history: OutboundHistory) -> None:
        return None

    async def blocked(self, request_id: str, history: OutboundHistory, reason: str) -> None:
        return None

    async def claim(
        self,
        request_id: str,
        history: OutboundHistory | None = None,
        abort: asyncio.Event | None = None,
    ) -> SendClaim:
        while True:
            record = self.sent_ids.value(request_id)
            if record is not None:
                provider_id, _, attempts = record.partition(" ")
                return SendClaim(request_id, provider_id=provider_id, attempts=int(attempts or 0))
            if self.settled_ids.done(request_id) and request_id in self._settled:
                status, reason, attempts_, _ = self._settled[request_id]
                return SendClaim(request_id, settled=status, reason=reason, attempts=attempts_)
            twin = self.sent_ids.pending(request_id)
            if twin is None:
                break
            await wait_or_abort(twin, None, abort)
        self.sent_ids.begin(request_id)
        return SendClaim(request_id, in_doubt_since=self._in_doubt.get(request_id))

    async def attempting(self, claim: SendClaim, attempt: int) -> None:
        return None  # the process that would read it back is this one

    async def sent(self, claim: SendClaim, provider_id: str, attempts: int) -> None:
        self._in_doubt.pop(claim.request_id, None)
        self.sent_ids.finish(claim.request_id, True, f"{provider_id} {attempts}")

    async def reconciled(self, claim: SendClaim, provider_id: str, attempts: int) -> bool:
        if any(v.partition(" ")[0] == provider_id for v in self.sent_ids.values()):
            return False
        await self.sent(claim, provider_id, attempts)
        return True

    async def settle(self, claim: SendClaim, status: str, reason: str, attempts: int) -> None:
        self._in_doubt.pop(claim.request_id, None)
        self._settled[claim.request_id] = (status, reason, attempts, time.time())
        self.settled_ids.finish(claim.request_id, True)
        if len(self._settled) > 2 * len(self.settled_ids) + 100:  # forget what expired
            self._settled = {k: v for k, v in self._settled.items() if self.settled_ids.done(k)}
        self.sent_ids.finish(claim.request_id, False)

    async def released(self, claim: SendClaim, in_doubt_since: datetime | None) -> None:
        if in_doubt_since is not None:
            self._in_doubt.setdefault(claim.request_id, in_doubt_since)
        self.sent_ids.finish(claim.request_id, False)

    async def requeued(self, request_id: str, at: float) -> None:
        settled = self._settled.get(request_id)
        if settled is not None and settled[3] < at:
            del self._settled[request_id]

    async def look_up(
        self, request_id: str, candidates: Collection[str], history: OutboundHistory
    ) -> LookUp:
        # One process: its sender knows what it has in flight (busy is its own to tell).
        held = {v.partition(" ")[0] for v in self.sent_ids.values()} if candidates else set()
        return LookUp(held & set(candidates), busy=False)
