"""Server-rendered pages: the Jinja2 environment (autoescaped, strict), its filters, and
`render()`, which gives every page its CSRF token and navigation."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import orjson
import phonenumbers
from aiohttp import web

from console.state import IDENTITY, TEMPLATES
from schemas.history import Message
from smsbridge.config import Config

STATIC = Path(__file__).parent / "static"
TEMPLATE_DIR = Path(__file__).parent / "templates"

STATUS_LABELS = {
    "received": "received",
    "delivered_to_pbx": "delivered to PBX",
    "unrouted": "unrouted",
    "queued": "queued",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "blocked": "blocked",
    "progress": "in progress",
}
# Delivery ticks, as on a phone: queued ◷, sent ✓, delivered ✓✓, trouble ✕.
TICKS = {
    "queued": "◷",
    "received": "◷",
    "sent": "✓",
    "delivered": "✓✓",
    "delivered_to_pbx": "✓✓",
    "undelivered": "✕",
    "failed": "✕",
    "blocked": "⊘",
    "unrouted": "!",
}


def _iso(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def _when(value: datetime | None) -> str:
    """UTC, to the second (console.js shows it in the reader's time zone)."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _phone(value: str | None) -> str:
    if not value:
        return "—"
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return value
    if not phonenumbers.is_possible_number(parsed):
        return value
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL))


def _size(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("bytes", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} bytes"  # pragma: no cover


def _pretty(value: Any) -> str:
    return orjson.dumps(
        value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str
    ).decode()


def message_url(message: Message) -> str:
    return "/messages/" + quote(message.id, safe="")


def conversation_url(ours: str, theirs: str) -> str:
    return f"/conversations/{quote(ours, safe='+')}/{quote(theirs, safe='+')}"


def parties(message: Message) -> tuple[str | None, str | None]:
    """(ours, theirs) of a message."""
    if message.direction == "inbound":
        return message.to, message.from_
    return message.from_, message.to


def thread_url(message: Message) -> str | None:
    ours, theirs = parties(message)
    return conversation_url(ours, theirs) if ours and theirs else None


def query_url(path: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def _static_versions() -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in STATIC.iterdir()
        if p.is_file()
    }


def environment(config: Config) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    media_origin = _origin(config.gateway.base_url)
    versions = _static_versions()
    names = {n.number: n.name for n in config.numbers if n.name}
    env.filters.update(
        iso=_iso,
        when=_when,
        phone=_phone,
        size=_size,
        pretty=_pretty,
        status_label=lambda s: STATUS_LABELS.get(s, s),
        tick=lambda s: TICKS.get(s, "·"),
    )
    env.globals.update(
        static=lambda name: f"/static/{name}?v={versions.get(name, '0')}",
        message_url=message_url,
        thread_url=thread_url,
        conversation_url=conversation_url,
        parties=parties,
        number_name=lambda number: names.get(number or ""),
        inline_media=lambda url: bool(url) and _origin(url) == media_origin,
        web_url=lambda url: isinstance(url, str) and url.startswith(("http://", "https://")),
    )
    return env


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def media_origin(config: Config) -> str:
    """Where images shown inline come from (the gateway's /media/<key>): the CSP allows it."""
    return _origin(config.gateway.base_url)


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    identity = request.get(IDENTITY)
    page = request.app[TEMPLATES].get_template(template)
    text = page.render(
        csrf=identity.csrf if identity is not None else None,
        logged_in=identity is not None,
        path=request.path,
        nav=context.pop("nav", None),
        **context,
    )
    return web.Response(text=text, status=status, content_type="text/html")
