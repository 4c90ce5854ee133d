"""Phone number normalization: E.164 with '+', short codes kept as digits."""

from __future__ import annotations

import pytest

from smsbridge.phone import NumberError, normalize_sender, to_e164, to_flowroute


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12025551234", "+12025551234"),  # Flowroute's form: E.164 digits without '+'
        ("+12025551234", "+12025551234"),
        ("2025551234", "+12025551234"),  # national US form
        ("+447911123456", "+447911123456"),
        ("447911123456", "+447911123456"),  # 11+ digits are taken as international
        ("+1 (202) 555-1234", "+12025551234"),
        (" 12025551234 ", "+12025551234"),
    ],
)
def test_to_e164_normalizes(raw: str, expected: str) -> None:
    assert to_e164(raw) == expected


def test_to_e164_uses_the_region_for_national_numbers() -> None:
    assert to_e164("7911123456", "GB") == "+447911123456"


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "abc", "+", "1234567890123456", "+1234567890123456", "12345", "202555"],
)
def test_to_e164_rejects_non_numbers(raw: str) -> None:
    with pytest.raises(NumberError):
        to_e164(raw)


def test_number_error_is_a_value_error() -> None:
    assert issubclass(NumberError, ValueError)


def test_normalize_sender_keeps_a_short_code() -> None:
    assert normalize_sender("12345") == "12345"
    assert normalize_sender("862255") == "862255"


def test_normalize_sender_normalizes_long_numbers() -> None:
    assert normalize_sender("12065550142") == "+12065550142"
    assert normalize_sender("+12065550142") == "+12065550142"


@pytest.mark.parametrize("raw", ["", "abc", "12", "12-345", "1234567890123456"])
def test_normalize_sender_rejects_garbage(raw: str) -> None:
    with pytest.raises(NumberError):
        normalize_sender(raw)


def test_to_flowroute_strips_the_plus() -> None:
    assert to_flowroute("+12025551234") == "12025551234"
    assert to_flowroute(to_e164("2025551234")) == "12025551234"
