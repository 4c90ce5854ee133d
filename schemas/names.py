"""The public names of RabbitMQ objects and message types PBX services use.

Fixed once published: extended, never renamed. `smsbridge.topology` declares them (with the
bridge's internal objects); the AsyncAPI document describes them.
"""

from __future__ import annotations

# topic: inbound.<destination>, inbound.unrouted, status.<status>, policy.<change>
EVENTS = "smsbridge.events"
OUTBOUND = "smsbridge.outbound"  # direct: routing key `send`
UNROUTABLE_QUEUE = "smsbridge.unroutable"  # events no PBX queue is bound for
SEND_KEY = "send"

INBOUND_MESSAGE_TYPE = "smsbridge.inbound_message.v1"
OUTBOUND_REQUEST_TYPE = "smsbridge.outbound_request.v1"
STATUS_TYPE = "smsbridge.status.v1"
POLICY_TYPE = "smsbridge.policy.v1"


def inbound_key(destination: str | None) -> str:
    return f"inbound.{destination}" if destination else "inbound.unrouted"


def status_key(status: str) -> str:
    return f"status.{status}"


def policy_key(change: str) -> str:
    return f"policy.{change}"
