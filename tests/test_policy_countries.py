"""Allowed destination countries: the country of an E.164 number, and the allow-list rule."""

from __future__ import annotations

import pytest

from smsbridge.policies.countries import country_allowed, country_of


@pytest.mark.parametrize(
    ("number", "country"),
    [
        ("+12125550123", "US"),  # New York
        ("+12015550123", "US"),
        ("+14165550123", "CA"),  # Toronto: +1 too, told apart by area code
        ("+16045550123", "CA"),
        ("+18765550123", "JM"),  # Jamaica, in the North American Numbering Plan
        ("+17875550123", "PR"),  # Puerto Rico
        ("+12465550123", "BB"),  # Barbados
        ("+18002345678", "US"),  # NANP toll-free: phonenumbers files it under US
        ("+442071838750", "GB"),
        ("+441534123456", "JE"),  # Jersey shares +44
        ("+4930123456", "DE"),
        ("+33123456789", "FR"),
        ("+74951234567", "RU"),
        ("+77012345678", "KZ"),  # Kazakhstan shares +7
        ("+81312345678", "JP"),
        ("+61212345678", "AU"),
        ("+5511912345678", "BR"),
    ],
)
def test_country_of(number: str, country: str) -> None:
    assert country_of(number) == country


@pytest.mark.parametrize(
    "number",
    [
        "+80012345678",  # international freephone: non-geographic ("001")
        "+881612345678",  # satellite
        "+15555550123",  # +1 with an area code no member uses
        "+1212",  # too short to place within +1
        "+999123456",  # unassigned country code
        "12125550123",  # not E.164: no '+'
        "2125550123",
        "",
        "+",
        "not a number",
        "+1 212 555 0123 ext. banana",
    ],
)
def test_country_of_unknown(number: str) -> None:
    assert country_of(number) is None


@pytest.mark.parametrize(
    ("number", "allowed", "expected"),
    [
        ("+12125550123", None, True),  # no list: the rule is off
        ("+80012345678", None, True),  # ... even without a country
        ("not a number", None, True),
        ("+12125550123", ["US"], True),
        ("+12125550123", ["US", "CA"], True),
        ("+14165550123", ["US", "CA"], True),
        ("+14165550123", ["US"], False),
        ("+18765550123", ["US", "CA"], False),  # +1, but Jamaica
        ("+441534123456", ["GB"], False),  # Jersey is not GB
        ("+442071838750", ["GB"], True),
        ("+12125550123", ["us"], True),  # codes compare case-insensitively
        ("+12125550123", [" US "], True),
        ("+12125550123", [], False),  # an empty list allows nothing
        ("+80012345678", ["US"], False),  # no country: refused when a list is set
        ("+15555550123", ["US"], False),
        ("12125550123", ["US"], False),
    ],
)
def test_country_allowed(number: str, allowed: list[str] | None, expected: bool) -> None:
    assert country_allowed(number, allowed) is expected


def test_country_allowed_takes_any_sequence() -> None:
    assert country_allowed("+12125550123", ("CA", "US"))
