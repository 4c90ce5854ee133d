"""The history API of the console (`/api/v1/...`): its requests, its responses and its OpenAPI
3.1 document.

These models are the single source of truth: the console builds every JSON answer through them,
and `python -m schemas.generate` writes `schemas/openapi.json` from `openapi()`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from schemas.messages import MediaItem

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.1.0"
API_PREFIX = "/api/v1"
REF_TEMPLATE = "#/components/schemas/{model}"

SESSION_COOKIE = "smsbridge_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Direction = Literal["inbound", "outbound"]
MessageStatus = Literal[
    "received",
    "delivered_to_pbx",
    "unrouted",
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "blocked",
]
Stage = Literal["inbound", "media", "outbound"]
OptOutBy = Literal["keyword", "console", "cli", "api"]

DIRECTIONS: tuple[str, ...] = get_args(Direction)
STATUSES: tuple[str, ...] = get_args(MessageStatus)
STAGES: tuple[str, ...] = get_args(Stage)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- messages ------------------------------------------------------------------------------


class Message(_Model):
    """One message, inbound or outbound, as the ledger keeps it."""

    id: str = Field(description="Flowroute's id (inbound) or the request's id (outbound)")
    direction: Direction
    provider: str | None = Field(description="The provider account's configured name")
    from_: str | None = Field(alias="from", description="E.164 with + (a short code as digits)")
    to: str | None = Field(description="E.164 with +")
    body: str | None = Field(description="The text")
    media: list[MediaItem | str] = Field(
        description="Inbound: the stored media items, as in an InboundMessage; outbound: the "
        "request's `media_urls`"
    )
    extension: str | None = Field(
        description="The destination (inbound) or the sending extension (outbound)"
    )
    status: MessageStatus = Field(
        description="The latest status: received, delivered_to_pbx, unrouted (inbound); queued "
        "(accepted, not yet sent, also while waiting for quiet hours to end), sent, delivered, "
        "undelivered, failed, blocked (outbound)"
    )
    provider_id: str | None = Field(description="Flowroute's id of a sent message (mdr2-...)")
    created_at: datetime = Field(description="When the bridge first recorded it, UTC")
    updated_at: datetime = Field(description="When it last changed, UTC")


class Event(_Model):
    """One step of a message's timeline."""

    status: str = Field(
        description="received, delivered_to_pbx, unrouted (inbound); queued, sent, progress, "
        "delivered, undelivered, failed, blocked (outbound)"
    )
    at: datetime = Field(description="When it happened, UTC")
    reason: str | None = Field(description="Why, for failed, undelivered, blocked or a wait")
    detail: dict[str, Any] | None = Field(
        description="Raw fields: attempts, provider_id, provider_status, provider_status_code, "
        "level, segments, ..."
    )


class MessageDetail(Message):
    """One message with its timeline."""

    events: list[Event] = Field(description="Oldest first")
    raw: dict[str, Any] | None = Field(
        default=None, description="The provider's original attributes (inbound), untouched"
    )


class MessagePage(_Model):
    """A page of messages, newest first."""

    messages: list[Message]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )


# -- parked messages -----------------------------------------------------------------------


class Parked(_Model):
    """A message parked by a stage that could not process it."""

    stage: Stage
    id: str = Field(description="The AMQP message_id (what `ids` of a requeue names)")
    reason: str | None = Field(description="Why it was parked")
    parked_at: datetime | None = Field(
        description="When it was parked, UTC; null when the broker dead-lettered it"
    )
    body: Any = Field(description="The message as parked (JSON, else text)")


class ParkedList(_Model):
    parked: list[Parked] = Field(
        description="Per stage (inbound, media, outbound), oldest first; up to 500 per stage"
    )


class RequeueRequest(_Model):
    """Which parked messages of a stage to publish again where they first entered."""

    ids: list[str] | None = Field(default=None, max_length=10_000)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> RequeueRequest:
        if (self.ids is None) == (not self.all):
            raise ValueError('give either "ids": [...] or "all": true')
        return self


class NotRequeued(_Model):
    """A parked message a requeue left where it was."""

    id: str = Field(description="The AMQP message_id")
    reason: str = Field(description="Why, e.g. unroutable where it first entered")


class RequeueResult(_Model):
    requeued: int = Field(ge=0, description="How many messages were published again")
    not_requeued: list[NotRequeued] = Field(
        default_factory=list,
        description="Messages the broker refused or could not route: still parked, the others "
        "were requeued",
    )


# -- accounts ------------------------------------------------------------------------------


class Account(_Model):
    """A provider account as its active sender last reported it."""

    name: str
    held: bool = Field(description="Sending is held: the provider refused the account's keys")
    held_since: datetime | None
    held_reason: str | None = None
    queue_depth: int | None = Field(
        description="Requests waiting in the account's queue; null when the broker cannot say"
    )
    sent_last_minute: int = Field(description="Send attempts over the last minute")
    rate_limited_last_minute: int = Field(
        description="429 (rate limited) answers over the last minute"
    )


class AccountList(_Model):
    accounts: list[Account]


# -- opt-outs ------------------------------------------------------------------------------


class OptOut(_Model):
    """A recipient who may not be sent to from one of our numbers."""

    number: str = Field(description="Ours, E.164 with +")
    recipient: str = Field(description="Theirs, E.164 with +")
    keyword: str | None = Field(
        description=(
            "The word they texted, in capitals (STOP, UNSUBSCRIBE, ...); null when added by hand"
        )
    )
    at: datetime
    by: OptOutBy


class OptOutList(_Model):
    optouts: list[OptOut] = Field(description="Newest first")


class OptOutRequest(_Model):
    number: str = Field(min_length=1, max_length=32, description="Ours, E.164 (+ optional)")
    recipient: str = Field(min_length=1, max_length=32, description="Theirs, E.164 (+ optional)")


class Error(_Model):
    error: str = Field(description="What went wrong, for a person")


# -- the OpenAPI document ------------------------------------------------------------------

RESPONSES: tuple[type[BaseModel], ...] = (
    MessagePage,
    MessageDetail,
    ParkedList,
    RequeueResult,
    AccountList,
    OptOutList,
    OptOut,
    Error,
)
REQUESTS: tuple[type[BaseModel], ...] = (RequeueRequest, OptOutRequest)

DESCRIPTION = f"""\
The console's history API: the messages the ledger keeps (inbound and outbound, with their
timelines), parked messages, provider accounts and the opt-out list. Served by `smsbridge
console` and `smsbridge run` on `console.listen` (never the webhook listener), only when a
ledger is configured. Generated from `schemas/history.py` by `python -m schemas.generate`.

## Authentication

Every endpoint needs `Authorization: Bearer <console.token>`, or the session cookie
`{SESSION_COOKIE}` that the console's login page sets (HttpOnly, SameSite=Strict, signed, with an
expiry). Anything else is `401`. A request that changes something (POST, DELETE) made with the
cookie must also carry the session's CSRF token in the `{CSRF_HEADER}` header (the console's
pages embed it); without it the answer is `403`. Bearer requests need no CSRF token.

## Answers

JSON (`application/json`). Times are RFC 3339, UTC. Every error is `{{"error": "..."}}`:
`400` a malformed filter or body, `401` not authenticated, `403` CSRF token missing or wrong,
`404` unknown, `409` an opt-out change not applied (a later change of the pair stands), `503`
the ledger (PostgreSQL) or the broker (RabbitMQ) cannot be reached right now (try again).

## Pages

`GET {API_PREFIX}/messages` is newest first. Its `next_cursor` names the last message of the
page: the next page starts below it, so messages arriving meanwhile neither repeat nor push
anything off a later page. Nothing counts the whole table: every filter is an index walk.
"""

_ERRORS = {
    "400": "A malformed filter or body",
    "401": "Not authenticated",
    "403": "CSRF token missing or wrong (cookie sessions)",
    "404": "Unknown",
    "409": "Not applied: a later change of the pair is recorded (e.g. a keyword dated after "
    "now); the error says what stands",
    "503": "The ledger or the broker cannot be reached right now",
}


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    out = dict(ok)
    for code in ("401", *errors):
        out[code] = _json(Error, _ERRORS[code])
    return out


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _paths() -> dict[str, Any]:
    text = {"type": "string"}
    when = {"type": "string", "format": "date-time"}
    list_filters = [
        _query("number", "Either party, E.164 (+ optional)", text),
        _query(
            "peer",
            "With `number`: only the conversation between `number` and `peer` (E.164)",
            text,
        ),
        _query("extension", "Destination (inbound) or sending extension (outbound)", text),
        _query("direction", "inbound or outbound", {"type": "string", "enum": list(DIRECTIONS)}),
        _query("status", "The latest status", {"type": "string", "enum": list(STATUSES)}),
        _query("q", "Text in the body (case-insensitive)", text),
        _query("since", "created_at at or after (RFC 3339 with a time zone)", when),
        _query("until", "created_at before (RFC 3339 with a time zone)", when),
        _query(
            "limit",
            f"At most this many (default {DEFAULT_LIMIT}, max {MAX_LIMIT})",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        ),
        _query("cursor", "The previous page's `next_cursor`", text),
    ]
    stage = {
        "name": "stage",
        "in": "path",
        "required": True,
        "description": "The stage whose parking queue to requeue from",
        "schema": {"type": "string", "enum": list(STAGES)},
    }
    return {
        f"{API_PREFIX}/messages": {
            "get": {
                "operationId": "listMessages",
                "summary": "Search messages, newest first",
                "parameters": list_filters,
                "responses": _responses(
                    {"200": _json(MessagePage, "A page of messages")}, "400", "503"
                ),
            }
        },
        f"{API_PREFIX}/messages/{{id}}": {
            "get": {
                "operationId": "getMessage",
                "summary": "One message with its timeline",
                "parameters": [_path("id", "The message's id")],
                "responses": _responses({"200": _json(MessageDetail, "The message")}, "404", "503"),
            }
        },
        f"{API_PREFIX}/parked": {
            "get": {
                "operationId": "listParked",
                "summary": "Parked messages of every stage (a read-only peek)",
                "responses": _responses({"200": _json(ParkedList, "Parked messages")}, "503"),
            }
        },
        f"{API_PREFIX}/parked/{{stage}}/requeue": {
            "post": {
                "operationId": "requeueParked",
                "summary": "Publish parked messages again where they first entered",
                "description": "Only the messages parked when the requeue begins: one its "
                "worker parks again at once waits for the next requeue. A message the broker "
                "refuses or cannot route stays parked (`not_requeued`) while the others are "
                "requeued. A `503` may come part way (the broker connection lost, the ledger "
                "away): its error says how many were requeued before it; the rest are still "
                "parked.",
                "parameters": [stage],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(RequeueRequest)}},
                },
                "responses": _responses(
                    {"200": _json(RequeueResult, "How many were requeued, and any left parked")},
                    "400",
                    "403",
                    "404",
                    "503",
                ),
            }
        },
        f"{API_PREFIX}/accounts": {
            "get": {
                "operationId": "listAccounts",
                "summary": "Provider accounts: held or not, queue depth, recent sends",
                "responses": _responses({"200": _json(AccountList, "Every account")}, "503"),
            }
        },
        f"{API_PREFIX}/optouts": {
            "get": {
                "operationId": "listOptOuts",
                "summary": "The opt-out list",
                "parameters": [_query("number", "Only this number of ours (E.164)", text)],
                "responses": _responses({"200": _json(OptOutList, "Opt-outs")}, "400", "503"),
            },
            "post": {
                "operationId": "addOptOut",
                "summary": "Opt a recipient out of one of our numbers",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(OptOutRequest)}},
                },
                "responses": _responses(
                    {
                        "201": _json(OptOut, "Added"),
                        "200": _json(OptOut, "It was already there"),
                    },
                    "400",
                    "403",
                    "409",
                    "503",
                ),
            },
        },
        f"{API_PREFIX}/optouts/{{number}}/{{recipient}}": {
            "delete": {
                "operationId": "removeOptOut",
                "summary": "Opt a recipient back in",
                "parameters": [
                    _path("number", "Ours, E.164"),
                    _path("recipient", "Theirs, E.164"),
                ],
                "responses": _responses(
                    {"204": {"description": "Removed"}}, "400", "403", "404", "409", "503"
                ),
            }
        },
    }


def component_schemas() -> dict[str, Any]:
    """Every model's JSON Schema, keyed by model name (responses as serialized, requests as
    validated)."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "serialization") for m in RESPONSES),
        *((m, "validation") for m in REQUESTS),
    ]
    _, top = models_json_schema(pairs, by_alias=True, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "smsbridge history API",
            "version": API_VERSION,
            "description": DESCRIPTION,
        },
        "servers": [{"url": "http://127.0.0.1:8081", "description": "console.listen (default)"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": _paths(),
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "console.token",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": f"Set by the login page; writes also need `{CSRF_HEADER}`",
                },
            },
        },
    }
