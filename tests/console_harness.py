"""Test harness for the console: a console started in process on a free port with a real ledger
and a real RabbitMQ vhost, messages seeded through the ledger's own modules, and parked
messages published the way workers/consumer.py `park()` does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

from console.app import serve
from smsbridge import envelope, topology
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.ledger.connection import Ledger
from smsbridge.ledger.events import StatusLedger, StatusRecord
from smsbridge.ledger.inbound import LedgerClaims
from smsbridge.ledger.outbound import LedgerSendClaims
from smsbridge.once import InboundHistory, OutboundHistory
from tests.harness import free_port, make_config

TOKEN = "console-test-token-0123456789-abcdef"
OURS = "+12025551234"  # "Main line" in make_config
TOLL_FREE = "+18335550111"
_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def console_config(
    amqp_url: str,
    ledger_url: str,
    tmp: Path,
    *,
    port: int | None = None,
    public_url: str | None = None,
    gateway_port: int | None = None,
    extra: str = "",
) -> Config:
    port = port or free_port()
    public = f'public_url = "{public_url}"\n' if public_url else ""
    return make_config(
        amqp_url,
        tmp / "media",
        port=gateway_port,
        extra=f"""
[ledger]
url = "{ledger_url}"

[console]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
{public}
{extra}
""",
    )


@dataclass
class Console:
    config: Config
    url: str
    ledger: Ledger
    broker: Broker


@asynccontextmanager
async def running_console(
    config: Config,
    *,
    wait_ledger: bool = True,
    wait_broker: bool = True,
    publish_timeout: float = 2.0,
) -> AsyncIterator[Console]:
    """The console on `config.console.listen`, with its own ledger and broker connections."""
    assert config.ledger is not None and config.console is not None
    ledger = Ledger(config.ledger, "console-test")
    broker = Broker(config.broker.addresses(), "console-test", publish_timeout=publish_timeout)
    await ledger.start()
    await broker.start()
    runner = await serve(config, ledger=ledger, broker=broker)
    try:
        if wait_broker:
            await broker.wait_connected(15)
        if wait_ledger:
            await ledger.wait_available(20)
        yield Console(config, f"http://{config.console.listen}", ledger, broker)
    finally:
        await runner.cleanup()
        await ledger.close()
        await broker.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(session: aiohttp.ClientSession, url: str, token: str = TOKEN) -> str:
    """Log in through the login page; returns the session's CSRF token (from a page)."""
    async with session.post(
        f"{url}/login", data={"token": token, "next": "/"}, allow_redirects=False
    ) as response:
        assert response.status == 303, await response.text()
    async with session.get(f"{url}/") as response:
        assert response.status == 200
        found = _CSRF.search(await response.text())
    assert found is not None
    return found.group(1)


# -- seeding the ledger ------------------------------------------------------------------------


async def seed_inbound(
    ledger: Ledger,
    message_id: str,
    *,
    from_: str = "+12065550142",
    to: str = OURS,
    body: str = "hello",
    extension: str | None = "100",
    media: list[dict[str, Any]] | None = None,
    raw: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    status: str = "delivered_to_pbx",
) -> None:
    claims = LedgerClaims(ledger, ttl=60)
    history = InboundHistory(
        provider="flowroute",
        from_=from_,
        to=to,
        body=body,
        media=media or [],
        extension=extension,
        created_at=created_at,
        raw=raw if raw is not None else {"body": body, "direction": "inbound"},
    )
    claim = await claims.claim(message_id, history)
    await claims.succeeded(claim, status)


async def seed_outbound(
    ledger: Ledger,
    request_id: str,
    *,
    from_: str = OURS,
    to: str = "+12065550142",
    body: str = "hi there",
    extension: str | None = "100",
    media: list[str] | None = None,
    statuses: tuple[str, ...] = (),
    reason: str | None = None,
) -> None:
    """An outbound request recorded `queued`, then each of `statuses` as status events."""
    claims = LedgerSendClaims(ledger, lease=timedelta(seconds=30), ttl=60)
    await claims.queued(
        request_id, OutboundHistory("flowroute", from_, to, body, media or [], extension)
    )
    events = StatusLedger(ledger)
    at = datetime.now(UTC)
    provider_id = f"mdr2-{request_id}"
    for i, status in enumerate(statuses):
        detail: dict[str, Any] = {"provider_id": provider_id, "attempts": 1}
        if status in ("delivered", "undelivered"):
            detail.update(
                level=2, provider_status="DELIVRD" if status == "delivered" else "UNDELIV"
            )
        if status == "failed":
            detail = {"attempts": 3}
        await events.record(
            StatusRecord(
                request_id,
                status,
                at + timedelta(milliseconds=10 * (i + 1)),
                reason if status in ("failed", "undelivered", "blocked") else None,
                detail,
                f"{request_id}-{status}",
            )
        )


async def set_created(ledger: Ledger, message_id: str, when: datetime) -> None:
    await ledger.execute("UPDATE messages SET created_at = $2 WHERE id = $1", message_id, when)


# -- parked messages ---------------------------------------------------------------------------


async def park(
    amqp_url: str,
    stage: str,
    body: dict[str, Any],
    message_id: str,
    reason: str,
    *,
    original: tuple[str, str] | None = None,
) -> None:
    """Publish to smsbridge.parking as a worker parks a message (headers as in park())."""
    exchange, key = (
        original
        or {
            "inbound": (topology.INTERNAL, topology.INBOUND_KEY),
            "media": (topology.INTERNAL, topology.MEDIA_KEY),
            "outbound": (topology.OUTBOUND, topology.SEND_KEY),
        }[stage]
    )
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel)
        parking = await channel.get_exchange(topology.PARKING)
        message = topology.json_message(
            orjson.dumps(body),
            message_id=message_id,
            headers={
                topology.H_REASON: reason,
                topology.H_STAGE: stage,
                topology.H_PARKED_AT: envelope.now_rfc3339(),
                topology.H_ORIGINAL_EXCHANGE: exchange,
                topology.H_ORIGINAL_KEY: key,
            },
        )
        await parking.publish(message, routing_key=stage, mandatory=True)
