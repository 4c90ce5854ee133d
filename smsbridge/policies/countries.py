"""Allowed destination countries: which country an E.164 number belongs to.

Country codes are shared: +1 is the North American Numbering Plan (US, CA, PR, JM and the
other Caribbean members), +7 is RU and KZ, +44 is GB, GG, IM and JE. phonenumbers tells them
apart by area code and number ranges, so a policy can allow US without allowing Jamaica.

Decisions:

- The number must be E.164 with its '+'; anything else has no country (None).
- For a shared country code, a number whose area code belongs to no member (e.g. +1 555...)
  has no country; for a single-country code the country is known from the code alone.
- Non-geographic numbers (international freephone +800, satellite +881, ...) belong to no
  country: phonenumbers calls their region "001", which is not ISO 3166, so None.
- When a list is set, a number without a country is refused: a policy that restricts
  destinations must not let through what it cannot place. An empty list refuses everything;
  only None (no list) turns the rule off.
- Codes in the list are compared case-insensitively (the config already upper-cases them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import phonenumbers

# The "regions" phonenumbers uses for no country: non-geographic plans ("001") and unknown.
_NO_COUNTRY: Final = frozenset(
    {phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY, phonenumbers.UNKNOWN_REGION}
)


@functools.lru_cache(maxsize=65536)
def country_of(e164: str) -> str | None:
    """ISO 3166 alpha-2 code of the number's country, or None when it has none or is unknown."""
    if not e164.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    region: str | None = phonenumbers.region_code_for_number(parsed)
    if region is None or region in _NO_COUNTRY:
        return None
    return region


def country_allowed(e164: str, allowed: Sequence[str] | None) -> bool:
    """Whether a message may go to `e164`; `allowed` None means the rule is off."""
    if allowed is None:
        return True
    country = country_of(e164)
    return country is not None and country in {code.strip().upper() for code in allowed}
