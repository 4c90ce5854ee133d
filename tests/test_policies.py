"""Per-number policies end to end: opt-out keywords, countries, segments, smart quotes and
quiet hours, with real RabbitMQ, a real ledger (PostgreSQL) and the sandbox over HTTP.

Main line (+12025551234, extension 100) has policy `us-a2p` (keywords, US/CA only, at most
3 segments, smart quotes replaced); Night line (+18335550111, extension 200) has policy
`night` (quiet hours 21:00-08:00 in New York).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
import pytest

from schemas.messages import InboundMessage, PolicyEvent, StatusEvent
from smsbridge import clock, topology
from smsbridge.broker import Broker
from smsbridge.config import Config, ConfigError, parse_config
from smsbridge.flowroute.webhook import InboundSms
from smsbridge.ledger.connection import Ledger
from smsbridge.ops import send
from smsbridge.sandbox import AccountSpec, Sandbox
from tests.harness import Listener, bridge, drain, free_port, listen, webhook_url
from workers.keywords import KeywordActions

OPT_OUT_REPLY = "You are unsubscribed from Example Co. Reply START to resubscribe."
OPT_IN_REPLY = "Welcome back to Example Co. Reply STOP to unsubscribe."
HELP_REPLY = "Example Co. support: 202-555-0100. Reply STOP to unsubscribe."
CUSTOMER = "+12065550142"
NEW_YORK = ZoneInfo("America/New_York")


def policy_config(
    amqp_url: str, ledger_url: str, media: Path, api_url: str, outbound: str = ""
) -> Config:
    port = free_port()
    return parse_config(
        f"""
[broker]
url = "{amqp_url}"

[ledger]
url = "{ledger_url}"

[gateway]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
dlr_secret = "test-dlr-secret-0123456789"

[media]
dir = "{media}"

[outbound]
retry_delays = [0.5, 1.0]
{outbound}

[[providers]]
name = "flowroute"
api_url = "{api_url}"
access_key = "sandbox-access"
secret_key = "sandbox-secret"
sms_per_second = 20

[[policies]]
name = "us-a2p"
opt_out = true
opt_out_reply = "{OPT_OUT_REPLY}"
opt_in_reply = "{OPT_IN_REPLY}"
help_reply = "{HELP_REPLY}"
allowed_countries = ["US", "CA"]
max_segments = 3
smart_quotes = "replace"

[[policies]]
name = "night"
quiet_hours = {{ start = "21:00", end = "08:00", timezone = "America/New_York" }}

[[numbers]]
name = "Main line"
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100"]
destination = "100"
policy = "us-a2p"

[[numbers]]
name = "Night line"
number = "+18335550111"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["200"]
destination = "200"
policy = "night"
""",
        env={},
    )


@pytest.fixture
def config(amqp_url: str, ledger_url: str, tmp_path: Path, sandbox: Sandbox) -> Config:
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    return policy_config(amqp_url, ledger_url, tmp_path / "media", sandbox.api_url)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Listener]:
    amqp = config.broker.addresses()[0]
    async with bridge(config, workers=("resolver", "media", "outbound")), listen(amqp) as events:
        yield events


async def until(events: Listener, predicate: Any, timeout: float = 20) -> list[tuple[str, Any]]:
    """Events (routing key, body) up to and including the first that matches."""
    seen = []
    while True:
        key, event = await events.next_json(timeout)
        seen.append((key, event))
        if predicate(key, event):
            return seen


def replies(sandbox: Sandbox, body: str) -> list[Any]:
    return [m for m in sandbox.messages if m.attributes.get("body") == body]


async def text_us(
    sandbox: Sandbox, config: Config, body: str, message_id: str | None = None
) -> str:
    mid = message_id or f"mdr2-{uuid.uuid4().hex}"
    result = await sandbox.post_inbound(
        webhook_url(config), body=body, from_=CUSTOMER.lstrip("+"), message_id=mid
    )
    assert result.status == 200
    return mid


async def request(config: Config, body: str, to: str = CUSTOMER, extension: str = "100") -> str:
    request_id = f"req-{uuid.uuid4().hex[:10]}"
    await send(
        config.broker.addresses(),
        {"id": request_id, "to": to, "extension": extension, "body": body},
    )
    return request_id


async def ledger_status(config: Config, request_id: str) -> str:
    assert config.ledger is not None
    conn = await asyncpg.connect(config.ledger.url.get_secret_value())
    try:
        return str(await conn.fetchval("SELECT status FROM messages WHERE id = $1", request_id))
    finally:
        await conn.close()


async def test_stop_opts_out_replies_once_and_blocks_later_sends(
    config: Config, sandbox: Sandbox
) -> None:
    async with running(config) as events:
        mid = await text_us(sandbox, config, "Stop.")
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == f"auto-{mid}")
        inbound = [InboundMessage.model_validate(e) for k, e in seen if k == "inbound.100"]
        assert [(m.id, m.keyword) for m in inbound] == [(mid, "stop")]
        [opted] = [PolicyEvent.model_validate(e) for k, e in seen if k == "policy.opted_out"]
        assert (opted.number, opted.recipient, opted.keyword) == ("+12025551234", CUSTOMER, "stop")
        [reply] = replies(sandbox, OPT_OUT_REPLY)
        assert reply.attributes["to"] == CUSTOMER.lstrip("+")
        assert reply.attributes["from"] == "12025551234"

        # Flowroute resends the same STOP: no second reply, no second InboundMessage.
        await text_us(sandbox, config, "Stop.", message_id=mid)
        blocked = await request(config, "Your appointment is tomorrow")
        failed = await until(events, lambda k, e: e.get("id") == blocked)
        key, event = failed[-1]
        assert key == "status.failed"
        assert "us-a2p" in event["reason"] and "opted out" in event["reason"]
        extra = await events.quiet(1.0)
    assert len(replies(sandbox, OPT_OUT_REPLY)) == 1
    assert not [m for m in extra if m.routing_key == "inbound.100"]
    assert not replies(sandbox, "Your appointment is tomorrow"), "nothing sent to an opt-out"
    assert await ledger_status(config, blocked) == "blocked"


async def test_start_opts_back_in_and_sending_works_again(config: Config, sandbox: Sandbox) -> None:
    async with running(config) as events:
        stop = await text_us(sandbox, config, "STOP")
        await until(events, lambda k, e: k == "status.sent" and e["id"] == f"auto-{stop}")
        start = await text_us(sandbox, config, "ＳＴＡＲＴ")  # full-width letters count
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == f"auto-{start}")
        assert [e["keyword"] for k, e in seen if k == "policy.opted_in"] == ["start"]
        assert [e["keyword"] for k, e in seen if k == "inbound.100"] == ["start"]
        sent = await request(config, "Welcome back!")
        await until(events, lambda k, e: k == "status.sent" and e["id"] == sent)
    assert len(replies(sandbox, OPT_IN_REPLY)) == 1
    assert len(replies(sandbox, "Welcome back!")) == 1


async def test_help_gets_the_help_reply_and_stays_subscribed(
    config: Config, sandbox: Sandbox
) -> None:
    async with running(config) as events:
        mid = await text_us(sandbox, config, " help ")
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == f"auto-{mid}")
        assert not [k for k, _ in seen if k.startswith("policy.")]
        sent = await request(config, "Still here")
        await until(events, lambda k, e: k == "status.sent" and e["id"] == sent)
    assert len(replies(sandbox, HELP_REPLY)) == 1


async def test_a_keyword_inside_a_sentence_is_conversation(
    config: Config, sandbox: Sandbox
) -> None:
    async with running(config) as events:
        mid = await text_us(sandbox, config, "stop please")
        seen = await until(events, lambda k, e: k == "inbound.100")
        assert InboundMessage.model_validate(seen[-1][1]).keyword is None
        sent = await request(config, "Sure, no problem")
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == sent)
        assert not [k for k, _ in seen if k.startswith("policy.")]
    assert [m.attributes["body"] for m in sandbox.messages] == ["Sure, no problem"], mid


async def test_a_country_not_allowed_is_blocked_not_parked(
    config: Config, sandbox: Sandbox
) -> None:
    async with running(config) as events:
        blocked = await request(config, "Hello London", to="+442071838750")
        canada = await request(config, "Hello Toronto", to="+14165550123")
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == canada)
        [(key, event)] = [(k, e) for k, e in seen if e.get("id") == blocked]
        assert key == "status.failed"
        assert "destination country GB is not allowed" in event["reason"]
    assert not replies(sandbox, "Hello London")
    assert await ledger_status(config, blocked) == "blocked"
    async with listen(config.broker.addresses()[0], queue="smsbridge.parked.outbound") as parked:
        assert await parked.quiet(0.5) == []


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("a" * 150 + "€" * 5, 1),  # 160 septets: the extension table takes two each
        ("a" * 151 + "€" * 5, 2),  # 161
        ("a" * 68 + "😀", 1),  # UCS-2: 70 code units, the emoji is a surrogate pair
        ("a" * 69 + "😀", 2),  # 71
        ("a" * 66 + "😀" + "a" * 67, 3),  # the pair would straddle 67: it moves to part 2
    ],
)
async def test_segments_are_counted_like_carriers_do(
    config: Config, sandbox: Sandbox, body: str, segments: int
) -> None:
    async with running(config) as events:
        sent = await request(config, body)
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == sent)
        event = StatusEvent.model_validate(seen[-1][1])
        delivered = await until(events, lambda k, e: k == "status.delivered" and e["id"] == sent)
    assert event.segments == segments
    assert delivered[-1][1]["segments"] == segments, "receipts carry it too"


async def test_too_many_segments_are_blocked_and_smart_quotes_are_replaced(
    config: Config, sandbox: Sandbox
) -> None:
    typographic = "“Your code,” she said — “is ready”… " + "a" * 130  # 3 UCS-2 segments
    async with running(config) as events:
        long = await request(config, "b" * 500)  # 4 segments > max_segments 3
        quoted = await request(config, typographic)
        seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == quoted)
        failed = [e for k, e in seen if k == "status.failed" and e["id"] == long]
    assert failed and "4 segments, over max_segments 3" in failed[0]["reason"]
    [message] = [m for m in sandbox.messages if m.attributes["body"].startswith('"Your code')]
    assert message.attributes["body"].startswith('"Your code," she said - "is ready"...')
    assert seen[-1][1]["segments"] == 2  # GSM-7 after the replacement (UCS-2 would be 3)


async def test_quiet_hours_hold_a_request_until_they_end_across_a_dst_change(
    config: Config, sandbox: Sandbox
) -> None:
    """8 March 2026, New York springs forward at 02:00: quiet hours (21:00-08:00) end at
    08:00 EDT, which is 12:00 UTC (13:00 UTC the day before)."""
    clock.travel(datetime(2026, 3, 8, 7, 59, 54, tzinfo=NEW_YORK))
    try:
        async with running(config) as events:
            held = await request(config, "Good morning", extension="200")
            seen = await until(events, lambda k, e: e.get("id") == held)
            progress = seen[-1]
            assert progress[0] == "status.progress" and progress[1]["reason"] == "quiet hours"
            assert not replies(sandbox, "Good morning")
            sent = await until(
                events, lambda k, e: k == "status.sent" and e["id"] == held, timeout=40
            )
            sent_at = clock.now().astimezone(NEW_YORK)
            repeats = [e for k, e in sent if k == "status.progress" and e["id"] == held]
    finally:
        clock.travel(None)
    assert sent_at.hour == 8 and sent_at.minute < 2, f"sent at {sent_at} New York time"
    assert repeats == [], "the PBX is told once that it waits"


async def test_a_wait_for_quiet_hours_does_not_use_up_the_retry_window(
    amqp_url: str, ledger_url: str, tmp_path: Path, sandbox: Sandbox
) -> None:
    """Held 5 s by quiet hours with `max_age_seconds` 3, the request's first round of
    attempts fails (503): it is retried, not failed as too old. Time spent waiting for
    quiet hours is not time spent failing."""
    sandbox.set_account(AccountSpec("sandbox-access", "sandbox-secret", sms_per_second=20))
    config = policy_config(
        amqp_url, ledger_url, tmp_path / "media", sandbox.api_url, "max_age_seconds = 3"
    )
    assert config.outbound.in_process_attempts == 3
    clock.travel(datetime(2026, 11, 2, 7, 59, 55, tzinfo=NEW_YORK))
    try:
        async with running(config) as events:
            sandbox.set_fault(503, count=3)  # the whole first round after the night
            held = await request(config, "Morning!", extension="200")
            seen = await until(
                events,
                lambda k, e: e.get("id") == held and k in ("status.sent", "status.failed"),
                timeout=40,
            )
    finally:
        clock.travel(None)
    assert seen[-1][0] == "status.sent", seen[-1]
    assert len(replies(sandbox, "Morning!")) == 1


async def test_outside_quiet_hours_a_request_goes_at_once(config: Config, sandbox: Sandbox) -> None:
    clock.travel(datetime(2026, 11, 1, 12, 0, tzinfo=NEW_YORK))
    try:
        async with running(config) as events:
            sent = await request(config, "Lunch?", extension="200")
            seen = await until(events, lambda k, e: k == "status.sent" and e["id"] == sent)
    finally:
        clock.travel(None)
    assert not [k for k, e in seen if k == "status.progress" and e["id"] == sent]


async def test_an_opt_out_survives_a_restart(config: Config, sandbox: Sandbox) -> None:
    async with running(config) as events:
        mid = await text_us(sandbox, config, "UNSUBSCRIBE")
        await until(events, lambda k, e: k == "status.sent" and e["id"] == f"auto-{mid}")
    await asyncio.sleep(0.5)
    async with running(config) as events:  # a new process: only the ledger remembers
        blocked = await request(config, "Are you there?")
        seen = await until(events, lambda k, e: e.get("id") == blocked)
    assert seen[-1][0] == "status.failed" and "opted out" in seen[-1][1]["reason"]


# -- keywords: stale changes, redeliveries, short codes, the word texted ---------------------
# Without the outbound worker, a keyword's reply stays in the outbound queue: what was asked
# for is there to count once the InboundMessage (published after the reply) is seen.


@asynccontextmanager
async def resolving(config: Config) -> AsyncIterator[Listener]:
    amqp = config.broker.addresses()[0]
    async with bridge(config, workers=("resolver",)), listen(amqp) as events:
        yield events


async def text_us_at(
    sandbox: Sandbox, config: Config, body: str, at: datetime, from_: str = CUSTOMER
) -> str:
    """A keyword message that Flowroute says was texted at `at`."""
    inbound = sandbox.build_inbound(webhook_url(config), body=body, from_=from_.lstrip("+"))
    inbound.payload["data"]["attributes"]["timestamp"] = at.isoformat().replace("+00:00", "Z")
    result = await sandbox.deliver_inbound(inbound)
    assert result.status == 200
    return result.message_id


async def queued_replies(config: Config) -> list[str]:
    return [
        orjson.loads(m.body)["id"]
        for m in await drain(config.broker.addresses()[0], topology.OUTBOUND_QUEUE)
    ]


async def opted_out_rows(config: Config) -> list[tuple[str, str | None]]:
    assert config.ledger is not None
    conn = await asyncpg.connect(config.ledger.url.get_secret_value())
    try:
        rows = await conn.fetch("SELECT recipient, keyword FROM optouts ORDER BY recipient")
    finally:
        await conn.close()
    return [(r["recipient"], r["keyword"]) for r in rows]


async def test_a_stop_texted_before_a_newer_start_publishes_nothing_and_replies_nothing(
    config: Config, sandbox: Sandbox
) -> None:
    """START texted at t+1 (already subscribed) is handled first; the STOP texted at t
    arrives late: it is stale. No policy.opted_out, no "you are unsubscribed" while they
    stay subscribed; the PBX still gets the message."""
    texted = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    async with resolving(config) as events:
        start = await text_us_at(sandbox, config, "START", texted + timedelta(seconds=1))
        seen = await until(events, lambda k, e: k == "inbound.100" and e["id"] == start)
        stop = await text_us_at(sandbox, config, "STOP", texted)
        seen += await until(events, lambda k, e: k == "inbound.100" and e["id"] == stop)
    policy = [(k, PolicyEvent.model_validate(e)) for k, e in seen if k.startswith("policy.")]
    assert [(k, e.keyword, e.at) for k, e in policy] == [
        ("policy.opted_in", "start", texted + timedelta(seconds=1))
    ]
    assert await queued_replies(config) == [f"auto-{start}"]
    assert await opted_out_rows(config) == []


async def test_a_redelivered_keyword_publishes_the_same_event(
    config: Config, amqp_url: str
) -> None:
    """Acting on a keyword again (a redelivery after a crash) publishes the identical event:
    the same message id and body, whose `at` is when the person texted."""
    assert config.ledger is not None
    number = config.numbers[0]
    policy = config.policy_of(number)
    assert policy is not None
    texted = datetime(2026, 11, 20, 10, 0, 0, 520000, tzinfo=UTC)
    sms = InboundSms("mdr2-redelivered", number.number, CUSTOMER, "STOP", texted, (), {})
    broker = Broker(amqp_url, "test")
    ledger = Ledger(config.ledger, "test")
    await broker.start()
    await ledger.start()
    try:
        await broker.wait_connected(15)
        await ledger.wait_available(20)
        async with listen(amqp_url, pattern="policy.#") as events:
            actions = KeywordActions(broker, ledger)
            await actions.act(sms, number, policy, "stop", texted)
            await actions.act(sms, number, policy, "stop", texted)
            first, second = await events.next(), await events.next()
    finally:
        await ledger.close()
        await broker.close()
    assert first.message_id == second.message_id == "mdr2-redelivered/opted_out"
    assert first.body == second.body
    assert orjson.loads(first.body) == {
        "number": number.number,
        "recipient": CUSTOMER,
        "keyword": "stop",
        "at": "2026-11-20T10:00:00.520000Z",
    }


async def test_a_short_code_gets_no_reply_and_no_opt_out(config: Config, sandbox: Sandbox) -> None:
    """A short code (12345) has no E.164 form: nothing is ever sent to it, so a reply could
    only fail and be parked, and an opt-out (or its event, whose numbers are E.164) would be
    meaningless. The PBX still gets the message, keyword and all."""
    async with resolving(config) as events:
        for body in ("HELP", "STOP"):
            mid = await text_us_at(sandbox, config, body, datetime.now(UTC), from_="12345")
            seen = await until(events, lambda k, e, mid=mid: e.get("id") == mid)
            assert seen[-1][0] == "inbound.100" and seen[-1][1]["from"] == "12345"
            assert seen[-1][1]["keyword"] == body.lower()
            assert not [k for k, _ in seen if k.startswith("policy.")]
    assert await queued_replies(config) == []
    assert await opted_out_rows(config) == []


async def test_the_opt_out_list_keeps_the_word_texted(config: Config, sandbox: Sandbox) -> None:
    async with resolving(config) as events:
        mid = await text_us_at(sandbox, config, "Unsubscribe!", datetime.now(UTC))
        seen = await until(events, lambda k, e: k == "inbound.100" and e["id"] == mid)
    assert [e["keyword"] for k, e in seen if k == "policy.opted_out"] == ["stop"]  # the family
    assert await opted_out_rows(config) == [(CUSTOMER, "UNSUBSCRIBE")]
    assert await queued_replies(config) == [f"auto-{mid}"]


def test_opt_out_without_a_ledger_is_an_error_naming_the_policy() -> None:
    text = """
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/"

[[policies]]
name = "night"
quiet_hours = { start = "21:00", end = "08:00", timezone = "America/New_York" }

[[policies]]
name = "us-a2p"
opt_out = true
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert "policies[1].opt_out" in str(info.value) and "'us-a2p'" in str(info.value)
