"""Logging: JSON lines on stdout, and no credential in any of them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from smsbridge import logs

BROKER_PASSWORD = "hunter2-amqp"
BASIC = "Basic dXNlcjpwYXNz"
BASIC_TOKEN = "dXNlcjpwYXNz"
SECRET_KEY = "sk-live-4f5e6d7c8b9a"
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.payload.sig"
SECRETS = (BROKER_PASSWORD, BASIC_TOKEN, SECRET_KEY, BEARER_TOKEN)


def _configure(level: str, fmt: str) -> Iterator[None]:
    # structlog caches bound loggers on first use: start from a clean slate, and put back
    # what tests/conftest.py set up afterwards.
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    structlog.reset_defaults()
    logs.configure(level, fmt)
    try:
        yield
    finally:
        structlog.reset_defaults()
        logs.configure("warning", "json")
        # configure() bound a handler to this test's captured stdout: put back the old ones
        root.handlers[:] = handlers
        root.setLevel(root_level)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    capsys.readouterr()
    yield from _configure("info", "json")


@pytest.fixture
def console_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    capsys.readouterr()
    yield from _configure("info", "console")


def json_lines(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, Any]]]:
    out = capsys.readouterr().out
    return out, [json.loads(line) for line in out.splitlines() if line.strip()]


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_json_lines_have_level_timestamp_and_event(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.get_logger("test").info("webhook accepted", message_id="mdr2-abc")

    _, lines = json_lines(capsys)
    (line,) = lines
    assert line["event"] == "webhook accepted"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")
    assert line["message_id"] == "mdr2-abc"


def test_level_filters_lower_levels(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.get_logger("test")
    log.debug("hidden")
    log.warning("shown")

    _, lines = json_lines(capsys)
    assert [line["event"] for line in lines] == ["shown"]


def test_url_password_is_masked(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"amqp://bridge:{BROKER_PASSWORD}@rabbit.internal:5672/pbx"
    logs.get_logger("test").info("connecting", url=url)

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert line["url"] == f"amqp://bridge:{logs.MASK}@rabbit.internal:5672/pbx"


def test_url_password_in_the_event_text_is_masked(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.get_logger("test").info(f"connecting to amqp://bridge:{BROKER_PASSWORD}@rabbit/")

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert "rabbit" in line["event"]


def test_authorization_header_dict_is_masked(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = {"Authorization": BASIC, "Content-Type": "application/vnd.api+json"}
    logs.get_logger("test").info("request", headers=headers, authorization=BASIC)

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert line["headers"]["Authorization"] == logs.MASK
    assert line["headers"]["Content-Type"] == "application/vnd.api+json"
    assert line["authorization"] == logs.MASK


def test_secret_key_kwargs_are_masked(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.get_logger("test").info(
        "provider", secret_key=SECRET_KEY, access_key=SECRET_KEY, token=BEARER_TOKEN, name="fr"
    )

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert line["secret_key"] == logs.MASK
    assert line["access_key"] == logs.MASK
    assert line["token"] == logs.MASK
    assert line["name"] == "fr"


def test_nested_secrets_are_masked(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.get_logger("test").info(
        "nested",
        provider={"name": "fr", "credentials": {"secret_key": SECRET_KEY}},
        attempts=[{"header": f"Bearer {BEARER_TOKEN}"}],
    )

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert line["provider"]["name"] == "fr"


def test_exception_message_with_basic_auth_is_masked(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logs.get_logger("test")
    try:
        raise RuntimeError(f"401 from Flowroute, sent Authorization: {BASIC}")
    except RuntimeError:
        log.exception("send failed")

    out, (line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert line["level"] == "error"
    assert line["event"] == "send failed"
    assert "RuntimeError" in json.dumps(line["exception"])


def test_chained_exception_with_url_password_is_masked(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logs.get_logger("test")
    try:
        try:
            raise ConnectionError(f"amqp://bridge:{BROKER_PASSWORD}@rabbit/ refused")
        except ConnectionError as exc:
            raise RuntimeError("broker unavailable") from exc
    except RuntimeError:
        log.exception("connect failed")

    out, (_line,) = json_lines(capsys)
    assert_no_secrets(out)
    assert "ConnectionError" in out


def test_exception_locals_are_not_logged(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def send(secret: str) -> None:
        raise RuntimeError("boom")

    try:
        send(SECRET_KEY)
    except RuntimeError:
        logs.get_logger("test").exception("failed")

    out, _ = json_lines(capsys)
    assert_no_secrets(out)


def test_stdlib_log_records_are_json_and_masked(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # the stdlib handler binds sys.stdout when configured: configure again inside the test,
    # where sys.stdout is the capture that capsys reads
    logs.configure("info", "json")
    stdlib = logging.getLogger("aiohttp.client")
    stdlib.warning("retrying amqp://bridge:%s@rabbit/", BROKER_PASSWORD)
    try:
        raise OSError(f"proxy said {BASIC}")
    except OSError:
        stdlib.exception("request failed")

    out, lines = json_lines(capsys)
    assert_no_secrets(out)
    assert [line["level"] for line in lines] == ["warning", "error"]
    assert all("timestamp" in line and "event" in line for line in lines)


def test_context_vars_are_merged(json_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    with structlog.contextvars.bound_contextvars(message_id="mdr2-ctx"):
        logs.get_logger("test").info("with context")

    _, (line,) = json_lines(capsys)
    assert line["message_id"] == "mdr2-ctx"


def test_mask_secrets_processor_directly() -> None:
    event = {
        "event": f"Bearer {BEARER_TOKEN}",
        "password": "x",
        "dsn": f"postgres://u:{BROKER_PASSWORD}@db/app",
        "count": 3,
        "items": (f"{BASIC}", "plain"),
    }
    out = logs.mask_secrets(None, "info", event)
    assert_no_secrets(json.dumps(out))
    assert out["password"] == logs.MASK
    assert out["count"] == 3
    assert out["items"][1] == "plain"


def test_console_format_masks_fields(
    console_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.get_logger("test").info("connecting", url=f"amqp://u:{BROKER_PASSWORD}@h/", token="t")
    assert_no_secrets(capsys.readouterr().out)


def test_console_format_masks_exception_messages(
    console_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise RuntimeError(f"401 from Flowroute, sent Authorization: {BASIC}")
    except RuntimeError:
        logs.get_logger("test").exception("send failed")
    assert_no_secrets(capsys.readouterr().out)


ODD_TOKEN = "odd token! #with spaces, ünïcode 'quotes' \\ (and) end"


def test_configured_secrets_are_masked_literally_whatever_their_characters(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret with characters no pattern expects (spaces, '!', '#', quotes, non-ASCII) is
    masked whole: as is, and as a repr or JSON string shows it (e.g. in a traceback)."""
    logs.mask_literally(ODD_TOKEN)
    log = logs.get_logger("test")
    header = f"Authorization: Bearer {ODD_TOKEN}"
    log.info(header, header=header, nested={"attempts": [header]})
    try:
        raise ValueError(f"Invalid header value char: {header.encode()!r}")
    except ValueError:
        log.exception("bad request")

    out, lines = json_lines(capsys)
    assert len(lines) == 2
    text = json.dumps(lines, ensure_ascii=False)
    for shown in (ODD_TOKEN, repr(ODD_TOKEN)[1:-1], repr(ODD_TOKEN.encode())[2:-1]):
        assert shown not in text
    for part in ("odd token", "#with spaces", "ünïcode", "xc3\\\\xbcn\\\\xc3\\\\xafcode"):
        assert part not in text and part not in out
    assert logs.MASK in lines[0]["event"] and logs.MASK in lines[0]["nested"]["attempts"][0]


def test_stdlib_lines_mask_configured_secrets_literally(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("info", "json")  # bind the stdlib handler to this test's captured stdout
    logs.mask_literally(ODD_TOKEN)
    logging.getLogger("aiohttp.server").warning("bad request line: %r", f"Bearer {ODD_TOKEN}")
    out, (line,) = json_lines(capsys)
    assert "odd token" not in out and "#with spaces" not in out
    assert logs.MASK in line["event"]


def test_every_secret_of_a_configuration_is_masked_literally(
    json_logs: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.console_harness import console_config

    config = console_config(
        "amqp://guest:guest@127.0.0.1:5672/",
        "postgresql://app:long-db-password@127.0.0.1/db",
        tmp_path,
    )
    assert config.console is not None
    token = "console token with spaces and #hash 42"
    console = config.console.model_copy(update={"token": SecretStr(token)})
    config = config.model_copy(update={"console": console})
    logs.mask_configured(config)
    secrets = (
        token,
        "long-db-password",
        config.providers[0].secret_key.get_secret_value(),
        "test-dlr-secret-0123456789",
    )
    logs.get_logger("test").info(f"saw {' and '.join(secrets)}", where="in a message text")
    out, _ = json_lines(capsys)
    for secret in secrets:
        assert secret not in out
