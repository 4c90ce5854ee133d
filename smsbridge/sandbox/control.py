"""Control endpoints under ``/_sandbox/`` (no auth: the sandbox only listens on loopback).

``POST   /_sandbox/faults``        set a fault (JSON like ``Sandbox.set_fault`` keywords,
                                   ``accept_then_drop`` included)
``GET    /_sandbox/faults``        the current fault or null
``DELETE /_sandbox/faults``        clear faults
``GET    /_sandbox/messages``      accepted messages
``DELETE /_sandbox/messages``      reset messages, receipts, inbound results and counters
``GET    /_sandbox/stats``         counters
``GET    /_sandbox/receipts``      delivery receipt posts and their answers
``POST   /_sandbox/inbound``       post an inbound webhook to ``gateway_url``, or without it to
                                   the ``account``'s callback set with ``PUT /v2.1/...``
``GET    /_sandbox/inbound``       inbound webhooks posted so far
``GET    /_sandbox/callbacks``     account-level callbacks: ``{access_key: {sms, mms, dlr}}``
                                   (Flowroute has no such GET; this is the sandbox's own view)
``PUT    /_sandbox/media/<name>``  register media (request body; Content-Type kept)
``POST   /_sandbox/config``        change dlr_* settings, resend_interval and accounts
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web

from .api import AccountSpec
from .payloads import Form

if TYPE_CHECKING:
    from .app import Sandbox

__all__ = ["add_control_routes"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest("malformed JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("expected a JSON object")
    return data


def _opt(data: dict[str, Any], key: str, types: tuple[type, ...], default: Any = None) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise _BadRequest(f"{key!r} has the wrong type")
    if not isinstance(value, types):
        raise _BadRequest(f"{key!r} has the wrong type")
    return value


def _form(value: Any) -> Form:
    if value not in ("jsonapi", "compact"):
        raise _BadRequest("'form' must be 'jsonapi' or 'compact'")
    return cast(Form, value)


def add_control_routes(app: web.Application, sandbox: Sandbox) -> None:
    def guard(handler: _Handler) -> _Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (_BadRequest, ValueError) as exc:
                return _json({"error": str(exc)}, 400)

        return wrapped

    async def set_fault(request: web.Request) -> web.StreamResponse:
        data = await _read_object(request)
        retry_after = _opt(data, "retry_after", (str, int))
        fault = sandbox.set_fault(
            _opt(data, "status", (int,)),
            count=_opt(data, "count", (int,)),
            seconds=_opt(data, "seconds", (int, float)),
            latency_ms=float(_opt(data, "latency_ms", (int, float), 0.0)),
            drop=bool(_opt(data, "drop", (bool,), False)),
            retry_after=None if retry_after is None else str(retry_after),
            detail=_opt(data, "detail", (str,)),
            accept_then_drop=bool(_opt(data, "accept_then_drop", (bool,), False)),
        )
        return _json({"fault": fault.to_json()})

    async def get_fault(request: web.Request) -> web.StreamResponse:
        fault = sandbox.api.fault
        return _json({"fault": fault.to_json() if fault is not None else None})

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        sandbox.clear_faults()
        return _json({"fault": None})

    async def list_messages(request: web.Request) -> web.StreamResponse:
        return _json([m.to_json() for m in sandbox.messages])

    async def reset(request: web.Request) -> web.StreamResponse:
        sandbox.reset()
        return _json({"reset": True})

    async def stats(request: web.Request) -> web.StreamResponse:
        return _json(sandbox.stats())

    async def receipts(request: web.Request) -> web.StreamResponse:
        return _json([r.to_json() for r in sandbox.receipts])

    async def list_inbound(request: web.Request) -> web.StreamResponse:
        return _json([r.to_json() for r in sandbox.inbound])

    async def list_callbacks(request: web.Request) -> web.StreamResponse:
        return _json({key: sandbox.callbacks(key) for key in sandbox.accounts})

    async def post_inbound(request: web.Request) -> web.StreamResponse:
        data = await _read_object(request)
        gateway_url = _opt(data, "gateway_url", (str,))  # None: the account's callback
        if gateway_url is not None and not gateway_url.startswith(("http://", "https://")):
            raise _BadRequest("'gateway_url' must be an http(s) URL")
        kind = _opt(data, "kind", (str,), "sms")
        if kind not in ("sms", "mms"):
            raise _BadRequest("'kind' must be 'sms' or 'mms'")
        media = _opt(data, "media", (list,), [])
        if not all(isinstance(m, dict) for m in media):
            raise _BadRequest("'media' must be a list of objects")
        body = data.get("body", "Hello from the Flowroute sandbox")
        if body is not None and not isinstance(body, str):
            raise _BadRequest("'body' must be a string or null")
        result = sandbox.build_inbound(
            gateway_url,
            account=_opt(data, "account", (str,)),
            kind=kind,
            form=_form(data.get("form", "jsonapi")),
            to=_opt(data, "to", (str,), "12025551234"),
            from_=_opt(data, "from", (str,), "12065550142"),
            body=body,
            media=media,
            message_id=_opt(data, "message_id", (str,)),
            message_type=_opt(data, "message_type", (str,), "longcode"),
        )
        interval = _opt(data, "resend_interval", (int, float))
        attempts = _opt(data, "max_attempts", (int,))
        wait = _opt(data, "wait", (bool,), True)
        coro = sandbox.deliver_inbound(result, resend_interval=interval, max_attempts=attempts)
        if not wait:
            sandbox.spawn(coro)
            return _json({"message_id": result.message_id, "status": None, "attempts": 0}, 202)
        await coro
        answer = result.to_json()
        return _json(answer)

    async def put_media(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = await request.read()
        url = sandbox.add_media(name, data, request.content_type)
        return _json({"url": url, "size": len(data)}, 201)

    async def config(request: web.Request) -> web.StreamResponse:
        data = await _read_object(request)
        api = sandbox.api
        if "dlr_delay" in data:
            api.dlr_delay = float(_opt(data, "dlr_delay", (int, float), 0.0))
        if "dlr_form" in data:
            api.dlr_form = _form(data["dlr_form"])
        if any(k in data for k in ("dlr_status", "dlr_status_code", "dlr_description")):
            code = data.get("dlr_status_code", api.dlr_status_code)
            if code is not None and not isinstance(code, (int, str)):
                raise _BadRequest("'dlr_status_code' must be an integer, a string or null")
            api.set_dlr_outcome(
                _opt(data, "dlr_status", (str,), api.dlr_status),
                code,
                data.get("dlr_description", api.dlr_description),
            )
        if "resend_interval" in data:
            sandbox.resend_interval = float(_opt(data, "resend_interval", (int, float), 30.0))
        for raw in _opt(data, "accounts", (list,), []):
            if not isinstance(raw, dict):
                raise _BadRequest("'accounts' must be a list of objects")
            access_key = _opt(raw, "access_key", (str,))
            old = sandbox.accounts.get(access_key) if access_key else None
            secret_key = _opt(raw, "secret_key", (str,), old.secret_key if old else None)
            if not access_key or not secret_key:
                raise _BadRequest("an account needs 'access_key' and 'secret_key'")
            sandbox.set_account(
                AccountSpec(
                    access_key,
                    secret_key,
                    _opt(raw, "sms_per_second", (int,), old.sms_per_second if old else 5),
                    _opt(raw, "mms_per_second", (int,), old.mms_per_second if old else 1),
                )
            )
        return _json(
            {
                "dlr_delay": api.dlr_delay,
                "dlr_form": api.dlr_form,
                "dlr_status": api.dlr_status,
                "dlr_status_code": api.dlr_status_code,
                "dlr_description": api.dlr_description,
                "resend_interval": sandbox.resend_interval,
                "accounts": [
                    {
                        "access_key": a.access_key,
                        "sms_per_second": a.sms_per_second,
                        "mms_per_second": a.mms_per_second,
                    }
                    for a in sandbox.accounts.values()
                ],
            }
        )

    router = app.router
    router.add_post("/_sandbox/faults", guard(set_fault))
    router.add_get("/_sandbox/faults", guard(get_fault))
    router.add_delete("/_sandbox/faults", guard(clear_faults))
    router.add_get("/_sandbox/messages", guard(list_messages))
    router.add_delete("/_sandbox/messages", guard(reset))
    router.add_get("/_sandbox/stats", guard(stats))
    router.add_get("/_sandbox/receipts", guard(receipts))
    router.add_post("/_sandbox/inbound", guard(post_inbound))
    router.add_get("/_sandbox/inbound", guard(list_inbound))
    router.add_get("/_sandbox/callbacks", guard(list_callbacks))
    router.add_put("/_sandbox/media/{name}", guard(put_media))
    router.add_post("/_sandbox/config", guard(config))
