"""Typed application state of the console (aiohttp AppKeys) and what the middlewares put on a
request. No runtime imports of the console's own modules: everything else imports this."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jinja2
from aiohttp import web

from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.ledger.connection import Ledger

if TYPE_CHECKING:
    from console.auth import Auth, Identity
    from console.parked import ParkingDesk

CONFIG = web.AppKey("config", Config)
LEDGER = web.AppKey("ledger", Ledger)
BROKER = web.AppKey("broker", Broker)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
AUTH: web.AppKey[Auth] = web.AppKey("auth")
PARKING: web.AppKey[ParkingDesk] = web.AppKey("parking")

# Who made the request, set by the auth middleware.
IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
