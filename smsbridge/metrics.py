"""Prometheus metrics, defined once for every component (each process exposes its own)."""

from __future__ import annotations

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
