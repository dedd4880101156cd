"""A merchant's settings in the portal, as a browser posts them: customer
channels turned on and configured, each message edited with its preview and
its problems at their line, reset to the shipped text, branding with its
previews, test messages through the provider, and the partners file's
fields kept read-only."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape

import pytest

from .conftest import make_settings
from .helpers import ShipcastProcess
from .portal import Visitor, signed_in
from .test_sms import SID, TOKEN, FakeTwilio

pytestmark = pytest.mark.broker

BASE = "/portal/p/acme"
FILE = {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"email": {
    "from_address": "Acme Retail <orders@acme.example.com>", "events": ["DEL"]}}}]}


@pytest.fixture
async def shipcast(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with FakeTwilio() as twilio:
        settings = make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                                 twilio_api_url=twilio.url, twilio_content_url=twilio.url)
        async with ShipcastProcess(settings, workers=False) as running:
            from .helpers import eventually

            await eventually(lambda: running.services.broker.connected)
            running.twilio = twilio  # type: ignore[attr-defined]
            await running.apply(FILE)
            yield running


@pytest.fixture
async def admin(shipcast: ShipcastProcess) -> AsyncIterator[Visitor]:
    visitor = await signed_in(shipcast, "owner@acme.example.com", "acme", "admin")
    yield visitor
    await visitor.aclose()


def field_error(page: str, name: str) -> str:
    found = re.search(rf'id="{re.escape(name)}-error">([^<]*)<', page)
    assert found, f"no error shown beside {name}"
    return found.group(1)


async def test_a_merchant_turns_sms_on_and_a_wrong_field_is_named_beside_it(
        shipcast: ShipcastProcess, admin: Visitor) -> None:
    listing = await admin.get(f"{BASE}/channels")
    assert listing.status_code == 200 and 'href="/portal/p/acme/channels/sms"' in listing.text
    form = await admin.get(f"{BASE}/channels/sms")
    assert form.status_code == 200 and "Turn on" in form.text
    wrong = await admin.post(f"{BASE}/channels/sms", {"sender": "x", "events": ["OFD", "FAIL"], "country": "IN"})
    assert wrong.status_code == 422
    assert "3-11 character header" in field_error(wrong.text, "sender")
    assert 'value="x"' in wrong.text  # what was typed is shown again
    on = await admin.post(f"{BASE}/channels/sms", {
        "sender": "ACMEIN", "events": ["OFD", "FAIL"], "country": "IN",
        "quiet_hours.start": "21:00", "quiet_hours.end": "08:00", "quiet_hours.timezone": "Asia/Kolkata"})
    assert on.status_code == 303, on.text[:500]
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and partner.channels["sms"]["sender"] == "ACMEIN"
    assert partner.channels["sms"]["events"] == ["OFD", "FAIL"]
    assert partner.channels["sms"]["quiet_hours"]["timezone"] == "Asia/Kolkata"
    page = await admin.get(f"{BASE}/channels/sms")
    assert "Saved the sms settings." in page.text and 'value="21:00"' in page.text and "in Asia/Kolkata" in page.text
    zone = await admin.post(f"{BASE}/channels/sms", {"sender": "ACMEIN", "events": ["OFD"], "country": "IN",
                                                     "quiet_hours.start": "21:00", "quiet_hours.end": "08:00",
                                                     "quiet_hours.timezone": "Atlantis/Capital"})
    assert zone.status_code == 422 and "unknown time zone" in field_error(zone.text, "quiet_hours")
    off = await admin.post(f"{BASE}/channels/sms/off", {})
    assert off.status_code == 303
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and "sms" not in partner.channels


async def test_a_broken_template_is_shown_at_its_line_fixed_and_reset(
        shipcast: ShipcastProcess, admin: Visitor) -> None:
    await admin.get(f"{BASE}/channels/sms")
    assert (await admin.post(f"{BASE}/channels/sms", {"sender": "ACMEIN", "events": ["OFD", "FAIL"],
                                                      "country": "IN"})).status_code == 303
    editor = await admin.get(f"{BASE}/channels/sms/templates/FAIL")
    assert editor.status_code == 200
    english = re.search(r'name="text_en"[^>]*>([^<]*)</textarea>', editor.text)
    assert english and "we missed you" in english.group(1)  # the shipped English text
    assert editor.text.count("The shipped text") == 2  # English and Hindi, side by side
    # The tracking link removed: refused, saying what it lacks.
    unlinked = "{{ partner.name }}: we missed you. Reason: {{ failure.reason }}"
    refused = await admin.post(f"{BASE}/channels/sms/templates/FAIL", {"text_en": unlinked, "text_hi": ""})
    assert refused.status_code == 422 and "must give the tracking link" in refused.text
    # A null printed unguarded: refused at its line.
    broken = ("{{ partner.name }}: we missed you. {{ tracking_url }}\nReason: {{ failure.reason }}\n"
              "Call {{ rider.phone }}")
    refused = await admin.post(f"{BASE}/channels/sms/templates/FAIL", {"text_en": broken, "text_hi": ""})
    assert refused.status_code == 422 and "<strong>Line 3</strong>" in refused.text, refused.text[-3000:]
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and not partner.channels["sms"].get("templates")
    # The live preview of one language, as the page's script asks for it.
    fixed = "{{ partner.name }}: we missed you, {{ failure.reason }}. New time: {{ tracking_url }}"
    panel = await admin.post(f"{BASE}/channels/sms/templates/FAIL/preview",
                             {"text_en": fixed, "text_hi": "", "language": "en"})
    assert panel.status_code == 200 and "No problems" in panel.text
    assert "GSM-7" in panel.text and "1 segment" in panel.text and "Customer not reachable" in panel.text
    shipped_hi = re.search(r'name="text_hi"[^>]*>([^<]*)</textarea>', editor.text)
    assert shipped_hi and "{{ tracking_url }}" in shipped_hi.group(1)
    text_hi = shipped_hi.group(1).replace("&#39;", "'").replace("&#34;", '"').replace("&amp;", "&")
    hindi = await admin.post(f"{BASE}/channels/sms/templates/FAIL/preview",
                             {"text_en": fixed, "text_hi": text_hi, "language": "hi"})
    assert "UCS-2" in hindi.text and "No problems" in hindi.text  # the shipped Hindi text, side by side
    saved = await admin.post(f"{BASE}/channels/sms/templates/FAIL", {"text_en": fixed, "text_hi": text_hi})
    assert saved.status_code == 303
    partner = await shipcast.services.store.get_partner("acme")
    # The Hindi text left as shipped is kept beside the English one: Hindi customers still get Hindi.
    assert partner is not None and partner.channels["sms"]["templates"] == {"FAIL": {"en": fixed, "hi": text_hi}}
    reset = await admin.post(f"{BASE}/channels/sms/templates/FAIL",
                             {"text_en": fixed, "text_hi": text_hi, "reset": "en"})
    assert reset.status_code == 303
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and not partner.channels["sms"].get("templates")  # all shipped again
    unsafe = await admin.post(f"{BASE}/channels/sms/templates/FAIL/preview", {
        "text_en": "{{ failure.reason }} {{ tracking_url }}\n{{ ''.__class__ }}", "text_hi": "", "language": "en"})
    assert "<strong>Line 2</strong>" in unsafe.text and "__class__" in unsafe.text


async def test_a_misspelt_field_is_named_at_its_line_before_saving(shipcast: ShipcastProcess, admin: Visitor) -> None:
    await admin.get(f"{BASE}/channels/sms")
    assert (await admin.post(f"{BASE}/channels/sms", {"sender": "ACMEIN", "events": ["OFD"],
                                                      "country": "IN"})).status_code == 303
    misspelt = "{{ tracking_url }}\n{{ customer.nmae }}"
    panel = await admin.post(f"{BASE}/channels/sms/templates/OFD/preview",
                             {"text_en": misspelt, "text_hi": "", "language": "en"})
    assert panel.status_code == 200
    [problem] = re.findall(r"<li><strong>(Line \d+)</strong>: ([^<]*)</li>", panel.text)
    assert problem[0] == "Line 2" and "nmae" in problem[1], problem
    refused = await admin.post(f"{BASE}/channels/sms/templates/OFD", {"text_en": misspelt, "text_hi": ""})
    assert refused.status_code == 422
    assert re.search(r"<strong>Line 2</strong>: [^<]*nmae", refused.text), refused.text[-3000:]
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and not partner.channels["sms"].get("templates")  # nothing saved


async def test_an_email_template_is_previewed_with_its_html(shipcast: ShipcastProcess, admin: Visitor) -> None:
    editor = await admin.get(f"{BASE}/channels/email/templates/DEL")
    assert editor.status_code == 200 and 'data-html="/portal/p/acme/channels/email/templates/DEL/email"' in editor.text
    html = await admin.post(f"{BASE}/channels/email/templates/DEL/email", {
        "text_en": "Delivered!\nHi {{ customer.name }}, it arrived. {{ tracking_url }}", "text_hi": "",
        "language": "en"})
    assert html.status_code == 200 and "it arrived" in html.text
    policy = html.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "frame-ancestors 'self'" in policy and "script-src" not in policy


async def test_an_email_preview_shows_its_subject_for_the_realistic_and_the_sparse_sample(
        shipcast: ShipcastProcess, admin: Visitor) -> None:
    editor = await admin.get(f"{BASE}/channels/email/templates/DEL")
    assert editor.text.count("<h4>Every optional field null</h4>") == 2  # the shipped texts, English and Hindi
    typed = ("Delivered: order {{ order.order_id }}\n"
             "{% if order.item_count %}All {{ order.item_count }} items{% else %}Your parcel{% endif %} arrived. "
             "{{ tracking_url }}")
    panel = await admin.post(f"{BASE}/channels/email/templates/DEL/preview",
                             {"text_en": typed, "text_hi": "", "language": "en"})
    assert panel.status_code == 200 and "No problems" in panel.text
    samples = dict(re.findall(r'<div class="sample">\s*<h4>([^<]*)</h4>(.*?)</div>', panel.text, re.DOTALL))
    assert list(samples) == ["Realistic", "Every optional field null"], panel.text
    for shown in samples.values():
        assert '<span class="muted">Subject:</span> Delivered: order ORD-10023</p>' in shown
    assert "All 2 items arrived" in samples["Realistic"]
    assert "Your parcel arrived" in samples["Every optional field null"]
    assert "items arrived" not in samples["Every optional field null"]


async def test_the_partners_files_fields_are_read_only_and_kept(shipcast: ShipcastProcess, admin: Visitor) -> None:
    page = await admin.get(f"{BASE}/channels/email")
    assert re.search(r'name="from_address"[^>]*readonly', page.text)
    assert "Set by the partners file" in page.text and "Turn email off" not in page.text
    saved = await admin.post(f"{BASE}/channels/email", {"from_address": "Evil <x@evil.example>", "events": ["DEL"],
                                                        "reply_to": "help@acme.example.com"})
    assert saved.status_code == 303, saved.text[:400]
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None
    assert partner.channels["email"]["from_address"] == "Acme Retail <orders@acme.example.com>"
    assert partner.channels["email"]["reply_to"] == "help@acme.example.com"


async def test_branding_is_saved_and_previewed_on_the_tracking_page_and_an_email(
        shipcast: ShipcastProcess, admin: Visitor) -> None:
    page = await admin.get(f"{BASE}/branding")
    assert page.status_code == 200
    assert 'data-base="/portal/p/acme/branding/tracking"' in page.text
    assert 'data-base="/portal/p/acme/branding/email"' in page.text
    tracking = await admin.get(f"{BASE}/branding/tracking", params={"primary_color": "#d81b60"})
    assert tracking.status_code == 200 and "--brand: #d81b60" in tracking.text
    assert tracking.headers["content-security-policy"].startswith("sandbox;")
    wrong = await admin.get(f"{BASE}/branding/tracking", params={"primary_color": "red;}</style><script>"})
    assert "<script>" not in wrong.text and "red;}" not in wrong.text
    email = await admin.get(f"{BASE}/branding/email", params={"primary_color": "#d81b60",
                                                             "support_email": "help@acme.example.com"})
    assert "#d81b60" in email.text and "help@acme.example.com" in email.text
    # Both show one sample order: the same order id, and no rider photo (whose sample address could not load).
    assert '<strong id="order-ref">ORD-10023</strong>' in tracking.text and "order ORD-10023 is out for" in email.text
    assert 'id="rider-name">Ravi Kumar<' in tracking.text and "<img" not in tracking.text
    refused = await admin.post(f"{BASE}/branding", {"primary_color": "pink", "support_email": "help@acme.example.com"})
    assert refused.status_code == 422 and "colour like #0a7cff" in field_error(refused.text, "primary_color")
    saved = await admin.post(f"{BASE}/branding", {"primary_color": "#d81b60", "support_email": "help@acme.example.com"})
    assert saved.status_code == 303
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and partner.branding == {"primary_color": "#d81b60",
                                                        "support_email": "help@acme.example.com"}


async def test_the_branding_previews_carry_the_logo_and_the_support_phone(
        shipcast: ShipcastProcess, admin: Visitor) -> None:
    await admin.get(f"{BASE}/branding")
    logo, phone = "https://cdn.acme.example.com/logo.png", "+918045671234"
    saved = await admin.post(f"{BASE}/branding", {"logo_url": logo, "support_phone": phone})
    assert saved.status_code == 303, saved.text[-2000:]
    page = await admin.get(f"{BASE}/branding")
    frames = {name: unescape(src) for name, src in
              re.findall(r'<iframe[^>]* id="frame-(\w+)"[^>]* src="([^"]+)"', page.text)}
    assert set(frames) == {"tracking", "email"}, page.text
    tracking, email = (await admin.get(frames["tracking"])).text, (await admin.get(frames["email"])).text
    assert f'<img src="{logo}"' in tracking and f'<a href="tel:{phone}">{phone}</a>' in tracking
    assert f'<img src="{logo}"' in email and phone in email


async def test_a_test_message_reaches_the_merchants_own_phone(shipcast: ShipcastProcess, admin: Visitor) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    await admin.get(f"{BASE}/channels/sms")
    assert (await admin.post(f"{BASE}/channels/sms", {"sender": "ACMEIN", "events": ["OFD", "FAIL"],
                                                      "country": "IN"})).status_code == 303
    sent = await admin.post(f"{BASE}/channels/sms/test", {"to": "+919812345678", "event_type": "OFD",
                                                         "language": "en"})
    assert sent.status_code == 303
    assert twilio.received and twilio.received[-1]["To"] == "+919812345678"
    assert "4821" in twilio.received[-1]["Body"]  # the sample OFD's OTP
    page = await admin.get(f"{BASE}/channels/sms")
    assert "Sent the OFD test message" in page.text
    bad = await admin.post(f"{BASE}/channels/sms/test", {"to": "12345", "event_type": "OFD", "language": "en"})
    assert bad.status_code == 303
    assert "Not sent: to: not a valid phone number" in (await admin.get(f"{BASE}/channels/sms")).text
    assert len(twilio.received) == 1


async def test_a_viewer_reads_the_settings_but_has_nothing_to_press(shipcast: ShipcastProcess) -> None:
    viewer = await signed_in(shipcast, "reader@acme.example.com", "acme", "viewer")
    try:
        for path in ("/channels", "/channels/sms", "/channels/email/templates/DEL", "/branding"):
            page = await viewer.get(BASE + path)
            assert page.status_code == 200, path
            assert 'type="submit" class="primary"' not in page.text, path
        refused = await viewer.post(f"{BASE}/branding", {"primary_color": "#000000"})
        assert refused.status_code == 403
    finally:
        await viewer.aclose()


async def test_whatsapp_shows_each_content_templates_variables(shipcast: ShipcastProcess, admin: Visitor) -> None:
    sid = "HX" + "b" * 32
    await admin.get(f"{BASE}/channels/whatsapp")
    on = await admin.post(f"{BASE}/channels/whatsapp", {
        "sender": "+14155238886", "events": ["OFD"], "country": "IN", "content_sids": f'{{"OFD": "{sid}"}}'})
    assert on.status_code == 303, on.text[-2000:]
    page = await admin.get(f"{BASE}/channels/whatsapp")
    assert "What customers get" in page.text and "{{1}} = Acme Retail" in page.text
    assert f"content template {sid}, 5 variables" in page.text
    wrong = await admin.post(f"{BASE}/channels/whatsapp", {
        "sender": "+14155238886", "events": ["OFD"], "country": "IN", "content_sids": "{not json"})
    assert wrong.status_code == 422 and "not JSON" in field_error(wrong.text, "content_sids")

    # The form's messages follow what is typed: a variable of the draft, before saving.
    live = await admin.post(f"{BASE}/channels/whatsapp/preview", {
        "sender": "+14155238886", "events": ["OFD"], "country": "IN", "content_sids": f'{{"OFD": "{sid}"}}',
        "variables": '{"OFD": ["{{ partner.name }} says hi", "{{ tracking_url }}"]}'})
    assert live.status_code == 200 and "{{1}} = Acme Retail says hi" in live.text
    broken = await admin.post(f"{BASE}/channels/whatsapp/preview", {
        "sender": "+14155238886", "events": ["OFD"], "country": "IN", "content_sids": f'{{"OFD": "{sid}"}}',
        "variables": '{"OFD": ["{{ partner.name }}"]}'})
    assert "must give the tracking link" in broken.text
    partner = await shipcast.services.store.get_partner("acme")
    assert partner is not None and not partner.channels["whatsapp"].get("variables")  # nothing saved
