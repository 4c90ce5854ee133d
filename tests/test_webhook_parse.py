"""Inbound webhook parsing: both body forms, and the drift real Flowroute payloads show."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smsbridge.flowroute.webhook import (
    InboundSms,
    NotJson,
    WebhookError,
    decode_json,
    parse_inbound,
    parse_timestamp,
)

FIXTURES = Path(__file__).parent / "fixtures"
INBOUND = sorted(FIXTURES.glob("inbound-*.json"))

# fixture file -> (id, to, from, body, media count)
EXPECTED = {
    "inbound-mms.jsonapi.json": (
        "mdr2-9a8b7c6d5e4f4a3b9c8d7e6f5a4b3c2d",
        "+12025551234",
        "+12065550142",
        "",
        2,
    ),
    "inbound-sms.compact.json": (
        "mdr2-7d1e5a2b3c4d4e5f8a9b0c1d2e3f4a5b",
        "+12025551234",
        "+12065550142",
        "Running 10 min late",
        0,
    ),
    "inbound-sms.jsonapi.json": (
        "mdr2-0b6f2c4a9d8e4f3b8a1c2d3e4f5a6b7c",
        "+12025551234",
        "+12065550142",
        "Is the office open on Saturday?",
        0,
    ),
    "inbound-sms.unicode.json": (
        "mdr2-5c5c5c5c5c5c4c5c8c5c5c5c5c5c5c5c",
        "+18335550111",
        "+12065550142",
        "Gracias 👍 — à demain",
        0,
    ),
}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def sms(**attributes: Any) -> dict[str, Any]:
    """A JSON:API inbound SMS with `attributes` overridden (None values are kept as null)."""
    body: dict[str, Any] = load("inbound-sms.jsonapi.json")
    body["data"]["attributes"].update(attributes)
    return body


def compact(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = load("inbound-sms.compact.json")
    body.update(fields)
    return body


# --- the fixtures ---------------------------------------------------------------------------


def test_every_inbound_fixture_is_covered() -> None:
    assert {path.name for path in INBOUND} == set(EXPECTED)


@pytest.mark.parametrize("path", INBOUND, ids=lambda p: p.name)
def test_inbound_fixture_parses(path: Path) -> None:
    message_id, to, from_, body, media = EXPECTED[path.name]

    message = parse_inbound(decode_json(path.read_bytes()))

    assert isinstance(message, InboundSms)
    assert message.id == message_id
    assert message.to == to
    assert message.from_ == from_
    assert message.body == body
    assert len(message.media) == media
    assert message.is_mms == (media > 0)


def test_mms_media_items_are_described() -> None:
    message = parse_inbound(load("inbound-mms.jsonapi.json"))
    photo, note = message.media
    assert photo.file_name == "photo.jpg"
    assert photo.content_type == "image/jpeg"
    assert photo.size == 48213
    assert photo.url is not None
    assert photo.url.startswith("https://s3.us-west-2.amazonaws.com/flowroute-messaging-media/")
    assert note.file_name == "note.txt"
    assert note.content_type == "text/plain"
    assert note.size == 42


def test_mms_with_null_body_has_empty_body() -> None:
    message = parse_inbound(load("inbound-mms.jsonapi.json"))
    assert message.body == ""
    assert message.attributes["body"] is None


def test_timestamps_of_fixtures_are_utc() -> None:
    sms_ = parse_inbound(load("inbound-sms.jsonapi.json"))
    assert sms_.sent_at == datetime(2026, 11, 20, 17, 3, 11, 520000, tzinfo=UTC)
    unicode_ = parse_inbound(load("inbound-sms.unicode.json"))
    assert unicode_.sent_at == datetime(2026, 11, 20, 17, 5, 0, tzinfo=UTC)
    assert parse_inbound(load("inbound-sms.compact.json")).sent_at is None


def test_jsonapi_attributes_are_kept_untouched() -> None:
    original = load("inbound-sms.unicode.json")
    before = copy.deepcopy(original)
    message = parse_inbound(original)
    assert message.attributes == before["data"]["attributes"]
    assert original == before  # the input is not modified


def test_compact_attributes_keep_the_original_fields() -> None:
    message = parse_inbound(load("inbound-sms.compact.json"))
    assert message.attributes["to"] == "12025551234"
    assert message.attributes["from"] == "12065550142"
    assert message.attributes["body"] == "Running 10 min late"


# --- drift ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["7000000", 7000000, 7000000.0, None, ""])
def test_amount_nanodollars_as_string_or_number(amount: Any) -> None:
    message = parse_inbound(sms(amount_nanodollars=amount))
    assert message.attributes["amount_nanodollars"] == amount


@pytest.mark.parametrize("display", ["$0.0070", "0.0070", 0.007, None])
def test_amount_display_forms(display: Any) -> None:
    message = parse_inbound(sms(amount_display=display))
    assert message.attributes["amount_display"] == display


def test_null_body_is_empty_string() -> None:
    assert parse_inbound(sms(body=None)).body == ""
    assert parse_inbound(compact(body=None)).body == ""


def test_missing_body_is_empty_string() -> None:
    body: dict[str, Any] = load("inbound-sms.compact.json")
    del body["body"]
    assert parse_inbound(body).body == ""


@pytest.mark.parametrize("status", ["", None, "delivered", "received"])
def test_status_may_be_empty(status: Any) -> None:
    assert parse_inbound(sms(status=status)).attributes["status"] == status


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-11-20T17:03:11.00Z", datetime(2026, 11, 20, 17, 3, 11, tzinfo=UTC)),
        ("2026-11-20T17:03:11Z", datetime(2026, 11, 20, 17, 3, 11, tzinfo=UTC)),
        (
            "2026-11-20T17:03:11.980000Z",
            datetime(2026, 11, 20, 17, 3, 11, 980000, tzinfo=UTC),
        ),
        ("2026-11-20T17:03:11+00:00", datetime(2026, 11, 20, 17, 3, 11, tzinfo=UTC)),
        ("2026-11-20T19:03:11+02:00", datetime(2026, 11, 20, 17, 3, 11, tzinfo=UTC)),
        ("2026-11-20T17:03:11", datetime(2026, 11, 20, 17, 3, 11, tzinfo=UTC)),
    ],
)
def test_timestamp_forms_parse_to_utc(timestamp: str, expected: datetime) -> None:
    sent_at = parse_inbound(sms(timestamp=timestamp)).sent_at
    assert sent_at == expected
    assert sent_at is not None and sent_at.utcoffset() is not None
    assert sent_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("timestamp", ["garbage", "", "2026-13-45T99:99:99Z", None])
def test_bad_timestamp_gives_no_sent_at(timestamp: Any) -> None:
    message = parse_inbound(sms(timestamp=timestamp))
    assert message.sent_at is None
    assert message.attributes["timestamp"] == timestamp


@pytest.mark.parametrize("value", [None, 1700000000, 17.5, [], {}, "yesterday"])
def test_parse_timestamp_never_raises(value: Any) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("to", "from_"),
    [
        ("12025551234", "12065550142"),
        ("+12025551234", "+12065550142"),
        ("+12025551234", "12065550142"),
        ("12025551234", "+12065550142"),
    ],
)
def test_numbers_with_and_without_plus(to: str, from_: str) -> None:
    for body in (sms(to=to, **{"from": from_}), compact(to=to, **{"from": from_})):
        message = parse_inbound(body)
        assert message.to == "+12025551234"
        assert message.from_ == "+12065550142"


def test_short_code_sender_is_kept_as_digits() -> None:
    assert parse_inbound(sms(**{"from": "12345"})).from_ == "12345"


def test_unknown_extra_attributes_are_kept() -> None:
    message = parse_inbound(sms(carrier="T-Mobile", segments=2, nested={"a": [1, 2]}))
    assert message.attributes["carrier"] == "T-Mobile"
    assert message.attributes["segments"] == 2
    assert message.attributes["nested"] == {"a": [1, 2]}


def test_unknown_extra_fields_in_compact_form_are_kept() -> None:
    message = parse_inbound(compact(carrier="Verizon"))
    assert message.attributes["carrier"] == "Verizon"


def test_unknown_top_level_fields_do_not_break_jsonapi() -> None:
    body = load("inbound-mms.jsonapi.json")
    body["meta"] = {"api_version": "2.2"}
    body["data"]["links"] = {"self": "https://api.flowroute.com/v2.2/messages/x"}
    body["included"].append({"type": "something-else", "id": "x"})
    message = parse_inbound(body)
    assert len(message.media) == 2


def test_media_file_size_as_string_or_garbage() -> None:
    body = load("inbound-mms.jsonapi.json")
    body["included"][0]["attributes"]["file_size"] = "48213"
    body["included"][1]["attributes"]["file_size"] = "unknown"
    photo, note = parse_inbound(body).media
    assert photo.size == 48213
    assert note.size is None


def test_compact_mms_media_urls_are_read() -> None:
    message = parse_inbound(compact(media_urls=["https://example.com/a.jpg", 7]))
    assert [m.url for m in message.media] == ["https://example.com/a.jpg"]


# --- not a Flowroute message ----------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff\xfe", b"<xml/>"])
def test_not_json_raises_not_json(raw: bytes) -> None:
    with pytest.raises(NotJson):
        decode_json(raw)


def test_decode_json_returns_the_document() -> None:
    assert decode_json(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("obj", [[], [{"to": "12025551234"}], "text", 42, None, {}])
def test_not_an_object_or_empty_is_a_webhook_error(obj: Any) -> None:
    with pytest.raises(WebhookError):
        parse_inbound(obj)


def test_missing_to_is_a_webhook_error() -> None:
    body: dict[str, Any] = load("inbound-sms.jsonapi.json")
    del body["data"]["attributes"]["to"]
    with pytest.raises(WebhookError, match="to"):
        parse_inbound(body)
    body = load("inbound-sms.compact.json")
    del body["to"]
    with pytest.raises(WebhookError, match="to"):
        parse_inbound(body)


def test_missing_id_is_a_webhook_error() -> None:
    body: dict[str, Any] = load("inbound-sms.compact.json")
    del body["id"]
    with pytest.raises(WebhookError):
        parse_inbound(body)


def test_delivery_receipt_type_is_a_webhook_error() -> None:
    body: dict[str, Any] = load("inbound-sms.jsonapi.json")
    body["data"]["type"] = "delivery_receipt"
    with pytest.raises(WebhookError, match="delivery_receipt"):
        parse_inbound(body)


@pytest.mark.parametrize(
    "name", ["dlr.jsonapi.json", "dlr.compact.json", "dlr.level1.jsonapi.json"]
)
def test_delivery_receipt_fixtures_are_webhook_errors(name: str) -> None:
    with pytest.raises(WebhookError):
        parse_inbound(load(name))


@pytest.mark.parametrize("to", ["abc", "", "1234567890123456", "12"])
def test_bad_to_is_a_webhook_error(to: str) -> None:
    with pytest.raises(WebhookError):
        parse_inbound(sms(to=to))
    with pytest.raises(WebhookError):
        parse_inbound(compact(to=to))


def test_bad_from_is_a_webhook_error() -> None:
    with pytest.raises(WebhookError):
        parse_inbound(sms(**{"from": "abc"}))


@pytest.mark.parametrize("data", [None, [], "message", {"type": "message"}])
def test_malformed_data_is_a_webhook_error(data: Any) -> None:
    with pytest.raises(WebhookError):
        parse_inbound({"data": data})


def test_webhook_error_is_not_not_json() -> None:
    assert not issubclass(WebhookError, NotJson)
    assert not issubclass(NotJson, WebhookError)


def test_timestamp_that_overflows_in_utc_is_none() -> None:
    from smsbridge.flowroute.webhook import parse_timestamp

    assert parse_timestamp("0001-01-01T00:00:00+01:00") is None
