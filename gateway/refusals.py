"""What the gateway does with a client's mistakes: bounded body reads and quiet logs.

Anyone who can reach the gateway can send bad requests at will, so a refusal is a 4xx with one
warning line, never a 500 or a traceback, and those lines are rate-limited per reason
(`REFUSALS`: at most 5 a second per reason, then one summary line with the count suppressed).
The metrics still count every refusal.

- `read_body` reads a request body within `gateway.body_timeout` and turns every way a client
  can botch it into `BodyError` (408 too slow, 413 too large, 400 undecodable
  Content-Encoding or a body cut short).
- `ClientErrorFilter` sits on aiohttp's server logger: malformed requests refused by aiohttp's
  parser ("Error handling request", with a traceback, at error level) become one rate-limited
  warning and a count in `smsbridge_http_refused`; errors of ours pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from smsbridge.logs import Throttle, get_logger
from smsbridge.metrics import HTTP_REFUSED

log = get_logger("gateway.http")

REFUSALS = Throttle(per_second=5)

# What a client alone can cause: aiohttp's parser errors (bad request line, headers, chunking,
# Content-Encoding it cannot decode) and payload errors met while reading a body.
CLIENT_ERRORS: tuple[type[BaseException], ...] = (HttpProcessingError, web.RequestPayloadError)


class BodyError(Exception):
    def __init__(self, status: int, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] or type(exc).__name__


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body (decoded), read within `timeout` seconds of the handler starting."""
    try:
        if request.content.is_eof():  # all here already (a small body): nothing to wait for
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise BodyError(408, "body_timeout", f"body not received within {timeout:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        raise BodyError(413, "too_large", f"body over {limit} bytes") from None
    except CLIENT_ERRORS as exc:
        raise BodyError(400, "bad_body", f"body cannot be read: {first_line(exc)}") from None
    except ConnectionError:
        raise BodyError(
            400, "disconnected", "client went away before the body was complete"
        ) from None


def closing(response: web.Response) -> web.Response:
    """The response, with `Connection: close`: after a botched body the connection is not
    reused (the rest of that body would be read as the next request)."""
    response.force_close()
    return response


class ClientErrorFilter(logging.Filter):
    """Turns aiohttp's error-level tracebacks for malformed requests into quiet warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, CLIENT_ERRORS):
            return True  # ours (a bug): keep the traceback
        if not str(record.msg).startswith("Error handling request"):
            # "Unhandled exception" after a handler already answered: aiohttp re-raises the
            # payload error while draining the rest of the body. Counted and logged already.
            return False
        reason = type(exc).__name__
        HTTP_REFUSED.labels(reason).inc()
        if REFUSALS.allow(f"http {reason}"):
            log.warning(
                "http request refused",
                reason=reason,
                detail=first_line(exc),
                peer=record.args[0] if isinstance(record.args, tuple) and record.args else None,
            )
        return False


_FILTER = ClientErrorFilter()


def server_logger() -> logging.Logger:
    """The logger to give aiohttp's RequestHandler (only the gateway's, not the sandbox's)."""
    logger = logging.getLogger("aiohttp.server.gateway")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
