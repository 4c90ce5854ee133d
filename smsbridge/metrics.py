"""Prometheus metrics, defined once for every component (each process exposes its own: the
gateway on its listener, any process on `metrics.listen` when it is set)."""

from __future__ import annotations

import prometheus_client
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

WEBHOOK_REQUESTS = Counter(
    "smsbridge_webhook_requests",
    "Inbound webhook requests by outcome",
    ["outcome"],  # accepted, duplicate, bad_json, not_message, too_large, forbidden, ...
)
PUBLISH_CONFIRM_SECONDS = Histogram(
    "smsbridge_publish_confirm_seconds",
    "Time from publish to the broker's confirm",
    ["component"],
    buckets=_LATENCY_BUCKETS,
)
RECEIPTS = Counter("smsbridge_receipts", "Delivery receipts by outcome", ["outcome"])
MESSAGES_HANDLED = Counter(
    "smsbridge_messages_handled",
    "Messages a worker finished, by outcome",
    ["worker", "outcome"],  # published, duplicate, parked, requeued
)
MEDIA_FETCHES = Counter("smsbridge_media_fetches", "MMS media downloads by outcome", ["outcome"])
MEDIA_PURGED = Counter("smsbridge_media_purged", "Stored media files removed by retention")

SENDS = Counter(
    "smsbridge_sends",
    "Send attempts to the provider by account and outcome",
    ["account", "outcome"],
)
SEND_SECONDS = Histogram(
    "smsbridge_send_seconds", "Provider API call latency", ["account"], buckets=_LATENCY_BUCKETS
)
SEND_RETRIES = Counter(
    "smsbridge_send_retries", "Send retries by account and kind", ["account", "kind"]
)
ACCOUNT_HELD = Gauge(
    "smsbridge_account_held", "1 while an account's sending is held (bad credentials)", ["account"]
)
ACCOUNT_QUEUE_DEPTH = Gauge(
    "smsbridge_account_queue_depth", "Requests waiting per provider account", ["account"]
)
DELIVERIES_HELD = Gauge(
    "smsbridge_deliveries_held",
    "Deliveries held while the broker or the ledger cannot take a worker's output",
    ["queue"],
)
QUARANTINE = Counter(
    "smsbridge_quarantine",
    "Refused webhook bodies: kept whole or truncated, or not kept (rate_limited, "
    "broker_unavailable)",
    ["outcome"],
)
HTTP_REFUSED = Counter(
    "smsbridge_http_refused",
    "Malformed requests the HTTP layer refused before any handler ran, by error",
    ["reason"],
)
LEDGER_PURGED = Counter("smsbridge_ledger_purged", "Ledger rows deleted by retention")
QUOTES_REPLACED = Counter(
    "smsbridge_quotes_replaced", "Typographic characters replaced by policies (smart_quotes)"
)
SEGMENTS_SAVED = Counter(
    "smsbridge_segments_saved", "SMS segments saved by smart-quote replacement"
)
POLICY_BLOCKED = Counter("smsbridge_policy_blocked", "Requests a policy blocked, by rule", ["rule"])


async def exposition(_request: web.Request) -> web.Response:
    """GET /metrics: this process's metrics in Prometheus' text format."""
    return web.Response(
        body=prometheus_client.generate_latest(),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


async def serve(listen: str) -> web.AppRunner:
    """Serve /metrics on `listen` (HOST:PORT); `await runner.cleanup()` stops it."""
    app = web.Application()
    app.router.add_get("/metrics", exposition)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    return runner
