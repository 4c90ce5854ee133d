"""Phone number normalization (E.164 with '+'), built on Google's phonenumbers."""

from __future__ import annotations

import functools

import phonenumbers


class NumberError(ValueError):
    """A string that is not a usable phone number."""


@functools.lru_cache(maxsize=65536)
def to_e164(raw: str, region: str = "US") -> str:
    """Normalize a number to E.164 with '+'.

    Flowroute sends E.164 digits without '+' (and sometimes with): 11+ digits are taken as
    already international; shorter national forms use `region`.
    """
    text = raw.strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits or len(digits) > 15 or any(ch.isalpha() for ch in text):
        raise NumberError(f"not a phone number: {raw[:40]!r}")
    candidate = "+" + digits if text.startswith("+") or len(digits) >= 11 else digits
    try:
        parsed = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException as exc:
        raise NumberError(f"not a phone number: {raw[:40]!r} ({exc})") from None
    if not phonenumbers.is_possible_number(parsed):
        raise NumberError(f"not a possible E.164 number: {raw[:40]!r}")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_sender(raw: str, region: str = "US") -> str:
    """Like `to_e164`, but keeps short codes (which have no E.164 form) as bare digits."""
    try:
        return to_e164(raw, region)
    except NumberError:
        digits = "".join(ch for ch in raw if ch.isdigit())
        if 3 <= len(digits) <= 8 and digits == raw.strip().lstrip("+"):
            return digits
        raise


def to_flowroute(e164: str) -> str:
    """Flowroute wants E.164 digits without the '+'."""
    return e164.lstrip("+")
