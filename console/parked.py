"""Parked messages for the console: a peek at every stage and requeues, through the same code as
`smsbridge parked` (smsbridge/parking.py).

Peeking takes messages and gives them back, so two peeks at once would each miss what the
other holds: this process does one parking operation at a time, and one that waits longer than
TIMEOUT for its turn answers 503. A requeue of the outbound stage reopens each request in the
ledger first (a request settled as failed is otherwise never sent again), as `smsbridge parked
requeue outbound` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from schemas.history import STAGES, Parked
from smsbridge import parking
from smsbridge.broker import Broker, PublishFailed
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.outbound import reopen
from smsbridge.logs import get_logger

log = get_logger(__name__)

TIMEOUT = 30.0
_TROUBLE = (*CONNECTION_EXCEPTIONS, TimeoutError, PublishFailed)


class BrokerUnavailable(Exception):
    """RabbitMQ cannot be reached right now (the API answers 503)."""


class ParkingBusy(Exception):
    """Another parking operation of this process (a long requeue) still runs (503)."""


class RequeueInterrupted(Exception):
    """A requeue stopped part way (the API answers 503 with this text: how many were requeued,
    and why it stopped)."""


def parked_at(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def view(item: parking.Parked) -> Parked:
    """A parked message as the API shows it."""
    return Parked.model_validate(
        {
            "stage": item.stage,
            "id": item.message_id,
            "reason": item.reason,
            "parked_at": parked_at(item.parked_at),
            "body": item.body,
        }
    )


class ParkingDesk:
    def __init__(self, broker: Broker, ledger: Ledger) -> None:
        self.broker = broker
        self.ledger = ledger
        self._one_at_a_time = asyncio.Lock()

    def _ready(self) -> None:
        if not self.broker.ready:
            raise BrokerUnavailable("broker not connected")

    async def peek(self, stages: tuple[str, ...] = STAGES) -> list[parking.Parked]:
        """What is parked in each stage (up to parking.PEEK_LIMIT each), stage by stage."""
        self._ready()
        found: list[parking.Parked] = []
        try:
            async with self._turn():
                for stage in stages:
                    found.extend(await asyncio.wait_for(parking.peek(self.broker, stage), TIMEOUT))
        except _TROUBLE as exc:
            raise BrokerUnavailable(str(exc)) from None
        return found

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        # A requeue may wait for confirms as long as a memory alarm lasts: others give up.
        try:
            await asyncio.wait_for(self._one_at_a_time.acquire(), TIMEOUT)
        except TimeoutError:
            raise ParkingBusy("another requeue is still running") from None
        try:
            yield
        finally:
            self._one_at_a_time.release()

    async def requeue(self, stage: str, ids: set[str] | None) -> parking.Requeued:
        """Publish again those in `ids` (all when None): those requeued, and those left parked
        with why."""
        if ids is not None and not ids:
            return parking.Requeued([], [])
        self._ready()

        async def reopen_request(request_id: str) -> None:
            await reopen(self.ledger, [request_id])

        before = reopen_request if stage == "outbound" else None
        try:
            async with self._turn():
                report = await parking.requeue_report(
                    self.broker, stage, ids, before_requeue=before
                )
        except parking.RequeueStopped as exc:
            log.warning("requeue stopped part way", stage=stage, error=str(exc))
            raise RequeueInterrupted(str(exc)) from None
        except _TROUBLE as exc:
            raise BrokerUnavailable(str(exc)) from None
        for item in report.not_requeued:
            log.warning(
                "parked message not requeued",
                stage=stage,
                message_id=item.message_id,
                reason=item.reason,
            )
        return report
