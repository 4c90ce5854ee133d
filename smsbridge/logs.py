"""structlog setup: JSON lines via orjson on stdout, console renderer on a terminal,
per-message context through contextvars, and a processor that masks secrets.

`Throttle` rate-limits lines that hostile input can produce at will (one warning per refused
request): at most N per second per reason, then one summary line with the count suppressed.

The patterns below find credentials by their shape; the configured secrets themselves
(`mask_configured`) are masked literally too, whatever characters they hold.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from pydantic import BaseModel, SecretStr

_SECRET_KEYS = re.compile(
    r"(authorization|password|passwd|secret|access_key|secret_key|token|api_key|cookie)", re.I
)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)
_BASIC = re.compile(r"(Basic|Bearer)\s+[A-Za-z0-9+/=._-]+", re.I)
MASK = "********"
# Shorter values (a "guest" password) are left to the patterns: masking such a word wherever
# it appears would garble lines and say which word it is.
LITERAL_MIN = 8
_literal: list[str] = []  # longest first, so a secret inside another goes with it


def mask_literally(*secrets: str) -> None:
    """Mask these values wherever they appear in a log line from now on: as they are, and as a
    repr or JSON string shows them (a traceback, a bytes repr in an error)."""
    forms = set(_literal)
    for secret in secrets:
        if len(secret) < LITERAL_MIN:
            continue
        forms.add(secret)
        forms.add(repr(secret)[1:-1])
        forms.add(repr(secret.encode())[2:-1])
        forms.add(orjson.dumps(secret).decode()[1:-1])
    _literal[:] = sorted((f for f in forms if len(f) >= LITERAL_MIN), key=len, reverse=True)


def mask_configured(config: BaseModel) -> None:
    """Mask every secret of a configuration literally (`mask_literally`): each SecretStr, or
    for a URL its password (the rest of it names a server, and is logged)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            try:
                url = urlsplit(secret)
                is_url, password = bool(url.scheme and url.netloc), url.password
            except ValueError:
                is_url, password = False, None
            if not is_url:
                found.append(secret)
            elif password:
                found.extend((password, unquote(password)))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    mask_literally(*found)


def _mask_text(value: str) -> str:
    for secret in _literal:
        if secret in value:
            value = value.replace(secret, MASK)
    return _BASIC.sub(r"\1 " + MASK, _URL_PASSWORD.sub(r"\1" + MASK + "@", value))


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {
            k: MASK if _SECRET_KEYS.search(str(k)) else _mask_value(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def mask_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: no credential reaches a log line, even inside a traceback."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key):
            event_dict[key] = MASK
        elif isinstance(value, str | dict | list | tuple):
            event_dict[key] = _mask_value(value)
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[Any]
    if console:
        # Render tracebacks to text first, so the masking sees (and cleans) them too.
        tail = [
            structlog.processors.format_exc_info,
            mask_secrets,
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
        factory: Any = structlog.PrintLoggerFactory()
    else:
        # Tracebacks as data, without locals: show_locals leaked a token in a test once.
        tail = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            mask_secrets,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp and aio-pika log through the stdlib: route them through the same pipeline.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(tail if console else [*tail[:-1], _render_str]),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("aiohttp.access", "aiormq.connection", "aio_pika.robust_connection"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _render_str(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


@dataclass
class _Window:
    end: float
    emitted: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class Throttle:
    """At most `per_second` lines per key in each one-second window.

    ``if throttle.allow(key): log.warning(...)``. Lines over the limit are not written but
    counted; when the window ends, one ``log lines suppressed`` warning gives the key and the
    count (flushed by a timer on the running loop, else by the key's next line, or `flush()`).
    Counting metrics is the caller's job and must not depend on `allow`.
    """

    MAX_KEYS = 1024  # keys are reasons (a small, fixed set); this only bounds a mistake

    def __init__(
        self,
        per_second: int = 5,
        *,
        window: float = 1.0,
        logger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self.window = window
        self._log = logger if logger is not None else get_logger("smsbridge.logs")
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        current = self._windows.get(key)
        if current is not None and now >= current.end:
            self._close(key, current)
            current = None
        if current is None:
            if len(self._windows) >= self.MAX_KEYS:
                self.flush()
            current = self._windows[key] = _Window(end=now + self.window)
        if current.emitted < self.per_second:
            current.emitted += 1
            return True
        current.suppressed += 1
        if current.timer is None:
            current.timer = self._schedule(current.end - now, key, current)
        return False

    def flush(self) -> None:
        """Write the summary of every open window now (e.g. at shutdown)."""
        for key, current in list(self._windows.items()):
            self._close(key, current)

    def _schedule(self, delay: float, key: str, current: _Window) -> asyncio.TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # no loop: the key's next line (or flush) writes the summary
        return loop.call_later(max(delay, 0.0), self._expire, key, current)

    def _expire(self, key: str, current: _Window) -> None:
        current.timer = None
        if self._windows.get(key) is current:
            self._close(key, current)

    def _close(self, key: str, current: _Window) -> None:
        if self._windows.get(key) is current:
            del self._windows[key]
        if current.timer is not None:
            current.timer.cancel()
            current.timer = None
        if current.suppressed:
            self._log.warning(
                "log lines suppressed",
                key=key,
                suppressed=current.suppressed,
                written=current.emitted,
                window_seconds=self.window,
            )
            current.suppressed = 0
