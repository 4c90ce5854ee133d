"""The gateway's aiohttp application: routes, state and lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import quarantine, receipts
from gateway.access import SourceCheck
from gateway.media import serve_media
from gateway.refusals import REFUSALS, server_logger
from gateway.state import BROKER, CONFIG, MEDIA_STORE, RECENT, SOURCES
from gateway.webhook import unknown_prefix, webhook_handler
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.logs import get_logger
from smsbridge.media_store import MediaStore
from smsbridge.metrics import exposition
from smsbridge.recent import RecentIds

log = get_logger(__name__)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[BROKER].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="broker not connected\n")


def build_app(config: Config, broker: Broker | None = None) -> web.Application:
    """The gateway app. It owns `broker` (started and closed with the app) unless given one."""
    app = web.Application(client_max_size=config.gateway.max_body_bytes)
    app[CONFIG] = config
    app[BROKER] = broker or Broker(
        config.broker.addresses(),
        "gateway",
        publish_timeout=config.broker.publish_timeout,
    )
    app[MEDIA_STORE] = MediaStore(config.media.dir)
    app[RECENT] = RecentIds(ttl=config.gateway.dedupe_seconds)
    app[SOURCES] = SourceCheck(config.gateway.allow_ips, config.gateway.trusted_proxies)
    app[quarantine.QUARANTINE_BUCKET] = quarantine.new_bucket()
    if broker is None:
        app.cleanup_ctx.append(_broker_lifecycle)

    for prefix in config.prefixes():
        app.router.add_post(f"/{prefix}", webhook_handler(prefix))
    receipts.add_routes(app, config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", exposition)
    app.router.add_get("/media/{key}", serve_media)
    app.router.add_post("/{tail:.*}", unknown_prefix)
    return app


async def _broker_lifecycle(app: web.Application) -> AsyncIterator[None]:
    broker = app[BROKER]
    await broker.start()
    yield
    # aiohttp runs cleanup after in-flight handlers finished (each awaited its confirm).
    await broker.close()


async def _flush_refusal_logs(_app: web.Application) -> None:
    REFUSALS.flush()  # the counts of lines suppressed just before stopping


async def serve(config: Config, broker: Broker | None = None) -> web.AppRunner:
    """Start listening; returns the runner (call `await runner.cleanup()` to stop gracefully)."""
    app = build_app(config, broker)
    app.on_cleanup.append(_flush_refusal_logs)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=30.0,
        # aiohttp's keep-alive timer runs from connection_made until a full request head is
        # parsed (and between requests): a client dribbling its headers is cut off here.
        keepalive_timeout=config.gateway.header_timeout,
        # After answering a body that came too slowly, read what is left of it for at most a
        # second (aiohttp's default is 10 s, a long time to give a slow client).
        lingering_time=1.0,
        # Malformed requests: one rate-limited warning instead of an error-level traceback.
        logger=server_logger(),
    )
    await runner.setup()
    site = web.TCPSite(runner, config.gateway.host, config.gateway.port, backlog=1024)
    await site.start()
    log.info("gateway listening", listen=config.gateway.listen, prefixes=list(config.prefixes()))
    return runner
