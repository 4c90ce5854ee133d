"""The command line as a user drives it: `python -m smsbridge.cli ...` as a subprocess, against
real RabbitMQ, a real ledger and the sandbox over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from schemas.messages import InboundMessage
from smsbridge.cli import parser
from smsbridge.config import Config, parse_config
from smsbridge.sandbox import Sandbox
from tests.harness import bridge, free_port, listen, webhook_url
from tests.procs import ROOT as ROOT_DIR

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005050201a5e2f2f40000000049454e44ae426082"
)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smsbridge.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT_DIR,
        timeout=timeout,
    )


def config_text(
    amqp_url: str,
    api_url: str,
    media: Path,
    *,
    ledger_url: str | None = None,
    port: int | None = None,
    public_url: str | None = None,
    dlr_secret: bool = True,
    prefixes: tuple[str, ...] = ("flowrouteinbound",),
    secret_key: str = "sandbox-secret",
) -> str:
    port = port or free_port()
    ledger = f'[ledger]\nurl = "{ledger_url}"\n' if ledger_url else ""
    numbers = "".join(
        f"""
[[numbers]]
number = "+1202555123{i}"
provider = "flowroute"
url_prefix = "{prefix}"
source = ["10{i}"]
destination = "10{i}"
"""
        for i, prefix in enumerate(prefixes)
    )
    return f"""
[broker]
url = "{amqp_url}"
{ledger}
[gateway]
listen = "127.0.0.1:{port}"
public_url = "{public_url or f"http://127.0.0.1:{port}"}"
{'dlr_secret = "cli-test-dlr-secret-0123456789"' if dlr_secret else ""}

[media]
dir = "{media}"
allow_networks = ["127.0.0.1/32"]
allow_any_port = true

[[providers]]
name = "flowroute"
api_url = "{api_url}"
access_key = "sandbox-access"
secret_key = "{secret_key}"
{numbers}"""


def write(tmp_path: Path, text: str, name: str = "smsbridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- help and global options -------------------------------------------------------------------


def _subcommands(top: object) -> list[tuple[str, object]]:
    import argparse

    found: list[tuple[str, object]] = []

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), child))
                    walk(f"{prefix} {name}", child)

    walk("", top)  # type: ignore[arg-type]
    return found


def test_every_command_and_option_has_help_and_every_command_an_example() -> None:
    import argparse

    commands = _subcommands(parser())
    assert len(commands) >= 20
    for name, command in commands:
        assert isinstance(command, argparse.ArgumentParser)
        actions = [a for a in command._actions if not isinstance(a, argparse._SubParsersAction)]
        for action in actions:
            assert action.help, f"`smsbridge {name}` {action.option_strings or action.dest}"
        has_children = any(isinstance(a, argparse._SubParsersAction) for a in command._actions)
        if not has_children or name == "sandbox":
            assert command.epilog and "example:" in command.epilog, name


def test_global_options_go_before_or_after_the_command(tmp_path: Path) -> None:
    path = write(
        tmp_path, config_text("amqp://guest:guest@127.0.0.1/", "http://127.0.0.1:9/v2.2", tmp_path)
    )
    before = cli("--config", str(path), "config", "check")
    after = cli("config", "check", "--config", str(path))
    middle = cli("config", "--config", str(path), "check")
    assert before.returncode == after.returncode == middle.returncode == 0, after.stderr
    assert before.stdout == after.stdout == middle.stdout
    assert "+12025551230" in after.stdout


def test_exit_status_2_for_a_bad_configuration_or_a_missing_section(tmp_path: Path) -> None:
    bad = write(tmp_path, "[gateway]\nlisten = 'nowhere'\n", "bad.toml")
    assert cli("run", "--config", str(bad)).returncode == 2
    good = write(
        tmp_path, config_text("amqp://guest:guest@127.0.0.1/", "http://127.0.0.1:9/v2.2", tmp_path)
    )
    missing = cli("history", "--config", str(good))
    assert missing.returncode == 2 and "[ledger]" in missing.stderr
    assert cli("no-such-command").returncode == 2


# -- the sandbox, send and tail --------------------------------------------------------------


async def test_sandbox_post_mms_uploads_the_users_own_file(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    photo = tmp_path / "storefront.png"
    photo.write_bytes(PNG)
    config = parse_config(config_text(amqp_url, sandbox.api_url, tmp_path / "media"), env={})
    async with bridge(config, workers=("resolver", "media")), listen(amqp_url) as events:
        done = await asyncio.to_thread(
            cli,
            "sandbox",
            "post",
            "mms",
            "--sandbox",
            sandbox.url,
            "--gateway",
            webhook_url(config),
            "--to",
            "12025551230",
            "--body",
            "Is this the entrance?",
            "--media",
            str(photo),
            "menu.pdf",
        )
        assert done.returncode == 0, done.stderr
        key, event = await events.next_json(20)
    message = InboundMessage.model_validate(event)
    assert key == "inbound.100"
    first, second = message.media
    assert first.file_name == "storefront.png" and first.content_type == "image/png"
    assert first.sha256 == hashlib.sha256(PNG).hexdigest() and first.size == len(PNG)
    assert second.file_name == "menu.pdf" and second.content_type == "application/pdf"


async def test_send_and_tail_as_a_pbx_service(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    path = write(tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path / "media"))
    config = parse_config(path.read_text(), env={})
    async with bridge(config, workers=("outbound",)):
        tail = asyncio.create_task(
            asyncio.to_thread(cli, "tail", "status.sent", "--count", "1", "--config", str(path))
        )
        await asyncio.sleep(2)  # tail is bound
        sent = await asyncio.to_thread(
            cli,
            "send",
            "--extension",
            "100",
            "--to",
            "+12065550142",
            "--body",
            "hi",
            "--config",
            str(path),
        )
        assert sent.returncode == 0, sent.stderr
        request_id = sent.stdout.strip()
        tailed = await tail
    assert tailed.returncode == 0, tailed.stderr
    line = orjson.loads(tailed.stdout.splitlines()[0])
    assert line["routing_key"] == "status.sent" and line["message"]["id"] == request_id


# -- flowroute setup ---------------------------------------------------------------------------


async def test_flowroute_setup_points_the_callbacks_at_the_gateway(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    public = "https://pbx.example.com"
    path = write(tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path, public_url=public))
    dry = await asyncio.to_thread(cli, "flowroute", "setup", "--dry-run", "--config", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "would set the sms callback to https://pbx.example.com/flowrouteinbound" in dry.stdout
    assert sandbox.callbacks("sandbox-access") == {"sms": None, "mms": None, "dlr": None}
    done = await asyncio.to_thread(cli, "flowroute", "setup", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "sms callback set to https://pbx.example.com/flowrouteinbound" in done.stdout
    assert sandbox.callbacks("sandbox-access") == {
        "sms": f"{public}/flowrouteinbound",
        "mms": f"{public}/flowrouteinbound",
        "dlr": None,
    }


async def test_flowroute_setup_refuses_bad_keys_and_two_prefixes(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    wrong = write(
        tmp_path,
        config_text(amqp_url, sandbox.api_url, tmp_path, secret_key="rotated"),
        "wrong.toml",
    )
    refused = await asyncio.to_thread(cli, "flowroute", "setup", "--config", str(wrong))
    assert refused.returncode == 1 and "not set up" in refused.stderr
    two = write(
        tmp_path,
        config_text(amqp_url, sandbox.api_url, tmp_path, prefixes=("a", "b")),
        "two.toml",
    )
    split = await asyncio.to_thread(cli, "flowroute", "setup", "--config", str(two))
    assert split.returncode == 1 and "2 url_prefix values" in split.stderr
    assert sandbox.callbacks("sandbox-access")["sms"] is None


# -- doctor ------------------------------------------------------------------------------------


async def test_doctor_passes_a_sound_deployment(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    path = write(
        tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path / "media", ledger_url=ledger_url)
    )
    config = parse_config(path.read_text(), env={})
    async with bridge(config, gateway=False, workers=("resolver",)):  # declares the topology
        done = await asyncio.to_thread(cli, "doctor", "--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("broker", "topology", "clock", "ledger", "keys flowroute", "dlr_secret", "media"):
        assert any(re.match(rf"ok\s+{name}:", line) for line in lines), (name, done.stdout)
    assert any(line.startswith("warn public_url") for line in lines), "http on loopback"


async def test_doctor_fails_with_a_fix_for_each_problem(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    text = config_text(
        amqp_url,
        sandbox.api_url,
        tmp_path / "media",
        ledger_url="postgresql://postgres@127.0.0.1:9/none",
        public_url="http://pbx.example.com",
        dlr_secret=False,
        secret_key="rotated",
    ).replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')
    path = write(tmp_path, text)
    done = await asyncio.to_thread(cli, "doctor", "--config", str(path))
    assert done.returncode == 1
    failed = {
        line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("FAIL")
    }
    assert {"ledger", "keys", "public_url", "allow_ips", "dlr_secret"} <= failed, done.stdout
    assert done.stdout.count("fix:") >= 5
    assert "rotated" not in done.stdout + done.stderr


# -- the ledger's commands ---------------------------------------------------------------------


async def test_db_migrate_history_and_optout_commands(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, ledger_url: str
) -> None:
    path = write(
        tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path / "media", ledger_url=ledger_url)
    )
    first = await asyncio.to_thread(cli, "db", "migrate", "--config", str(path))
    assert first.returncode == 0 and "applied 0001_messages" in first.stderr, first.stderr
    again = await asyncio.to_thread(cli, "db", "migrate", "--config", str(path))
    assert again.returncode == 0 and "(0 applied now)" in again.stderr

    config: Config = parse_config(path.read_text(), env={})
    async with bridge(config, workers=("resolver", "media")):
        result = await sandbox.post_inbound(webhook_url(config), to="12025551230", body="Hi there")
        assert result.status == 200
        await asyncio.sleep(2)
    one = await asyncio.to_thread(cli, "history", result.message_id, "--config", str(path))
    assert one.returncode == 0, one.stderr
    shown = orjson.loads(one.stdout)
    assert shown["body"] == "Hi there" and [e["status"] for e in shown["events"]] == [
        "received",
        "delivered_to_pbx",
    ]
    found = await asyncio.to_thread(
        cli, "history", "--number", "+12065550142", "--config", str(path)
    )
    assert [orjson.loads(x)["id"] for x in found.stdout.splitlines()] == [result.message_id]
    missing = await asyncio.to_thread(cli, "history", "mdr2-nothing", "--config", str(path))
    assert missing.returncode == 1

    add = await asyncio.to_thread(
        cli, "optout", "add", "+12025551230", "+12065550142", "--config", str(path)
    )
    assert add.returncode == 0, add.stderr
    listed = await asyncio.to_thread(cli, "optout", "list", "--config", str(path))
    [entry] = [orjson.loads(x) for x in listed.stdout.splitlines()]
    assert (entry["recipient"], entry["by"]) == ("+12065550142", "cli")
    removed = await asyncio.to_thread(
        cli, "optout", "remove", "+12025551230", "+12065550142", "--config", str(path)
    )
    assert removed.returncode == 0
    again_removed = await asyncio.to_thread(
        cli, "optout", "remove", "+12025551230", "+12065550142", "--config", str(path)
    )
    assert again_removed.returncode == 1, "nothing to remove"
    sweep = await asyncio.to_thread(cli, "db", "sweep", "--config", str(path))
    assert sweep.returncode == 0 and "0 rows older than" in sweep.stderr


@pytest.mark.parametrize("stage", ["outbound"])
async def test_parked_requeue_all_is_quiet_off_a_terminal(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox, stage: str
) -> None:
    path = write(tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path / "media"))
    listed = await asyncio.to_thread(cli, "parked", "list", stage, "--config", str(path))
    assert listed.returncode == 0 and "0 parked" in listed.stderr
    requeued = await asyncio.to_thread(
        cli, "parked", "requeue", stage, "--all", "--config", str(path)
    )
    assert requeued.returncode == 0
    assert requeued.stderr.strip() == f"0 re-queued in smsbridge.parked.{stage}", "no bar"


async def test_parked_requeue_says_what_it_left_parked_and_exits_1(
    amqp_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """A message whose way back no longer leads anywhere stays parked; the command names it
    and its reason, requeues the others, and exits 1 so a script notices."""
    from smsbridge import topology
    from tests.console_harness import park

    path = write(tmp_path, config_text(amqp_url, sandbox.api_url, tmp_path / "media"))
    await park(amqp_url, "inbound", {"id": "ok"}, "ok", "invalid")
    await park(
        amqp_url, "inbound", {"id": "lost"}, "lost", "x", original=(topology.INTERNAL, "gone")
    )
    requeued = await asyncio.to_thread(
        cli, "parked", "requeue", "inbound", "--all", "--config", str(path)
    )
    assert requeued.returncode == 1, requeued.stderr
    assert [orjson.loads(line)["message_id"] for line in requeued.stdout.splitlines()] == ["ok"]
    assert "not re-queued, still parked: lost:" in requeued.stderr
    assert "unroutable" in requeued.stderr
