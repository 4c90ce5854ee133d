"""The console's pages: server-rendered HTML (Jinja2), with htmx for live updates. Every page
works without JavaScript: forms post, links page, and a reload shows what is new.

Every list is one indexed search of the ledger (smsbridge/ledger/history.py); nothing counts
the messages table.
"""

from __future__ import annotations

from aiohttp import web

from console import accounts, filters, optouts
from console.auth import changed_by
from console.parked import BrokerUnavailable, ParkingBusy
from console.parked import view as parked_view
from console.render import conversation_url, query_url, render
from console.responses import BROKER_DOWN, PARKING_BUSY, Problem, redirect
from console.state import BROKER, CONFIG, LEDGER, PARKING
from schemas.history import DIRECTIONS, STAGES, STATUSES, Message, MessageDetail, Parked
from smsbridge.ledger import history
from smsbridge.ledger.history import BadFilter, Filters

PAGE = 50
LIVE_PATH = "/fragments/messages"
FLASH = {
    "added": "Opted out: nothing will be sent to them from that number.",
    "exists": "They were already opted out of that number.",
    "removed": "Opted back in: they can be sent to again.",
    "missing": "That opt-out was already gone.",
    "none": "Select at least one message first.",
}


def _messages(found: history.Page) -> list[Message]:
    return [Message.model_validate(m) for m in found.messages]


def _flash(request: web.Request) -> str | None:
    done, stage = request.query.get("requeued"), request.query.get("stage")
    if done is not None and done.isdigit() and stage in STAGES:
        plural = "" if done == "1" else "s"
        text = f"Requeued {done} message{plural} from {stage}."
        left = request.query.get("left", "")
        if left.isdigit() and left != "0":
            text += (
                f" {left} could not be (the broker refused or could not route them): still"
                " parked, see the console's log for why."
            )
        return text
    return FLASH.get(request.query.get("flash", ""))


# -- messages --------------------------------------------------------------------------------


async def messages_page(request: web.Request) -> web.Response:
    query = request.query
    form = {name: query.get(name, "") for name in filters.FIELDS}
    search = {k: v for k, v in form.items() if v}
    try:
        wanted = filters.from_query(query, dates=True, limit=PAGE)
    except BadFilter as exc:
        return render(
            request,
            "messages.html",
            status=400,
            nav="messages",
            form=form,
            directions=DIRECTIONS,
            statuses=STATUSES,
            messages=[],
            error=str(exc),
            next_url=None,
            newest_url=query_url("/", search),
            live_url=None,
            searching=bool(search),
        )
    first_page = wanted.cursor is None
    found = await history.search(request.app[LEDGER], wanted, live=first_page)
    return render(
        request,
        "messages.html",
        nav="messages",
        form=form,
        directions=DIRECTIONS,
        statuses=STATUSES,
        messages=_messages(found),
        error=None,
        next_url=query_url("/", {**search, "cursor": found.next_cursor})
        if found.next_cursor
        else None,
        newest_url=None if first_page else query_url("/", search),
        live_url=query_url(LIVE_PATH, {**search, "live": found.live}) if first_page else None,
        searching=bool(search),
    )


async def live_messages(request: web.Request) -> web.Response:
    """What was recorded since the page (or the last poll) looked, newest first (htmx polls
    it): rows to prepend, and the poller again with its new position; 204 when nothing at all
    was recorded meanwhile. The position moves on even when nothing matched the filters, so
    each poll looks only at what is new."""
    wanted = filters.from_query(request.query, dates=True, limit=PAGE)
    found = await history.search(request.app[LEDGER], wanted, live=True)
    if not found.messages and found.live == wanted.live:
        return web.Response(status=204)
    search = {k: request.query.get(k, "") for k in filters.FIELDS}
    return render(
        request,
        "_live.html",
        messages=_messages(found),
        live_url=query_url(LIVE_PATH, {**search, "live": found.live}),
        gap_url=query_url("/", search) if found.next_cursor else None,
    )


async def message_page(request: web.Request) -> web.Response:
    found = await history.message(request.app[LEDGER], request.match_info["id"])
    if found is None:
        raise Problem(404, "There is no message with that id in the ledger.")
    return render(
        request, "message.html", nav="messages", message=MessageDetail.model_validate(found)
    )


async def conversation_page(request: web.Request) -> web.Response:
    ours = filters.number(request.match_info["ours"], "our number")
    theirs = filters.number(request.match_info["theirs"], "their number")
    path = conversation_url(ours, theirs)
    query = request.query
    cursor, live = query.get("cursor") or None, query.get("live") or None
    wanted = Filters(number=ours, peer=theirs, limit=PAGE, cursor=cursor, live=live)
    found = await history.search(
        request.app[LEDGER], wanted, live=cursor is None or live is not None
    )
    messages = list(reversed(_messages(found)))  # oldest first, like a phone
    if live is not None:  # the live part: bubbles to append (see live_messages)
        if not messages and found.live == live:
            return web.Response(status=204)
        return render(
            request,
            "_bubbles_live.html",
            messages=messages,
            live_url=query_url(path, {"live": found.live}),
        )
    return render(
        request,
        "conversation.html",
        nav="messages",
        ours=ours,
        theirs=theirs,
        messages=messages,
        older_url=query_url(path, {"cursor": found.next_cursor}) if found.next_cursor else None,
        newest_url=path if cursor else None,
        live_url=query_url(path, {"live": found.live}) if cursor is None else None,
    )


# -- parked ----------------------------------------------------------------------------------


async def parked_page(request: web.Request) -> web.Response:
    error, status = None, 200
    try:
        found = [parked_view(p) for p in await request.app[PARKING].peek()]
    except BrokerUnavailable:
        found, error, status = [], BROKER_DOWN, 503
    except ParkingBusy:
        found, error, status = [], PARKING_BUSY, 503
    by_stage: dict[str, list[Parked]] = {stage: [] for stage in STAGES}
    for item in found:
        by_stage[item.stage].append(item)
    return render(
        request,
        "parked.html",
        status=status,
        nav="parked",
        by_stage=by_stage,
        error=error,
        flash=_flash(request),
    )


def _stage(request: web.Request) -> str:
    stage = request.match_info["stage"]
    if stage not in STAGES:
        raise Problem(404, f"No such stage (one of {', '.join(STAGES)}).")
    return stage


async def confirm_requeue(request: web.Request) -> web.Response:
    """The confirm step: what will be requeued, and one button that does it."""
    stage = _stage(request)
    query = request.query
    every = "all" in query
    ids = [query["one"]] if "one" in query else list(dict.fromkeys(query.getall("ids", [])))
    if not every and not ids:
        return redirect("/parked?flash=none")
    return render(request, "parked_confirm.html", nav="parked", stage=stage, every=every, ids=ids)


async def requeue(request: web.Request) -> web.Response:
    stage = _stage(request)
    form = await request.post()
    ids = {v for v in form.getall("ids", []) if isinstance(v, str)}
    every = form.get("all") == "1"
    report = await request.app[PARKING].requeue(stage, None if every else ids)
    done = {"requeued": len(report.done), "stage": stage}
    if report.not_requeued:
        done["left"] = len(report.not_requeued)
    return redirect(query_url("/parked", done))


# -- accounts --------------------------------------------------------------------------------


async def accounts_page(request: web.Request) -> web.Response:
    app = request.app
    found = await accounts.overview(app[CONFIG], app[LEDGER], app[BROKER])
    return render(
        request, "accounts.html", nav="accounts", accounts=found, broker_ok=app[BROKER].ready
    )


# -- opt-outs --------------------------------------------------------------------------------


async def _optouts(
    request: web.Request, *, status: int = 200, error: str | None = None, **form: str
) -> web.Response:
    raw = request.query.get("number", "").strip()
    shown_number = None
    try:
        shown_number = filters.e164(raw, "number") if raw else None
    except BadFilter as exc:
        error, status = str(exc), 400
    found = await optouts.listed(request.app[LEDGER], shown_number)
    numbers = [(n.number, n.name) for n in request.app[CONFIG].numbers]
    return render(
        request,
        "optouts.html",
        status=status,
        nav="optouts",
        optouts=found,
        numbers=numbers,
        shown_number=raw,
        error=error,
        flash=_flash(request),
        form={"number": form.get("number", ""), "recipient": form.get("recipient", "")},
    )


async def optouts_page(request: web.Request) -> web.Response:
    return await _optouts(request)


async def _posted_pair(request: web.Request) -> dict[str, str]:
    posted = await request.post()
    return {k: str(posted.get(k, "")).strip() for k in ("number", "recipient")}


def _pair(form: dict[str, str]) -> tuple[str, str]:
    return filters.e164(form["number"], "number"), filters.e164(form["recipient"], "recipient")


async def add_optout(request: web.Request) -> web.Response:
    form = await _posted_pair(request)
    try:
        number, recipient = _pair(form)
    except BadFilter as exc:
        return await _optouts(request, status=400, error=str(exc), **form)
    try:
        added, _ = await optouts.add(request.app[LEDGER], number, recipient, changed_by(request))
    except optouts.NotApplied as exc:
        return await _optouts(request, status=409, error=f"Not changed: {exc}.", **form)
    return redirect(f"/optouts?flash={'added' if added else 'exists'}")


async def remove_optout(request: web.Request) -> web.Response:
    try:
        number, recipient = _pair(await _posted_pair(request))
    except BadFilter as exc:
        return await _optouts(request, status=400, error=str(exc))
    try:
        removed = await optouts.remove(request.app[LEDGER], number, recipient, changed_by(request))
    except optouts.NotApplied as exc:
        return await _optouts(request, status=409, error=f"Not changed: {exc}.")
    return redirect(f"/optouts?flash={'removed' if removed else 'missing'}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", messages_page)
    app.router.add_get(LIVE_PATH, live_messages)
    app.router.add_get("/messages/{id:.+}", message_page)
    app.router.add_get("/conversations/{ours}/{theirs}", conversation_page)
    app.router.add_get("/parked", parked_page)
    app.router.add_get("/parked/{stage}/requeue", confirm_requeue)
    app.router.add_post("/parked/{stage}/requeue", requeue)
    app.router.add_get("/accounts", accounts_page)
    app.router.add_get("/optouts", optouts_page)
    app.router.add_post("/optouts", add_optout)
    app.router.add_post("/optouts/remove", remove_optout)
