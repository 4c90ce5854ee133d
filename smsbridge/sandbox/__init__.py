"""A Flowroute look-alike HTTP server on loopback for tests, benchmarks and the demo.

``Sandbox`` serves Flowroute's ``/v2.2/messages`` API (auth, validation, rate limits,
delivery receipts, message records) and its ``/v2.1`` account-level callbacks, media files for
inbound MMS, and ``/_sandbox/`` control endpoints (fault injection, records, inbound webhook
posting). ``serve`` runs one until cancelled.
"""

from .api import AcceptedMessage, AccountSpec, CallbackKind, Fault, ReceiptPost
from .app import DEFAULT_ACCOUNT, Sandbox, serve
from .inbound import InboundMedia, InboundResult
from .media import big_bytes, media_bytes
from .payloads import MediaSpec, dlr, inbound_mms, inbound_sms

__all__ = [
    "DEFAULT_ACCOUNT",
    "AcceptedMessage",
    "AccountSpec",
    "CallbackKind",
    "Fault",
    "InboundMedia",
    "InboundResult",
    "MediaSpec",
    "ReceiptPost",
    "Sandbox",
    "big_bytes",
    "dlr",
    "inbound_mms",
    "inbound_sms",
    "media_bytes",
    "serve",
]
