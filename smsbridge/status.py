"""StatusEvents: what happened to an OutboundRequest, for the PBX."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.messages import STATUS_TYPE
from smsbridge import topology
from smsbridge.broker import Broker
from smsbridge.metrics import PUBLISH_CONFIRM_SECONDS


def status_event(request_id: str, status: str, **fields: Any) -> bytes:
    event = {
        "id": request_id,
        "status": status,
        "provider_id": None,
        "reason": None,
        "attempts": 0,
        "provider_status": None,
        "provider_status_code": None,
        "level": None,
        "at": datetime.now(UTC),
        **fields,
    }
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)


async def publish_status(
    broker: Broker,
    request_id: str,
    status: str,
    *,
    timeout: float | None = None,
    **fields: Any,
) -> None:
    """Publish a StatusEvent, confirmed. Its message_id is the same for the same event, so a
    PBX can drop a repeated one. `timeout`: wait at most this long for the confirm (the
    gateway, which must answer); without it, wait as long as the connection lives."""
    message_id = topology.status_event_id(
        request_id, status, fields.get("attempts", 0), fields.get("level")
    )
    message = topology.json_message(
        status_event(request_id, status, **fields), message_id=message_id, type_=STATUS_TYPE
    )
    key = topology.status_key(status)
    if timeout is None:
        confirm = await broker.deliver(topology.EVENTS, key, message)
    else:
        confirm = await broker.publish(topology.EVENTS, key, message, timeout)
    PUBLISH_CONFIRM_SECONDS.labels("outbound").observe(confirm)
