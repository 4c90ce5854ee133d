"""The AsyncAPI 2.6.0 document of smsbridge's public contract, built from the models.

`build()` returns a plain dict; `python -m schemas.generate` writes it to `schemas/asyncapi.json`
with sorted keys so the checked-in file can be compared byte-for-byte.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel

from schemas.flowroute import CompactReceipt, CompactWebhook, JsonApiReceipt, JsonApiWebhook
from schemas.messages import (
    INBOUND_MESSAGE_TYPE,
    OUTBOUND_REQUEST_TYPE,
    POLICY_TYPE,
    STATUS_TYPE,
    InboundMessage,
    OutboundRequest,
    PolicyEvent,
    Status,
    StatusEvent,
)
from schemas.names import (
    EVENTS,
    OUTBOUND,
    SEND_KEY,
    UNROUTABLE_QUEUE,
    inbound_key,
    policy_key,
    status_key,
)

ASYNCAPI_VERSION = "2.6.0"
CONTRACT_VERSION = "1.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"

# Every model whose schema goes under components/schemas (with the models it refers to).
MODELS: tuple[type[BaseModel], ...] = (
    OutboundRequest,
    InboundMessage,
    StatusEvent,
    PolicyEvent,
    JsonApiWebhook,
    CompactWebhook,
    JsonApiReceipt,
    CompactReceipt,
)

AMQP_CHANNEL_BINDING_VERSION = "0.2.0"
AMQP_OPERATION_BINDING_VERSION = "0.2.0"
AMQP_MESSAGE_BINDING_VERSION = "0.2.0"
HTTP_MESSAGE_BINDING_VERSION = "0.2.0"

DESCRIPTION = f"""\
smsbridge bridges a PBX to Flowroute's SMS/MMS API through RabbitMQ. This document is its
public contract (v1.1): names and fields may be extended but are never renamed or dropped.
It is generated from the `schemas` package by `python -m schemas.generate`.

## Point of view

The document describes the application **smsbridge**, following AsyncAPI 2.x: a `publish`
operation is what *other* applications publish and smsbridge **receives** (PBX services
publishing an OutboundRequest), a `subscribe` operation is what smsbridge **sends** and other
applications subscribe to (InboundMessage and StatusEvent events).

## RabbitMQ

Channel names are AMQP routing keys; each channel's `amqp` binding names its exchange.

- `{OUTBOUND}` (direct, durable): PBX services publish an OutboundRequest with routing key
  `{SEND_KEY}`.
- `{EVENTS}` (topic, durable): the bridge publishes `{inbound_key("{destination}")}`,
  `{inbound_key(None)}`, `{status_key("{status}")}` and `{policy_key("{change}")}`. PBX
  services bind their own queues, e.g. `inbound.100`, `inbound.#` or `status.*`. The exchange
  has an alternate exchange, so an event that no PBX queue is bound for is kept in the
  durable queue `{UNROUTABLE_QUEUE}` rather than dropped. (InboundMessages reach it through
  the bridge's internal exchange `smsbridge.events.journaled`, which is what a delivered
  message's `exchange` field shows.)

All exchanges and queues are durable. Every message is JSON (UTF-8) with the AMQP properties
`content_type=application/json`, `delivery_mode=2` (persistent), `message_id` set, and `type`
naming the schema (`{OUTBOUND_REQUEST_TYPE}`, `{INBOUND_MESSAGE_TYPE}`, `{STATUS_TYPE}`,
`{POLICY_TYPE}`);
each message object lists them under `x-amqp-properties` and its `amqp` binding's
`messageType`.

A request that breaks a rule is not sent: it produces a `{status_key("failed")}` event with a
readable `reason` and is kept in a dead-letter queue.

## HTTP (the gateway)

- `POST /<url_prefix>`: Flowroute's inbound SMS/MMS webhook (`url_prefix` comes from the
  numbers' configuration). The body is a Flowroute message, JSON:API form
  (`JsonApiWebhook` under components/schemas) or compact form (`CompactWebhook`); see the
  `FlowrouteInboundWebhook` message. Answers: `200` once the message is durably in RabbitMQ
  (publisher confirm), `200` again for a message id already accepted (not published twice),
  `400` body is not JSON, `413` body too large, `422` JSON that is not a Flowroute message,
  `403` source IP not allowed, `404` unknown prefix, `503` broker unavailable (Flowroute
  retries).
- `POST /<dlr path>/<token>`: Flowroute delivery receipts (`JsonApiReceipt` or
  `CompactReceipt`; see the `FlowrouteDeliveryReceipt` message). The bridge puts this URL in
  each send's `dlr_callback`; the token is signed, so a forged or altered one is refused.
  Receipts become `status.delivered`, `status.undelivered` or `status.progress` events.
- `GET /media/<key>`: inbound MMS media stored by the bridge (the `url` of a media item).
- `GET /healthz`, `GET /readyz`, `GET /metrics`: liveness, readiness, Prometheus metrics.
"""


def _hoist(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    """Add `model`'s schema, and the `$defs` it uses, to `schemas` (components/schemas)."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF_TEMPLATE)
    defs: dict[str, Any] = schema.pop("$defs", {})
    for name, sub in {**defs, model.__name__: schema}.items():
        if name in schemas and schemas[name] != sub:
            raise ValueError(f"two different schemas are named {name!r}")
        schemas[name] = sub


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _exchange_binding(name: str, kind: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": name,
                "type": kind,
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": AMQP_CHANNEL_BINDING_VERSION,
        }
    }


def _operation_binding() -> dict[str, Any]:
    return {
        "amqp": {
            "deliveryMode": 2,
            "ack": True,
            "bindingVersion": AMQP_OPERATION_BINDING_VERSION,
        }
    }


def _amqp_message(
    *, name: str, title: str, summary: str, model: type[BaseModel], type_: str, message_id: str
) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": _ref("schemas", model.__name__),
        "description": (
            f"AMQP properties: `content_type=application/json`, `delivery_mode=2` (persistent), "
            f"`type={type_}`, `message_id`: {message_id}."
        ),
        "x-amqp-properties": {
            "content_type": "application/json",
            "delivery_mode": 2,
            "type": type_,
            "message_id": message_id,
        },
        "bindings": {
            "amqp": {
                "contentEncoding": "utf-8",
                "messageType": type_,
                "bindingVersion": AMQP_MESSAGE_BINDING_VERSION,
            }
        },
    }


def _http_message(
    *, name: str, title: str, summary: str, models: tuple[type[BaseModel], ...]
) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"oneOf": [_ref("schemas", m.__name__) for m in models]},
        "description": (
            "Received over HTTP by the gateway (see info.description), not over RabbitMQ. "
            "A body with a top-level `data` object is the JSON:API form, otherwise the "
            "compact form. Unknown fields are allowed and kept."
        ),
        "bindings": {
            "http": {
                "headers": {
                    "type": "object",
                    "properties": {
                        "Content-Type": {"type": "string", "enum": ["application/json"]},
                    },
                },
                "bindingVersion": HTTP_MESSAGE_BINDING_VERSION,
            }
        },
    }


def build() -> dict[str, Any]:
    """The AsyncAPI document (a JSON-ready dict)."""
    schemas: dict[str, Any] = {}
    for model in MODELS:
        _hoist(model, schemas)

    messages: dict[str, Any] = {
        "OutboundRequest": _amqp_message(
            name="OutboundRequest",
            title="Send an SMS/MMS",
            summary="A PBX service's request to send an SMS or MMS through Flowroute.",
            model=OutboundRequest,
            type_=OUTBOUND_REQUEST_TYPE,
            message_id="chosen by the publisher",
        ),
        "InboundMessage": _amqp_message(
            name="InboundMessage",
            title="SMS/MMS received",
            summary="An SMS or MMS received from Flowroute.",
            model=InboundMessage,
            type_=INBOUND_MESSAGE_TYPE,
            message_id="set by the bridge",
        ),
        "StatusEvent": _amqp_message(
            name="StatusEvent",
            title="Outbound status",
            summary="What happened to an OutboundRequest; `id` is the request's `id`.",
            model=StatusEvent,
            type_=STATUS_TYPE,
            message_id="set by the bridge",
        ),
        "PolicyEvent": _amqp_message(
            name="PolicyEvent",
            title="Opt-out change",
            summary="A recipient opted out of (or back in to) one of our numbers by keyword.",
            model=PolicyEvent,
            type_=POLICY_TYPE,
            message_id="set by the bridge",
        ),
        "FlowrouteInboundWebhook": _http_message(
            name="FlowrouteInboundWebhook",
            title="Flowroute inbound webhook",
            summary="POST /<url_prefix>: an SMS/MMS as Flowroute posts it.",
            models=(JsonApiWebhook, CompactWebhook),
        ),
        "FlowrouteDeliveryReceipt": _http_message(
            name="FlowrouteDeliveryReceipt",
            title="Flowroute delivery receipt",
            summary="POST /<dlr path>/<token>: a delivery receipt as Flowroute posts it.",
            models=(JsonApiReceipt, CompactReceipt),
        ),
    }

    parameters: dict[str, Any] = {
        "destination": {
            "description": "The `destination` configured for the number the message was sent to.",
            "schema": {"type": "string", "minLength": 1},
        },
        "status": {
            "description": "The StatusEvent's `status`.",
            "schema": {"type": "string", "enum": list(get_args(Status))},
        },
        "change": {
            "description": "What changed for the recipient.",
            "schema": {"type": "string", "enum": ["opted_out", "opted_in"]},
        },
    }

    events = _exchange_binding(EVENTS, "topic")
    events_note = (
        f"Exchange `{EVENTS}` (topic, durable). Its alternate exchange keeps an event that no "
        f"PBX queue is bound for in the durable queue `{UNROUTABLE_QUEUE}`."
    )
    channels: dict[str, Any] = {
        SEND_KEY: {
            "description": f"Exchange `{OUTBOUND}` (direct, durable), routing key `{SEND_KEY}`.",
            "bindings": _exchange_binding(OUTBOUND, "direct"),
            "publish": {
                "operationId": "receiveOutboundRequest",
                "summary": "PBX services publish OutboundRequests; smsbridge receives them.",
                "description": (
                    "A request that breaks a rule is not sent: it produces a "
                    f"`{status_key('failed')}` event and is kept in a dead-letter queue."
                ),
                "bindings": _operation_binding(),
                "message": _ref("messages", "OutboundRequest"),
            },
        },
        inbound_key("{destination}"): {
            "description": f"{events_note} Messages to a configured destination.",
            "parameters": {"destination": _ref("parameters", "destination")},
            "bindings": events,
            "subscribe": {
                "operationId": "sendInboundMessage",
                "summary": "smsbridge sends each SMS/MMS received for a routed number.",
                "bindings": _operation_binding(),
                "message": _ref("messages", "InboundMessage"),
            },
        },
        inbound_key(None): {
            "description": (
                f"{events_note} Messages to a number with no configuration (never dropped); "
                "`destination` is null."
            ),
            "bindings": events,
            "subscribe": {
                "operationId": "sendUnroutedInboundMessage",
                "summary": "smsbridge sends each SMS/MMS received for an unrouted number.",
                "bindings": _operation_binding(),
                "message": _ref("messages", "InboundMessage"),
            },
        },
        status_key("{status}"): {
            "description": (
                f"{events_note} `sent`: Flowroute accepted the message (`provider_id` set); "
                "`delivered`/`undelivered`: a delivery receipt's final word; `progress`: any "
                "other delivery receipt; `failed`: the bridge gave up."
            ),
            "parameters": {"status": _ref("parameters", "status")},
            "bindings": events,
            "subscribe": {
                "operationId": "sendStatusEvent",
                "summary": "smsbridge sends what happened to each OutboundRequest.",
                "bindings": _operation_binding(),
                "message": _ref("messages", "StatusEvent"),
            },
        },
        policy_key("{change}"): {
            "description": (
                f"{events_note} A number's policy honours opt-out keywords and a recipient "
                "texted one (STOP, START families): nothing more is sent to them from that "
                "number until they opt back in."
            ),
            "parameters": {"change": _ref("parameters", "change")},
            "bindings": events,
            "subscribe": {
                "operationId": "sendPolicyEvent",
                "summary": "smsbridge sends each opt-out and opt-in made by keyword.",
                "bindings": _operation_binding(),
                "message": _ref("messages", "PolicyEvent"),
            },
        },
    }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:smsbridge:contract:v1",
        "info": {
            "title": "smsbridge",
            "version": CONTRACT_VERSION,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "url": "{host}:{port}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": (
                    "The RabbitMQ broker of the configuration's `[broker] url` (or any node of "
                    "`[broker] urls`, a cluster)."
                ),
                "variables": {
                    "host": {"default": "127.0.0.1"},
                    "port": {"default": "5672"},
                },
            }
        },
        "channels": channels,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": parameters,
        },
    }
