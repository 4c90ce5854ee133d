"""Parked messages for the console: a peek at every stage and requeues, through the same code as
`smsbridge parked` (smsbridge/parking.py).

Peeking takes messages and gives them back, so two peeks at once would each miss what the
other holds: this process does one parking operation at a time. A requeue of the outbound stage
reopens each request in the ledger first (a request settled as failed is otherwise never sent
again), as `smsbridge parked requeue outbound` does.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from schemas.history import STAGES, Parked
from smsbridge import parking
from smsbridge.broker import Broker, PublishFailed
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.outbound import reopen

TIMEOUT = 30.0
_TROUBLE = (*CONNECTION_EXCEPTIONS, TimeoutError, PublishFailed)


class BrokerUnavailable(Exception):
    """RabbitMQ cannot be reached right now (the API answers 503)."""


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
            async with self._one_at_a_time:
                for stage in stages:
                    found.extend(await asyncio.wait_for(parking.peek(self.broker, stage), TIMEOUT))
        except _TROUBLE as exc:
            raise BrokerUnavailable(str(exc)) from None
        return found

    async def requeue(self, stage: str, ids: set[str] | None) -> int:
        """Publish again those in `ids` (all when None); how many were."""
        if ids is not None and not ids:
            return 0
        self._ready()

        async def reopen_request(request_id: str) -> None:
            await reopen(self.ledger, [request_id])

        before = reopen_request if stage == "outbound" else None
        try:
            async with self._one_at_a_time:
                done = await parking.requeue(self.broker, stage, ids, before_requeue=before)
        except _TROUBLE as exc:
            raise BrokerUnavailable(str(exc)) from None
        return len(done)
