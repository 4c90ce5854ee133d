"""The generated contract documents (schemas/json, schemas/asyncapi.json) and the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from schemas import asyncapi, generate
from schemas.flowroute import (
    CompactReceipt,
    CompactWebhook,
    JsonApiReceipt,
    JsonApiWebhook,
    ReceiptData,
)
from schemas.messages import (
    INBOUND_MESSAGE_TYPE,
    OUTBOUND_REQUEST_TYPE,
    STATUS_TYPE,
    OutboundRequest,
    Status,
)

FIXTURES = Path(__file__).parent / "fixtures"
INBOUND_FIXTURES = sorted(FIXTURES.glob("inbound-*.json"))
RECEIPT_FIXTURES = sorted(FIXTURES.glob("dlr*.json"))


def _load(path: Path) -> dict[str, Any]:
    value = orjson.loads(path.read_bytes())
    assert isinstance(value, dict)
    return value


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.build()


# --- generated files -------------------------------------------------------------------------


def test_checked_in_files_are_up_to_date() -> None:
    rendered = generate.render()
    stale = [
        path
        for path, content in rendered.items()
        if not (generate.ROOT / path).is_file() or (generate.ROOT / path).read_bytes() != content
    ]
    assert not stale, f"stale generated files {stale}: run `python -m schemas.generate`"
    assert generate.stale() == [], "run `python -m schemas.generate`"


def test_render_covers_every_model_and_is_deterministic() -> None:
    rendered = generate.render()
    expected = {f"schemas/json/{name}.schema.json" for name in generate.SCHEMAS}
    assert set(rendered) == expected | {"schemas/asyncapi.json"}
    assert len(generate.SCHEMAS) == 8
    assert rendered == generate.render()
    for path, content in rendered.items():
        assert content.endswith(b"}\n"), path
        assert generate.dumps(orjson.loads(content)) == content, f"{path}: keys not sorted"


def test_check_reports_stale_and_write_fixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    assert "python -m schemas.generate" in capsys.readouterr().err
    orphan = tmp_path / "schemas/json/gone.schema.json"
    generate.write(tmp_path)
    orphan.write_text("{}\n")
    (tmp_path / "schemas/asyncapi.json").write_bytes(b"{}\n")
    assert generate.stale(tmp_path) == ["schemas/asyncapi.json", "schemas/json/gone.schema.json"]
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert not orphan.exists()
    assert generate.stale(tmp_path) == []
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0


def test_inbound_message_schema_uses_the_alias() -> None:
    schema = orjson.loads(generate.render()["schemas/json/inbound_message.schema.json"])
    assert "from" in schema["properties"]
    assert "from_" not in schema["properties"]
    assert "from" in schema["required"]
    assert "from_" not in schema["required"]
    outbound = orjson.loads(generate.render()["schemas/json/outbound_request.schema.json"])
    assert "from" in outbound["properties"] and "from_" not in outbound["properties"]


# --- AsyncAPI document -----------------------------------------------------------------------


def test_asyncapi_names_every_public_exchange_and_routing_key(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "2.6.0"
    channels = doc["channels"]
    assert set(channels) >= {"send", "inbound.{destination}", "inbound.unrouted", "status.{status}"}

    def exchange(key: str) -> dict[str, Any]:
        binding: dict[str, Any] = channels[key]["bindings"]["amqp"]
        assert binding["is"] == "routingKey"
        return binding["exchange"]  # type: ignore[no-any-return]

    assert exchange("send") == {
        "name": "smsbridge.outbound",
        "type": "direct",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    for key in ("inbound.{destination}", "inbound.unrouted", "status.{status}"):
        assert exchange(key)["name"] == "smsbridge.events"
        assert exchange(key)["type"] == "topic"
        assert exchange(key)["durable"] is True
        assert "alternate exchange" in channels[key]["description"]
        assert "smsbridge.unroutable" in channels[key]["description"]
    text = orjson.dumps(doc).decode()
    for name in ("smsbridge.outbound", "smsbridge.events", "smsbridge.unroutable"):
        assert name in doc["info"]["description"]
        assert name in text


def test_asyncapi_point_of_view(doc: dict[str, Any]) -> None:
    channels = doc["channels"]
    assert set(channels["send"]) >= {"publish"} and "subscribe" not in channels["send"]
    for key in ("inbound.{destination}", "inbound.unrouted", "status.{status}"):
        assert "subscribe" in channels[key] and "publish" not in channels[key]
    description = doc["info"]["description"]
    assert "`publish`" in description and "`subscribe`" in description
    assert "POST /<url_prefix>" in description and "POST /<dlr path>/<token>" in description


def test_asyncapi_messages(doc: dict[str, Any]) -> None:
    expected = {
        "send": ("publish", "OutboundRequest", OUTBOUND_REQUEST_TYPE),
        "inbound.{destination}": ("subscribe", "InboundMessage", INBOUND_MESSAGE_TYPE),
        "inbound.unrouted": ("subscribe", "InboundMessage", INBOUND_MESSAGE_TYPE),
        "status.{status}": ("subscribe", "StatusEvent", STATUS_TYPE),
    }
    for key, (operation, model, type_) in expected.items():
        message = _resolve(doc, doc["channels"][key][operation]["message"]["$ref"])
        assert message["contentType"] == "application/json"
        assert message["payload"] == {"$ref": f"#/components/schemas/{model}"}
        assert message["bindings"]["amqp"]["messageType"] == type_
        assert message["x-amqp-properties"]["type"] == type_
        assert message["x-amqp-properties"]["delivery_mode"] == 2
        assert "message_id" in message["x-amqp-properties"]
        assert doc["channels"][key][operation]["bindings"]["amqp"]["deliveryMode"] == 2
    status = _resolve(doc, doc["channels"]["status.{status}"]["parameters"]["status"]["$ref"])
    assert status["schema"]["enum"] == list(get_args(Status))


def test_asyncapi_components_and_refs(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for model in ("JsonApiWebhook", "CompactWebhook", "JsonApiReceipt", "CompactReceipt"):
        assert model in schemas
    for hoisted in ("MediaItem", "MessageData", "MessageAttributes", "ReceiptAttributes"):
        assert hoisted in schemas
    text = orjson.dumps(doc).decode()
    assert "$defs" not in text
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert _resolve(doc, ref) is not None, ref


# --- models against the fixtures -------------------------------------------------------------


@pytest.mark.parametrize("path", INBOUND_FIXTURES, ids=lambda p: p.name)
def test_inbound_fixture_validates(path: Path) -> None:
    payload = _load(path)
    model: type[BaseModel] = JsonApiWebhook if "data" in payload else CompactWebhook
    parsed = model.model_validate(payload)
    if isinstance(parsed, JsonApiWebhook):
        assert parsed.data.id.startswith("mdr2-")
        assert parsed.data.attributes.from_
    else:
        assert isinstance(parsed, CompactWebhook)
        assert parsed.id.startswith("mdr2-")
        assert parsed.from_


@pytest.mark.parametrize("path", RECEIPT_FIXTURES, ids=lambda p: p.name)
def test_receipt_fixture_validates(path: Path) -> None:
    payload = _load(path)
    model: type[BaseModel] = JsonApiReceipt if "data" in payload else CompactReceipt
    parsed = model.model_validate(payload)
    data = parsed.data if isinstance(parsed, JsonApiReceipt) else parsed
    assert isinstance(data, ReceiptData)
    assert data.type == "delivery_receipt"
    assert data.id.startswith("mdr2-")


def test_fixtures_exist() -> None:
    assert len(INBOUND_FIXTURES) >= 3
    assert len(RECEIPT_FIXTURES) >= 2


# --- OutboundRequest rules -------------------------------------------------------------------

VALID: dict[str, Any] = {"id": "req-1", "to": "+12065550142", "from": "+12025551234", "body": "hi"}


@pytest.mark.parametrize(
    "request_",
    [
        VALID,
        {**VALID, "id": "x" * 128},
        {"id": "req-2", "to": "12065550142", "extension": "100", "body": "hi"},
        {"id": "req-3", "to": "12065550142", "extension": "100", "media_urls": ["https://x/a.png"]},
    ],
)
def test_outbound_request_accepts(request_: dict[str, Any]) -> None:
    OutboundRequest.model_validate(request_)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"id": "r", "to": "12065550142", "body": "hi"}, "'from' and 'extension'"),
        ({"id": "r", "to": "12065550142", "from": "12025551234"}, "'body' is required"),
        ({**VALID, "body": "", "media_urls": []}, "'body' is required"),
        ({**VALID, "media_urls": ["ftp://files.example.com/a.png"]}, "http(s)"),
        ({**VALID, "media_urls": ["file:///etc/passwd"]}, "http(s)"),
        ({**VALID, "id": "x" * 129}, "at most 128"),
        ({**VALID, "id": ""}, "at least 1"),
    ],
)
def test_outbound_request_rejects(request_: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        OutboundRequest.model_validate(request_)
