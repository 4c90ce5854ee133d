"""`smsbridge doctor`: is this deployment ready? One line per check, `ok`, `warn` or `FAIL`,
each failure with what to do about it. Exit status 1 when any check fails (warnings, such as
an http `public_url` on loopback, do not).

Checks: the broker answers (every node of a cluster) and the topology is declared; the
ledger answers and its schema is current; each provider accepts its keys (a request that
sends nothing); `public_url` is well-formed, and https unless on loopback; `allow_ips` is set
when the gateway listens beyond loopback; `dlr_secret` is set; the media directory is
writable with free space; this machine's clock agrees with the broker's within 5 seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from smsbridge import topology
from smsbridge.config import Config, mask_url
from smsbridge.flowroute.client import AuthFailure, FlowrouteClient, SendError

Status = Literal["ok", "warn", "FAIL"]
CLOCK_TOLERANCE = timedelta(seconds=5)
FREE_FAIL = 100 * 1024**2
FREE_WARN = 1024**3
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    status: Status
    name: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return f"{text}\n       fix: {self.fix}" if self.fix else text


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- checks that need nothing but the configuration ---------------------------------------


def public_url(config: Config) -> Check:
    url = config.gateway.public_url
    if url is None:
        return Check(
            "FAIL",
            "public_url",
            "gateway.public_url is not set",
            "set it to the https URL at which Flowroute reaches the gateway "
            "(e.g. https://pbx.example.com)",
        )
    parts = urlsplit(url)
    if parts.scheme == "https":
        return Check("ok", "public_url", url)
    if _loopback(parts.hostname or ""):
        return Check("warn", "public_url", f"{url} is http on loopback: fine for a demo only")
    return Check(
        "FAIL",
        "public_url",
        f"{url} is plain http on a public address: webhooks and receipts travel unencrypted",
        "put the gateway behind a TLS reverse proxy and set public_url to its https URL",
    )


def allow_ips(config: Config) -> Check:
    gateway = config.gateway
    if _loopback(gateway.host):
        return Check("ok", "allow_ips", f"the gateway listens on loopback only ({gateway.listen})")
    if gateway.allow_ips:
        return Check("ok", "allow_ips", f"webhooks accepted from {', '.join(gateway.allow_ips)}")
    return Check(
        "FAIL",
        "allow_ips",
        f"the gateway listens on {gateway.listen} and accepts webhooks from anyone",
        'set gateway.allow_ips to Flowroute\'s source addresses (e.g. ["52.88.246.140", '
        '"52.10.220.50"]), and gateway.trusted_proxies if a reverse proxy is in front',
    )


def dlr_secret(config: Config) -> Check:
    if config.gateway.dlr_secret is not None:
        return Check("ok", "dlr_secret", "delivery receipts are requested with signed URLs")
    return Check(
        "FAIL",
        "dlr_secret",
        "gateway.dlr_secret is not set: no delivery receipts are requested",
        'set gateway.dlr_secret = "${SMSBRIDGE_DLR_SECRET}" (16+ random characters)',
    )


def media_dir(config: Config) -> Check:
    directory = Path(config.media.dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return Check(
            "FAIL",
            "media",
            f"{directory} is not writable: {exc.strerror or exc}",
            "create it and give the bridge's user write access (or set media.dir)",
        )
    gib = free / 1024**3
    if free < FREE_FAIL:
        return Check("FAIL", "media", f"{directory}: {gib:.2f} GiB free", "free disk space there")
    if free < FREE_WARN:
        return Check("warn", "media", f"{directory}: only {gib:.2f} GiB free")
    return Check("ok", "media", f"{directory} writable, {gib:.1f} GiB free")


# -- checks that talk to the services -------------------------------------------------------


async def broker(config: Config) -> list[Check]:
    """Every node answers; the topology is declared; the broker's clock agrees with ours."""
    checks: list[Check] = []
    connection: aio_pika.abc.AbstractConnection | None = None
    answered = []
    for url in config.broker.addresses():
        try:
            conn = await aio_pika.connect(
                url, timeout=5, client_properties={"connection_name": "smsbridge-doctor"}
            )
        except Exception as exc:
            checks.append(
                Check(
                    "FAIL" if len(config.broker.addresses()) == 1 else "warn",
                    "broker",
                    f"{mask_url(url)} does not answer: {type(exc).__name__}: {exc}",
                    "start RabbitMQ, or correct broker.url(s) and its credentials",
                )
            )
            continue
        answered.append(mask_url(url))
        if connection is None:
            connection = conn
        else:
            await conn.close()
    if connection is None:
        if len(config.broker.addresses()) > 1:
            checks.append(
                Check("FAIL", "broker", "no node of the cluster answers", "start RabbitMQ")
            )
        return checks
    try:
        checks.append(Check("ok", "broker", f"{', '.join(answered)} answer"))
        checks.append(await _topology(connection))
        if checks[-1].status == "ok":
            checks.append(await _clock(connection))
    finally:
        await connection.close()
    return checks


async def _topology(connection: aio_pika.abc.AbstractConnection) -> Check:
    names = [topology.INBOUND_QUEUE, topology.OUTBOUND_QUEUE, topology.JOURNAL_QUEUE]
    missing = []
    for name in names:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            missing.append(name)
        finally:
            if not channel.is_closed:
                await channel.close()
    if missing:
        return Check(
            "warn",
            "topology",
            f"not declared yet ({', '.join(missing)} missing)",
            "every component declares the whole topology when it starts: start the bridge",
        )
    return Check("ok", "topology", "exchanges and queues declared")


async def _clock(connection: aio_pika.abc.AbstractConnection) -> Check:
    """The broker stamps stream chunks with its own clock: a marker written now must be read
    from (now - 5 s) and not from (now + 5 s)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        marker = f"smsbridge-doctor-{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        message = aio_pika.Message(b"", message_id=marker, delivery_mode=2)
        await channel.default_exchange.publish(message, topology.JOURNAL_QUEUE, timeout=5)
        behind = not await _read_marker(channel, marker, now - CLOCK_TOLERANCE)
        ahead = await _read_marker(channel, marker, now + CLOCK_TOLERANCE)
    finally:
        await channel.close()
    if behind or ahead:
        side = "behind" if behind else "ahead of"
        return Check(
            "FAIL",
            "clock",
            f"the broker's clock is more than 5 s {side} this machine's",
            "run NTP (chrony, systemd-timesyncd) on both machines",
        )
    return Check("ok", "clock", "within 5 s of the broker's")


async def _read_marker(channel: aio_pika.abc.AbstractChannel, marker: str, since: datetime) -> bool:
    await channel.set_qos(prefetch_count=100)
    queue = await channel.get_queue(topology.JOURNAL_QUEUE, ensure=False)
    found = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        if message.message_id == marker:
            found.set()
        await message.ack()

    tag = await queue.consume(on_message, arguments={"x-stream-offset": since})
    try:
        await asyncio.wait_for(found.wait(), 3)
    except TimeoutError:
        return False
    finally:
        await queue.cancel(tag)
    return True


async def ledger(config: Config) -> Check:
    if config.ledger is None:
        return Check(
            "warn",
            "ledger",
            "no [ledger]: duplicates are collapsed per process only, and no history is kept",
            'add [ledger] url = "postgresql://..." to run several replicas exactly once',
        )
    import asyncpg

    from smsbridge.ledger import migrate

    url = config.ledger.url.get_secret_value()
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return Check(
            "FAIL",
            "ledger",
            f"{mask_url(url)} does not answer: {type(exc).__name__}: {exc}",
            "start PostgreSQL, or correct ledger.url and its credentials",
        )
    try:
        pending = await migrate.pending(conn)
    finally:
        await conn.close()
    if not pending:
        return Check("ok", "ledger", f"{mask_url(url)} answers, schema current")
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
    if config.ledger.migrate:
        return Check(
            "warn",
            "ledger",
            f"{len(pending)} migrations pending ({names}); components apply them at start",
            "or run `smsbridge db migrate` now",
        )
    return Check(
        "FAIL",
        "ledger",
        f"{len(pending)} migrations pending ({names}) and ledger.migrate is false",
        "run `smsbridge db migrate`",
    )


async def providers(config: Config) -> list[Check]:
    if not config.providers:
        return [Check("FAIL", "keys", "no [[providers]] configured", "add your Flowroute account")]
    checks = []
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        for provider in config.providers:
            client = FlowrouteClient(session, provider)
            try:
                await client.check_auth()
            except AuthFailure as exc:
                checks.append(
                    Check(
                        "FAIL",
                        f"keys {provider.name}",
                        f"Flowroute refused them: {exc.reason}",
                        "copy the access key and secret key from Flowroute's portal (API "
                        "Control) into the environment variables the configuration names",
                    )
                )
                continue
            except SendError as exc:
                checks.append(
                    Check(
                        "FAIL",
                        f"keys {provider.name}",
                        f"{provider.api_url} not reachable: {exc.reason}",
                        "check api_url and this machine's outbound HTTPS access",
                    )
                )
                continue
            checks.append(Check("ok", f"keys {provider.name}", "accepted (nothing sent)"))
    return checks


async def run(config: Config, say: Callable[[Check], None]) -> bool:
    """Run every check, reporting each as it completes; True when none failed."""
    failed = False

    def report(check: Check) -> None:
        nonlocal failed
        failed = failed or check.status == "FAIL"
        say(check)

    async def bounded(name: str, coro: Awaitable[list[Check]]) -> list[Check]:
        try:
            return await asyncio.wait_for(coro, 4 * TIMEOUT)
        except TimeoutError:
            return [Check("FAIL", name, "no answer in time")]

    for check in await bounded("broker", broker(config)):
        report(check)
    report((await bounded("ledger", _one(ledger(config))))[0])
    for check in await bounded("keys", providers(config)):
        report(check)
    for check in (public_url(config), allow_ips(config), dlr_secret(config), media_dir(config)):
        report(check)
    return not failed


async def _one(coro: Awaitable[Check]) -> list[Check]:
    return [await coro]
