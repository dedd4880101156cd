"""A merchant with no engineers, and no YAML, sets up its customers' messages
in the portal in a real headless Chromium: turns SMS and email on, breaks
the FAIL text and sees what is wrong live (and at its line) before saving,
fixes it, texts itself a test message that reaches the local Twilio
stand-in, changes its colour and watches the tracking page's preview follow;
then an event from the OMS reaches its customer by the channels it chose,
and a customer who replied STOP shows among its opt-outs. In development
mode (no provider), the merchant reads what its customers would have got in
the outbox. The steps are photographed for docs/portal.md."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, expect

from tests.bound import example

from .conftest import make_settings
from .helpers import ShipcastProcess, eventually
from .test_email import Mailbox, mailbox  # noqa: F401  (the real SMTP server fixture)
from .test_portal_browser import Steps, person_page, photograph, sign_in
from .test_sms import SID, TOKEN, FakeTwilio

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FIXED = "{{ partner.name }}: we missed you today ({{ failure.reason }}). Pick a new time: {{ tracking_url }}"


@pytest.fixture
async def shipcast(vhost: str, sqlite_url: str, mailbox: tuple[Mailbox, int]) -> AsyncIterator[ShipcastProcess]:
    async with FakeTwilio() as twilio:
        settings = make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                                 twilio_api_url=twilio.url, twilio_content_url=twilio.url,
                                 smtp_host="127.0.0.1", smtp_port=mailbox[1], public_url="http://portal.example.com")
        async with ShipcastProcess(settings, channels=["sms", "email", "tracking"]) as running:
            running.twilio = twilio  # type: ignore[attr-defined]
            # The operator made the partner (name only): everything else is the merchant's.
            await running.apply({"partners": [{"id": "freshmart", "name": "FreshMart"}]})
            yield running


async def test_a_merchant_sets_up_its_customer_messages_without_yaml(
        browser: Browser, shipcast: ShipcastProcess, mailbox: tuple[Mailbox, int]) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    page = await person_page(browser)
    steps = Steps(page)
    base = f"{shipcast.base_url}/portal/p/freshmart"
    try:
        await sign_in(page, shipcast, "owner@freshmart.example.com", "freshmart")
        # SMS on, for out-for-delivery and failed deliveries.
        await steps.goto(f"{base}/channels")
        await steps.click(page.get_by_role("link", name="sms", exact=True), "SMS")
        await steps.fill(page.get_by_label("Sender", exact=True), "FRESHM", "sender")
        await steps.click(page.locator("#f-events-OFD"), "OFD")
        await steps.click(page.locator("#f-events-FAIL"), "FAIL")
        # Quiet hours in its own time zone (an OFD or a FAIL still goes at once: they cannot wait).
        await steps.fill(page.get_by_label("From (HH:MM)"), "21:00", "quiet from")
        await steps.fill(page.get_by_label("Until (HH:MM)"), "08:00", "quiet until")
        await steps.fill(page.get_by_label("Your time zone"), "Asia/Kolkata", "time zone")
        await steps.click(page.get_by_role("button", name="Turn on"), "turn SMS on")
        await expect(page.get_by_text("Saved the sms settings.")).to_be_visible()
        # Email on, for failed deliveries.
        await steps.goto(f"{base}/channels/email")
        await steps.fill(page.get_by_label("From address", exact=True), "FreshMart <orders@freshmart.example.com>",
                         "from")
        await steps.click(page.locator("#f-events-FAIL"), "FAIL")
        await steps.click(page.get_by_role("button", name="Turn on"), "turn email on")
        await expect(page.get_by_text("Saved the email settings.")).to_be_visible()
        await steps.goto(f"{base}/channels")
        channels = page.get_by_role("table")
        for name, events in (("sms", "FAIL, OFD"), ("email", "FAIL")):
            row = channels.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
            await expect(row.get_by_text("on", exact=True)).to_be_visible()
            await expect(row.get_by_role("cell", name=events, exact=True).first).to_be_visible()
        await photograph(page, "merchant-channels")

        # The FAIL text, broken: the live preview says what is wrong before anything is saved.
        await steps.goto(f"{base}/channels/sms/templates/FAIL")
        english = page.locator("#text-en")
        await expect(english).to_have_value(re.compile(r"tracking_url"))
        await steps.fill(english, "{{ partner.name }}: we missed you ({{ failure.reason }}).", "remove the link")
        panel = page.locator("#preview-en")
        await expect(panel.get_by_text("must give the tracking link")).to_be_visible()
        await photograph(page, "merchant-template-error")
        await steps.fill(english, "{{ partner.name }}: {{ failure.reason }}. {{ tracking_url }}\n"
                                  "Call {{ rider.phone }}", "an unguarded null")
        await expect(panel.locator("strong", has_text="Line 2")).to_be_visible()
        await steps.click(page.get_by_role("button", name="Save", exact=True), "save it anyway")
        await expect(page.locator("#preview-en strong", has_text="Line 2")).to_be_visible()  # refused, nothing saved
        partner = await shipcast.services.store.get_partner("freshmart")
        assert partner is not None and not partner.channels["sms"].get("templates")
        # Fixed: no problems, two GSM-7 segments (the tracking link is long), saved.
        await steps.fill(page.locator("#text-en"), FIXED, "the fixed text")
        await expect(page.locator("#preview-en").get_by_text("No problems")).to_be_visible()
        await expect(page.locator("#preview-en").get_by_text(re.compile(r"2 segments \(GSM-7\)")).first).to_be_visible()
        await expect(page.locator("#preview-hi").get_by_text("UCS-2").first).to_be_visible()  # Hindi, side by side
        await photograph(page, "merchant-template-fixed")
        await steps.click(page.get_by_role("button", name="Save", exact=True), "save")
        await expect(page.get_by_text("FAIL sms message: Saved.")).to_be_visible()

        # A test text to the merchant's own phone, through the Twilio stand-in.
        await steps.goto(f"{base}/channels/sms")
        await steps.fill(page.get_by_label("Send to"), "+919800011122", "own number")
        await page.get_by_label("Event type", exact=True).select_option("FAIL")
        await steps.click(page.get_by_role("button", name="Send test message"), "send the test")
        await expect(page.get_by_text(re.compile("Sent the FAIL test message"))).to_be_visible()
        assert twilio.received[-1]["To"] == "+919800011122"
        assert twilio.received[-1]["Body"].startswith("FreshMart: we missed you today")
        # The SMS page as it stands: on, its event types, quiet hours in its zone, the test form.
        await expect(page.get_by_label("Your time zone")).to_have_value("Asia/Kolkata")
        await expect(page.get_by_text(re.compile(r"It is \d\d:\d\d in Asia/Kolkata now"))).to_be_visible()
        await expect(page.locator("#f-events-FAIL")).to_be_checked()
        await photograph(page, "merchant-sms-settings")

        # The colour: the tracking page's preview follows what is typed.
        await steps.goto(f"{base}/branding")
        frame = page.frame_locator("#frame-tracking")
        await expect(frame.locator("header.brand")).to_be_visible()
        await steps.fill(page.get_by_label("Colour (optional)"), "#d81b60", "colour")
        await expect(page.locator("#frame-tracking")).to_have_attribute("src", re.compile("primary_color=%23d81b60"))
        await expect(frame.locator("header.brand")).to_have_css("background-color", "rgb(216, 27, 96)")
        # The email beside it: the same order, in the same colour, its tracking link wrapped inside the frame.
        mail_frame = page.frame_locator("#frame-email")
        await expect(mail_frame.locator("body > div")).to_have_css("border-top-color", "rgb(216, 27, 96)")
        await expect(mail_frame.get_by_text("order ORD-10023 is out for delivery")).to_be_visible()
        await expect(frame.locator("#order-ref")).to_have_text("ORD-10023")
        await expect(frame.locator(".rider img")).to_have_count(0)  # the sample rider has no photo to break
        email_frame = await (await page.locator("#frame-email").element_handle()).content_frame()
        assert email_frame is not None
        assert await email_frame.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"), "the email spills"
        await photograph(page, "merchant-branding")
        await steps.click(page.get_by_role("button", name="Save"), "save the branding")
        await expect(page.get_by_text("Saved the branding.")).to_be_visible()
        assert not steps.refused, steps.refused

        # The OMS says a delivery failed: the customer gets the merchant's text and email.
        event: dict[str, Any] = orjson.loads(example("FAIL", partner_id="freshmart").to_json())
        event["order"]["customer"].update(phone="+919812345678", email="asha@example.com", language="en")
        posted = await shipcast.http.post("/v1/events", json=event)
        assert posted.status_code == 202, posted.text
        await eventually(lambda: any(m["To"] == "+919812345678" for m in twilio.received), timeout=30)
        text = next(m for m in twilio.received if m["To"] == "+919812345678")
        assert text["From"] == "FRESHM" and text["Body"].startswith("FreshMart: we missed you today")
        box, _ = mailbox
        await eventually(lambda: [m for m in box.messages if m["To"] == "asha@example.com"], timeout=30)
        mail = next(m for m in box.messages if m["To"] == "asha@example.com")  # (the first is the invitation)
        assert "orders@freshmart.example.com" in mail["From"]
        html = mail.get_body(("html",))
        assert html is not None and "#d81b60" in html.get_content()  # the colour the merchant chose

        # What the customer got, in the merchant's message log.
        await page.goto(f"{base}/customers")
        await expect(page.get_by_text("+91******5678").first).to_be_visible()
        await photograph(page, "merchant-customer-messages")

        # Another customer replied STOP to the merchant's texts: Twilio refuses the next one, an opt-out.
        twilio.errors = [(400, 21610)]
        stopped: dict[str, Any] = orjson.loads(example("FAIL", partner_id="freshmart", order_id="ORD-10031").to_json())
        stopped["order"]["customer"].update(phone="+919845067890", email=None, language="en")
        assert (await shipcast.http.post("/v1/events", json=stopped)).status_code == 202
        await eventually(lambda: shipcast.services.store.opted_out("sms", "freshmart", "+919845067890"), timeout=30)
        await steps.goto(f"{base}/opt-outs")
        row = page.get_by_role("row").filter(has_text="+91******7890")
        await expect(row.get_by_text("the customer asked", exact=True)).to_be_visible()
        await expect(row.get_by_role("button", name="Lift")).to_be_visible()
        await photograph(page, "merchant-opt-outs")
    finally:
        await page.context.close()


@pytest.fixture
async def developing(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    """shipcast in development mode: no Twilio and no SMTP server, so customers' messages are kept in the outbox."""
    settings = make_settings(vhost, sqlite_url, development=True, public_url="http://portal.example.com")
    async with ShipcastProcess(settings, channels=["sms", "email", "tracking"]) as running:
        await running.apply({"partners": [{"id": "freshmart", "name": "FreshMart"}]})
        yield running


async def kept(shipcast: ShipcastProcess, event_id: str, channels: set[str]) -> bool:
    """Whether the event's message on each of ``channels`` is in the outbox."""
    rows = await shipcast.services.store.list_outbox(partner_id="freshmart")
    return {row["channel"] for row in rows if row["event_id"] == event_id} >= channels


async def test_in_development_the_merchant_reads_its_customers_messages_in_the_outbox(
        browser: Browser, developing: ShipcastProcess) -> None:
    shipcast = developing
    for channel, section in (("sms", {"sender": "FRESHM", "events": ["OFD", "FAIL"]}),
                             ("email", {"from_address": "FreshMart <orders@freshmart.example.com>",
                                        "events": ["OFD"]})):
        turned_on = await shipcast.http.put(f"/v1/partners/freshmart/config/channels/{channel}", json=section)
        assert turned_on.status_code == 200, turned_on.text
    event: dict[str, Any] = orjson.loads(example("OFD", partner_id="freshmart").to_json())
    event["order"]["customer"].update(phone="+919812345678", email="asha@example.com", language="en")
    assert (await shipcast.http.post("/v1/events", json=event)).status_code == 202
    await eventually(lambda: kept(shipcast, event["event_id"], {"sms", "email"}), timeout=30)
    page = await person_page(browser)
    try:
        await sign_in(page, shipcast, "owner@freshmart.example.com", "freshmart")
        await page.goto(f"{shipcast.base_url}/portal/p/freshmart/outbox")
        await expect(page.locator(".dev-banner")).to_contain_text("go to the development outbox")
        rows = page.get_by_role("region", name="Outbox, newest first")
        sms = rows.get_by_role("row").filter(has_text="+919812345678")
        await expect(sms.get_by_text(re.compile(r"^FreshMart: .*order ORD-10023"))).to_be_visible()
        email = rows.get_by_role("row").filter(has_text="asha@example.com")
        await expect(email.get_by_role("cell", name="email", exact=True)).to_be_visible()
        await photograph(page, "merchant-outbox")
    finally:
        await page.context.close()
