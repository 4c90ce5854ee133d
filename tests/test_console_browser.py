"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a console started in process with a real ledger and RabbitMQ, and the real gateway
serving an inbound MMS image from its media store.

Writes docs/console.png (the README's screenshot). Set SMSBRIDGE_SCREENSHOT_DIR to also keep a
phone-width screenshot and the other pages there, for a look."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from smsbridge.media_store import MediaStore
from tests.console_harness import (
    OURS,
    TOKEN,
    TOLL_FREE,
    Console,
    console_config,
    park,
    running_console,
    seed_inbound,
    seed_outbound,
    set_created,
)
from tests.harness import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "console.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)"
)

THEM = "+12065550142"


def png(width: int = 360, height: int = 240) -> bytes:
    """A small picture (a storefront at dusk), as a real PNG."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            if y > height * 0.55 and width * 0.25 < x < width * 0.75:  # the shop
                door = width * 0.45 < x < width * 0.55 and y > height * 0.7
                rows += bytes((60, 40, 30) if door else (200, 90, 60))
            elif y > height * 0.85:  # the street
                rows += bytes((70, 70, 80))
            else:  # the sky, and the sun
                sun = (x - width * 0.8) ** 2 + (y - height * 0.25) ** 2 < (height * 0.1) ** 2
                shade = int(120 + 100 * y / height)
                rows += bytes((250, 200, 80) if sun else (40, 80 + shade // 3, shade))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def store_image(root: Path, base_url: str) -> dict[str, Any]:
    """Put a picture in the gateway's media store; its media item as the ledger keeps it."""
    store = MediaStore(root)
    data = png()
    temp = store.temp_path()
    temp.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    stored = store.commit(
        temp, content_type="image/png", file_name="storefront.png", size=len(data), sha256=digest
    )
    return {
        "url": f"{base_url}/media/{stored.key}",
        "content_type": "image/png",
        "file_name": "storefront.png",
        "size": len(data),
        "sha256": digest,
        "error": None,
    }


@dataclass
class Scene:
    console: Console
    image: dict[str, Any]
    page: Page
    problems: list[str]


async def populate(console: Console, image: dict[str, Any]) -> None:
    """A realistic afternoon: inbound and outbound, SMS and an MMS, every kind of status."""
    ledger = console.ledger
    now = datetime.now(UTC).replace(microsecond=0)
    script: list[tuple[str, str, dict[str, Any]]] = [
        ("in", "mdr2-a01", {"from_": THEM, "body": "Hi, is the office open on Saturday?"}),
        ("out", "pbx-0001", {"to": THEM, "body": "Yes, 9am to 1pm. See you then!",
                             "statuses": ("sent", "delivered")}),
        ("in", "mdr2-a02", {"from_": "+13125550199", "body": "Running 10 min late, sorry"}),
        ("out", "pbx-0002", {"to": "+13125550199", "body": "No problem, we'll hold your slot",
                             "extension": "101", "statuses": ("sent", "delivered")}),
        ("in", "mdr2-a03", {"from_": "+14155550123", "to": TOLL_FREE, "extension": "200",
                            "body": "What's the order status for #48213?"}),
        ("out", "pbx-0003", {"from_": TOLL_FREE, "to": "+14155550123", "extension": "200",
                             "body": "It shipped this morning, tracking 1Z999AA10123456784",
                             "statuses": ("sent",)}),
        ("out", "pbx-0004", {"to": "+17185550178", "body": "Reminder: your appointment is "
                             "tomorrow at 10:30", "statuses": ("sent", "undelivered"),
                             "reason": "carrier rejected: unknown subscriber"}),
        ("in", "mdr2-a04", {"from_": "+19175550111", "to": "+19995550100", "extension": None,
                            "body": "Wrong number?", "status": "unrouted"}),
        ("out", "pbx-0005", {"to": "+442071838750", "body": "Your code is 481 516",
                             "statuses": ("failed",),
                             "reason": "country not allowed by policy us-a2p"}),
        ("in", "mdr2-a05", {"from_": "+16465550147", "body": "STOP"}),
        ("out", "pbx-0006", {"to": "+16465550147", "body": "You are unsubscribed. Reply START "
                             "to resubscribe.", "statuses": ("sent", "delivered")}),
        ("in", "mdr2-a06", {"from_": THEM, "body": "Here's the storefront, is this the right "
                            "entrance?", "media": [image]}),
        ("out", "pbx-0007", {"to": THEM, "body": "That's us, come on in!", "extension": "100"}),
        ("in", "mdr2-a07", {"from_": "+12125550133", "body": "Can I bring my dog?"}),
    ]  # fmt: skip
    for i, (kind, message_id, fields) in enumerate(script):
        if kind == "in":
            await seed_inbound(ledger, message_id, **fields)
        else:
            await seed_outbound(ledger, message_id, **fields)
        when = now - timedelta(minutes=7 * (len(script) - i))
        await set_created(ledger, message_id, when)


@pytest.fixture
async def scene(amqp_url: str, ledger_url: str, tmp_path: Path) -> AsyncIterator[Scene]:
    from gateway.app import serve as serve_gateway

    config = console_config(amqp_url, ledger_url, tmp_path, gateway_port=free_port())
    image = store_image(config.media.dir, config.gateway.base_url)
    gateway = await serve_gateway(config)
    try:
        async with running_console(config) as console, async_playwright() as playwright:
            browser: Browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                context = await browser.new_context(
                    viewport={"width": 1280, "height": 800}, locale="en-US", timezone_id="UTC"
                )
                page = await context.new_page()
                problems: list[str] = []

                def on_console(message: Any) -> None:
                    # A refused login (401) and a refused form (400) are on purpose; anything
                    # else (a missing file, a script error, a CSP violation) is a problem.
                    expected = ("status of 400", "status of 401")
                    if message.type in ("error", "warning") and not any(
                        e in message.text for e in expected
                    ):
                        problems.append(message.text)

                page.on("console", on_console)
                page.on("pageerror", lambda e: problems.append(str(e)))
                yield Scene(console, image, page, problems)
            finally:
                await browser.close()
    finally:
        await gateway.cleanup()


async def log_in(scene: Scene) -> Page:
    page = scene.page
    await page.goto(scene.console.url + "/")
    await expect(page).to_have_url(scene.console.url + "/login")
    await page.get_by_label("Access token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Messages", level=1)).to_be_visible()
    return page


def rows(page: Page) -> Any:
    return page.locator("ol#rows > li.msg")


async def extra_screenshot(page: Page, name: str, **options: Any) -> None:
    folder = os.environ.get("SMSBRIDGE_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / name), **options)


async def test_log_in_find_a_message_open_its_timeline_and_see_the_mms_image(
    scene: Scene,
) -> None:
    await populate(scene.console, scene.image)
    page = scene.page
    # A wrong token first: refused, and the field is empty again.
    await page.goto(scene.console.url + "/")
    await page.get_by_label("Access token").fill("not-the-token-not-the-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not right")
    await expect(page.get_by_label("Access token")).to_have_value("")
    page = await log_in(scene)
    await expect(rows(page)).to_have_count(14)
    await expect(rows(page).first).to_contain_text("Can I bring my dog?")

    # The README's screenshot: a populated message list at 1280x800.
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT))
    await extra_screenshot(page, "messages.png", full_page=True)

    # Keyboard: the first Tab reaches the skip link.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"

    # Find the customer's messages by number, typed the way a person would.
    await page.get_by_label("Number").fill("(206) 555-0142")
    await page.get_by_role("button", name="Search").click()
    await expect(rows(page)).to_have_count(4)
    for text in await rows(page).all_inner_texts():
        assert "+1 206-555-0142" in text
    await expect(page.get_by_label("Number")).to_have_value("(206) 555-0142")

    # Open the MMS: its timeline, and the picture served by the gateway.
    await (
        page.get_by_role("link", name="inbound message: from +1 206-555-0142")
        .filter(has_text="storefront")
        .click()
    )
    await expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    timeline = page.locator("ol.timeline > li")
    await expect(timeline).to_have_count(2)
    await expect(timeline.nth(0)).to_contain_text("received")
    await expect(timeline.nth(1)).to_contain_text("delivered to PBX")
    image = page.get_by_role("img", name="storefront.png")
    await expect(image).to_be_visible()
    assert await image.get_attribute("src") == scene.image["url"]
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 360
    raw = page.locator("details.raw pre")
    await expect(raw).to_be_hidden()
    await page.get_by_text("Raw provider fields").click()
    await expect(raw).to_contain_text('"body"')
    await extra_screenshot(page, "message.png", full_page=True)

    # An outbound message's timeline: queued, sent, undelivered with the carrier's reason.
    await page.goto(scene.console.url + "/messages/pbx-0004")
    timeline = page.locator("ol.timeline > li")
    await expect(timeline).to_have_count(3)
    await expect(timeline.nth(2)).to_contain_text("undelivered")
    await expect(timeline.nth(2)).to_contain_text("carrier rejected: unknown subscriber")
    await expect(timeline.nth(2)).to_contain_text("UNDELIV")

    # The conversation, like a phone's thread, with delivery ticks.
    await page.goto(scene.console.url + "/")
    await page.get_by_role("link", name="Conversation with +12065550142").first.click()
    bubbles = page.locator("ol#thread > li")
    await expect(bubbles).to_have_count(4)
    await expect(bubbles.nth(0)).to_contain_text("open on Saturday")
    await expect(bubbles.nth(0)).to_have_class("bubble-row theirs")
    await expect(bubbles.nth(1)).to_have_class("bubble-row ours")
    await expect(bubbles.nth(1).locator(".tick")).to_have_text("✓✓")
    await expect(bubbles.nth(2).get_by_role("img", name="storefront.png")).to_be_visible()
    await extra_screenshot(page, "conversation.png", full_page=True)

    # Readable on a phone.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(scene.console.url + "/")
    await expect(rows(page)).to_have_count(14)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the message list scrolls sideways on a phone ({width}px)"
    await extra_screenshot(page, "messages-phone.png", full_page=False)
    await page.goto(scene.console.url + "/messages/mdr2-a06")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await extra_screenshot(page, "message-phone.png", full_page=True)

    assert scene.problems == []  # no script errors, no CSP violations


async def test_requeue_parked_messages_after_a_confirm_step(scene: Scene, amqp_url: str) -> None:
    for message_id, reason in (
        ("pbx-p1", "invalid request: 'to' is not a phone number"),
        ("pbx-p2", "provider refused: 400 Bad Request"),
        ("pbx-p3", "provider refused: 400 Bad Request"),
    ):
        await park(
            amqp_url,
            "outbound",
            {"id": message_id, "to": "+1555", "from": OURS},
            message_id,
            reason,
        )
    page = await log_in(scene)
    await page.get_by_role("link", name="Parked").click()
    outbound = page.locator("section.stage").filter(
        has=page.get_by_role("heading", name="Outbound")
    )
    await expect(outbound.locator("tbody tr")).to_have_count(3)
    await expect(outbound).to_contain_text("invalid request: 'to' is not a phone number")
    await extra_screenshot(page, "parked.png", full_page=True)

    # One message: its button, then the confirm step.
    await outbound.get_by_role("button", name="Requeue… pbx-p1").click()
    await expect(page.get_by_role("heading", name="Requeue from outbound?")).to_be_visible()
    await expect(page.locator("ul.ids")).to_contain_text("pbx-p1")
    await page.get_by_role("button", name="Yes, requeue").click()
    await expect(page.get_by_role("status")).to_have_text("Requeued 1 message from outbound.")
    await expect(outbound.locator("tbody tr")).to_have_count(2)
    await expect(outbound).not_to_contain_text("pbx-p1")

    # Cancelling changes nothing.
    await outbound.get_by_role("button", name="Requeue all 2…").click()
    await page.get_by_role("link", name="Cancel").click()
    await expect(outbound.locator("tbody tr")).to_have_count(2)

    # Selected ones.
    await outbound.get_by_label("Select pbx-p3").check()
    await outbound.get_by_role("button", name="Requeue selected…").click()
    await expect(page.locator("ul.ids li")).to_have_count(1)
    await page.get_by_role("button", name="Yes, requeue").click()
    await expect(page.get_by_role("status")).to_have_text("Requeued 1 message from outbound.")
    await expect(outbound.locator("tbody tr")).to_have_count(1)
    await expect(outbound).to_contain_text("pbx-p2")
    assert scene.problems == []


async def test_the_message_list_updates_live(scene: Scene) -> None:
    await seed_inbound(scene.console.ledger, "mdr2-before", from_=THEM, body="Already here")
    page = await log_in(scene)
    await expect(rows(page)).to_have_count(1)
    await page.evaluate("window.notReloaded = true")
    await seed_inbound(scene.console.ledger, "mdr2-live", from_=THEM, body="Just arrived, live")
    await seed_outbound(scene.console.ledger, "pbx-live", to=THEM, body="And our answer")
    await expect(rows(page)).to_have_count(3, timeout=15_000)
    await expect(rows(page).nth(0)).to_contain_text("And our answer")
    await expect(rows(page).nth(1)).to_contain_text("Just arrived, live")
    assert await page.evaluate("window.notReloaded") is True
    # And again: the poller moved on, so nothing repeats.
    await seed_inbound(scene.console.ledger, "mdr2-live-2", from_=THEM, body="One more")
    await expect(rows(page)).to_have_count(4, timeout=15_000)
    await page.wait_for_timeout(2500)
    await expect(rows(page)).to_have_count(4)
    texts = await rows(page).all_inner_texts()
    assert [t.count("One more") for t in texts] == [1, 0, 0, 0]
    # Recorded now, dated an hour ago (an MMS whose media took long, a backlog after a ledger
    # outage): new to the page all the same.
    await seed_inbound(
        scene.console.ledger,
        "mdr2-late",
        from_=THEM,
        body="Sent an hour ago, recorded now",
        created_at=datetime.now(UTC) - timedelta(hours=1),
    )
    await expect(rows(page)).to_have_count(5, timeout=15_000)
    await expect(rows(page).nth(0)).to_contain_text("Sent an hour ago, recorded now")
    assert await page.evaluate("window.notReloaded") is True
    assert scene.problems == []


async def test_manage_opt_outs_and_see_the_accounts(scene: Scene) -> None:
    from smsbridge.ledger import accounts

    await accounts.report(
        scene.console.ledger,
        "flowroute",
        held_since=datetime.now(UTC) - timedelta(minutes=4),
        held_reason="401 Unauthorized: the provider refused the keys",
        sent_last_minute=0,
        rate_limited_last_minute=3,
        reporter="test",
    )
    page = await log_in(scene)
    await page.get_by_role("link", name="Accounts").click()
    row = page.get_by_role("row").filter(has_text="flowroute")
    await expect(row).to_contain_text("Held")
    await expect(row).to_contain_text("401 Unauthorized")
    await extra_screenshot(page, "accounts.png", full_page=True)

    await page.get_by_role("link", name="Opt-outs").click()
    await page.get_by_label("Our number", exact=True).fill(OURS)
    await page.get_by_label("Their number").fill("206 555 0142")
    await page.get_by_role("button", name="Opt out").click()
    await expect(page.get_by_role("status")).to_contain_text("Opted out")
    table = page.locator("table.optouts tbody tr")
    await expect(table).to_have_count(1)
    await expect(table.first).to_contain_text("+1 206-555-0142")
    await expect(table.first).to_contain_text("added (console)")
    await page.get_by_label("Our number", exact=True).fill(OURS)
    await page.get_by_label("Their number").fill("not a number")
    await page.get_by_role("button", name="Opt out").click()
    await expect(page.get_by_role("alert")).to_contain_text("recipient")
    await expect(page.get_by_label("Their number")).to_have_value("not a number")
    await extra_screenshot(page, "optouts.png", full_page=True)
    await page.goto(scene.console.url + "/optouts")
    await page.get_by_role("button", name="Remove +12065550142").click()
    await expect(page.get_by_role("status")).to_contain_text("Opted back in")
    await expect(table).to_have_count(0)
    assert scene.problems == []
