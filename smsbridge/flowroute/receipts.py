"""Flowroute delivery receipts: both body forms, and the small vocabulary of final states.

The full status-code table is not published, so the raw level/status/code are always kept;
only known words map to `delivered`/`undelivered`, everything else is `progress`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.flowroute import CompactReceipt, JsonApiReceipt, ReceiptData

_DELIVERED = ("delivery success", "delivered", "delivrd", "delivery successful")
_UNDELIVERED = (
    "delivery failure",
    "delivery failed",
    "undeliverable",
    "undelivered",
    "undeliv",
    "failed",
    "rejected",
    "rejectd",
    "expired",
    "deleted",
)


# Levels are small integers (0, 1, 2...): at most 9 ASCII digits is ample and always parses.
_LEVEL = re.compile(r"[0-9]{1,9}")


class ReceiptError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Receipt:
    provider_id: str
    status: str  # delivered | undelivered | progress
    level: int | None
    provider_status: str | None
    provider_status_code: str | int | None
    description: str | None


def classify(level: int | None, status: str | None) -> str:
    word = (status or "").strip().lower()
    if level == 1:
        return "progress"
    if word.startswith(_DELIVERED):
        return "delivered"
    if word.startswith(_UNDELIVERED):
        return "undelivered"
    return "progress"


def parse_receipt(obj: Any) -> Receipt:
    if not isinstance(obj, dict):
        raise ReceiptError("receipt is not a JSON object")
    try:
        data: ReceiptData = (
            JsonApiReceipt.model_validate(obj).data
            if "data" in obj
            else CompactReceipt.model_validate(obj)
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ReceiptError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if data.type != "delivery_receipt":
        raise ReceiptError(f"type is {data.type!r}, not 'delivery_receipt'")
    attrs = data.attributes
    level = _int(attrs.level)
    code = attrs.status_code
    return Receipt(
        provider_id=data.id,
        status=classify(level, attrs.status),
        level=level,
        provider_status=attrs.status,
        provider_status_code=code if isinstance(code, str | int) else None,
        description=attrs.status_code_description,
    )


def _int(value: object) -> int | None:
    """A level as an int, or None when absent or not a number (kept lenient, as before).

    A string of digits must be plain ASCII and at most 9 of them: "²" passes isdigit() but
    int() refuses it, and int() refuses strings over 4,300 digits. Those are ReceiptError
    (422), never an unhandled ValueError (500).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _LEVEL.fullmatch(text):
            return int(text)
        if text.isdigit():
            raise ReceiptError(f"level: not a plain number of at most 9 digits: {text[:20]!r}")
    return None
