"""Typed application state of the gateway (aiohttp AppKeys)."""

from __future__ import annotations

from aiohttp import web

from gateway.access import SourceCheck
from smsbridge.broker import Broker
from smsbridge.config import Config
from smsbridge.media_store import MediaStore
from smsbridge.recent import RecentIds

CONFIG = web.AppKey("config", Config)
BROKER = web.AppKey("broker", Broker)
MEDIA_STORE = web.AppKey("media_store", MediaStore)
RECENT = web.AppKey("recent", RecentIds)
SOURCES = web.AppKey("sources", SourceCheck)
