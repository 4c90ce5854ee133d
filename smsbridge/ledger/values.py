"""Values as PostgreSQL takes them. Its `text` and `jsonb` refuse the NUL character, which
Flowroute bodies can carry (some SMSC paths turn GSM "@" into it): it is written as U+FFFD,
so one such message neither fails nor takes a whole batch of writes down with it."""

from __future__ import annotations

from typing import Any

import orjson

REPLACEMENT = "\ufffd"


def text(value: str | None) -> str | None:
    return value.replace("\x00", REPLACEMENT) if value and "\x00" in value else value


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def json_text(value: Any) -> str | None:
    """JSON for a `jsonb` parameter (None stays SQL NULL)."""
    if value is None:
        return None
    raw = orjson.dumps(value, option=orjson.OPT_UTC_Z, default=str)
    if b"\\u0000" in raw:
        raw = orjson.dumps(_clean(value), option=orjson.OPT_UTC_Z, default=str)
    return raw.decode()
