"""The console's aiohttp application: routes, state, middlewares and lifecycle.

`smsbridge console` serves it alone and `smsbridge run` with everything else (see
smsbridge/runner.py), on `console.listen`, only when `[ledger]` and `[console]` are configured.
It reads the ledger (PostgreSQL) for history, accounts and opt-outs, and RabbitMQ for parked
messages and queue depths. Either may be away: the API then answers 503 until it is back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from console import api, auth, pages
from console.headers import secure_headers
from console.parked import ParkingDesk
from console.render import STATIC, environment, media_origin
from console.responses import errors
from console.state import AUTH, BROKER, CONFIG, LEDGER, PARKING, TEMPLATES
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.ledger.connection import Ledger
from smsbridge.logs import get_logger, mask_configured

log = get_logger(__name__)

MAX_BODY = 256 * 1024


class ConsoleNotConfigured(ValueError):
    """The console needs both a [ledger] and a [console] section."""


def build_app(
    config: Config, *, ledger: Ledger | None = None, broker: Broker | None = None
) -> web.Application:
    """The console app. It owns `ledger` and `broker` (started and closed with the app) unless
    given them."""
    if config.ledger is None or config.console is None:
        raise ConsoleNotConfigured("the console needs a [ledger] and a [console] section")
    # The token (a console secret, typed into forms and headers) must not reach a log line in
    # any form, nor any other configured secret: mask them literally, not only by shape.
    mask_configured(config)
    checks = auth.Auth(config.console)
    app = web.Application(middlewares=[errors, auth.middleware(checks)], client_max_size=MAX_BODY)
    app[CONFIG] = config
    app[LEDGER] = ledger or Ledger(config.ledger, "console")
    app[BROKER] = broker or Broker(
        config.broker.addresses(), "console", publish_timeout=config.broker.publish_timeout
    )
    app[AUTH] = checks
    app[PARKING] = ParkingDesk(app[BROKER], app[LEDGER])
    app[TEMPLATES] = environment(config)
    if ledger is None:
        app.cleanup_ctx.append(_ledger_lifecycle)
    if broker is None:
        app.cleanup_ctx.append(_broker_lifecycle)
    app.on_response_prepare.append(secure_headers(media_origin(config)))
    app.on_cleanup.append(_flush_logs)

    auth.add_routes(app)
    api.add_routes(app)
    pages.add_routes(app)
    app.router.add_static("/static", STATIC, name="static")
    return app


async def _flush_logs(app: web.Application) -> None:
    app[AUTH].log_throttle.flush()


async def _ledger_lifecycle(app: web.Application) -> AsyncIterator[None]:
    ledger = app[LEDGER]
    await ledger.start()
    yield
    await ledger.close()


async def _broker_lifecycle(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    await broker.start()
    yield
    await broker.close()


async def serve(
    config: Config, *, ledger: Ledger | None = None, broker: Broker | None = None
) -> web.AppRunner:
    """Start listening; returns the runner (`await runner.cleanup()` stops it)."""
    app = build_app(config, ledger=ledger, broker=broker)
    assert config.console is not None  # checked by build_app
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, config.console.host, config.console.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info(
        "console listening",
        listen=config.console.listen,
        url=config.console.public_url or f"http://{config.console.listen}",
    )
    return runner
