"""structlog setup: JSON lines via orjson on stdout, console renderer on a terminal,
per-message context through contextvars, and a processor that masks secrets.

`Throttle` rate-limits lines that hostile input can produce at will (one warning per refused
request): at most N per second per reason, then one summary line with the count suppressed.
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

import orjson
import structlog

_SECRET_KEYS = re.compile(
    r"(authorization|password|passwd|secret|access_key|secret_key|token|api_key|cookie)", re.I
)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)
_BASIC = re.compile(r"(Basic|Bearer)\s+[A-Za-z0-9+/=._-]+", re.I)
MASK = "********"


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _BASIC.sub(r"\1 " + MASK, _URL_PASSWORD.sub(r"\1" + MASK + "@", value))
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
