"""POST /<dlr path>/<token>: Flowroute delivery receipts (outbound path; see workers/outbound)."""

from __future__ import annotations

from aiohttp import web

from smsbridge.config import Config


def add_routes(app: web.Application, config: Config) -> None:
    """Delivery receipts arrive with the outbound path."""
    del app, config
