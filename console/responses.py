"""How the console answers: JSON built from the models of `schemas/history.py`, every error as
`{"error": "..."}` under `/api/` (a page elsewhere), and the middleware that turns an
unreachable ledger or broker into `503` rather than `500`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from console.optouts import NotApplied
from console.parked import BrokerUnavailable, ParkingBusy, RequeueInterrupted
from schemas.history import Error
from smsbridge.ledger.connection import LedgerUnavailable
from smsbridge.ledger.history import BadFilter
from smsbridge.logs import get_logger

log = get_logger(__name__)

API_ROOT = "/api/"
LEDGER_DOWN = "the ledger (PostgreSQL) is not reachable right now; try again shortly"
BROKER_DOWN = "the broker (RabbitMQ) is not reachable right now; try again shortly"
PARKING_BUSY = "a requeue of parked messages is still running; try again shortly"


class Problem(Exception):
    """An answer other than success, for a person: JSON under /api/, a page elsewhere."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def is_api(request: web.Request) -> bool:
    """Under /api/ (any version): answered in JSON, never redirected."""
    return request.path.startswith(API_ROOT) or request.path == API_ROOT.rstrip("/")


def redirect(location: str) -> web.Response:
    """303 See Other: after a form's POST, the browser GETs `location`."""
    return web.Response(status=303, headers={"Location": location})


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(by_alias=True), status=status, content_type="application/json"
    )


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    response = json_response(Error(error=message), status)
    response.headers.update(headers or {})
    return response


def validation_message(exc: ValidationError) -> str:
    """A pydantic error for a person: `field: problem; ...` (never the input's value)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request body"


def error_response(
    request: web.Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    if is_api(request):
        return json_error(status, message, headers)
    from console.render import render

    response = render(request, "error.html", status=status, title=_title(status), message=message)
    response.headers.update(headers or {})
    return response


def _title(status: int) -> str:
    return _REASONS.get(status, f"Error {status}")


_REASONS = {
    400: "Bad request",
    401: "Not logged in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Not changed",
    413: "Too large",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            message = _REASONS.get(exc.status, exc.reason).lower()
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            return error_response(request, exc.status, message, headers)
        raise
    except Problem as exc:
        return error_response(request, exc.status, exc.message, exc.headers)
    except BadFilter as exc:
        return error_response(request, 400, str(exc))
    except NotApplied as exc:
        return error_response(request, 409, str(exc))
    except LedgerUnavailable:
        return error_response(request, 503, LEDGER_DOWN, {"Retry-After": "5"})
    except BrokerUnavailable:
        return error_response(request, 503, BROKER_DOWN, {"Retry-After": "5"})
    except ParkingBusy:
        return error_response(request, 503, PARKING_BUSY, {"Retry-After": "5"})
    except RequeueInterrupted as exc:
        return error_response(request, 503, f"the requeue stopped: {exc}", {"Retry-After": "5"})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The type and where, not the request: its headers carry credentials.
        log.error(
            "console request failed",
            method=request.method,
            path=request.path,
            error=type(exc).__name__,
            exc_info=True,
        )
        return error_response(request, 500, "internal error (see the console's log)")
