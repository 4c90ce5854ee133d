"""The history API, `/api/v1/...`: JSON in, JSON out, through the models of
`schemas/history.py` (which also generate `schemas/openapi.json`)."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from console import accounts, filters, optouts
from console.auth import changed_by
from console.parked import view as parked_view
from console.responses import Problem, json_response, validation_message
from console.state import BROKER, CONFIG, LEDGER, PARKING
from schemas.history import (
    API_PREFIX,
    STAGES,
    AccountList,
    Message,
    MessageDetail,
    MessagePage,
    NotRequeued,
    OptOutList,
    OptOutRequest,
    ParkedList,
    RequeueRequest,
    RequeueResult,
)
from smsbridge.ledger import history

M = TypeVar("M", bound=BaseModel)


async def _body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise Problem(400, "the body must be JSON (Content-Type: application/json)")
    raw = await request.read()
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(400, "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Problem(400, validation_message(exc)) from None


async def list_messages(request: web.Request) -> web.Response:
    found = await history.search(request.app[LEDGER], filters.from_query(request.query))
    page = MessagePage(
        messages=[Message.model_validate(m) for m in found.messages],
        next_cursor=found.next_cursor,
    )
    return json_response(page)


async def get_message(request: web.Request) -> web.Response:
    found = await history.message(request.app[LEDGER], request.match_info["id"])
    if found is None:
        raise Problem(404, "no such message")
    return json_response(MessageDetail.model_validate(found))


async def list_parked(request: web.Request) -> web.Response:
    found = await request.app[PARKING].peek()
    return json_response(ParkedList(parked=[parked_view(p) for p in found]))


async def requeue_parked(request: web.Request) -> web.Response:
    stage = request.match_info["stage"]
    if stage not in STAGES:
        raise Problem(404, f"no such stage (one of {', '.join(STAGES)})")
    asked = await _body(request, RequeueRequest)
    ids = None if asked.all else set(asked.ids or ())
    report = await request.app[PARKING].requeue(stage, ids)
    left = [NotRequeued(id=item.message_id, reason=item.reason) for item in report.not_requeued]
    return json_response(RequeueResult(requeued=len(report.done), not_requeued=left))


async def list_accounts(request: web.Request) -> web.Response:
    app = request.app
    found = await accounts.overview(app[CONFIG], app[LEDGER], app[BROKER])
    return json_response(AccountList(accounts=found))


async def list_optouts(request: web.Request) -> web.Response:
    raw = request.query.get("number", "").strip()
    number = filters.e164(raw, "number") if raw else None
    return json_response(OptOutList(optouts=await optouts.listed(request.app[LEDGER], number)))


async def add_optout(request: web.Request) -> web.Response:
    asked = await _body(request, OptOutRequest)
    number = filters.e164(asked.number, "number")
    recipient = filters.e164(asked.recipient, "recipient")
    added, entry = await optouts.add(request.app[LEDGER], number, recipient, changed_by(request))
    return json_response(entry, 201 if added else 200)


async def remove_optout(request: web.Request) -> web.Response:
    number = filters.e164(request.match_info["number"], "number")
    recipient = filters.e164(request.match_info["recipient"], "recipient")
    if not await optouts.remove(request.app[LEDGER], number, recipient, changed_by(request)):
        raise Problem(404, "no such opt-out")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    api = API_PREFIX
    app.router.add_get(f"{api}/messages", list_messages)
    app.router.add_get(f"{api}/messages/{{id:.+}}", get_message)
    app.router.add_get(f"{api}/parked", list_parked)
    app.router.add_post(f"{api}/parked/{{stage}}/requeue", requeue_parked)
    app.router.add_get(f"{api}/accounts", list_accounts)
    app.router.add_get(f"{api}/optouts", list_optouts)
    app.router.add_post(f"{api}/optouts", add_optout)
    app.router.add_delete(f"{api}/optouts/{{number}}/{{recipient}}", remove_optout)
