"""Every section of a partner's config, read and changed by its merchant
through the partner API and taking effect at once: WhatsApp's content
templates, the tracking page's options, SMS's DLT ids and critical types,
email's transactional types; each refused with the field's path and the same
errors ``partners apply`` gives; test messages through SMTP, Twilio and the
development outbox; and a change reaching a worker in another process."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
import yaml

from shipcast.plugins.tracking.links import DAY, read_tracking_token
from shipcast.settings import Settings

from .conftest import make_settings
from .helpers import ShipcastProcess, Subprocess, eventually, run_cli
from .test_email import Mailbox, mailbox  # noqa: F401 (fixtures)
from .test_partner_config import bindings, partner_client
from .test_sms import (
    EN_OFD,
    HI_OFD,
    SID,
    TOKEN,
    FakeMsg91,
    FakeTwilio,
    event_body,
    msg91,  # noqa: F401 (fixtures)
)

pytestmark = pytest.mark.broker

OFD_SID, FAIL_SID, FAIL_HI_SID = "HX" + "a" * 32, "HX" + "b" * 32, "HX" + "c" * 32
#: Content templates Twilio has not approved for customers' order messages.
REJECTED_SID, MARKETING_SID = "HX" + "d" * 32, "HX" + "e" * 32
#: The operator's file names the partner and nothing else: every channel is its merchant's.
FILE = {"partners": [{"id": "acme", "name": "Acme Retail", "branding": {"primary_color": "#aa3300"}}]}
SMS = {"sender": "ACMEIN", "events": ["OFD", "FAIL"]}
WHATSAPP = {"events": ["OFD", "FAIL"], "sender": "+14155238886",
            "content_sids": {"OFD": OFD_SID, "FAIL": {"en": FAIL_SID, "hi": FAIL_HI_SID}},
            "variables": {"FAIL": ["{{ customer.name }}", "{{ failure.reason }}", "{{ tracking_url }}"]}}
EMAIL = {"events": ["DEL"], "from_address": "Acme Retail <orders@acme.example.com>"}


def twilio_settings(vhost: str, sqlite_url: str, twilio: FakeTwilio, **more: Any) -> Settings:
    return make_settings(vhost, sqlite_url, twilio_account_sid=SID, twilio_auth_token=TOKEN,
                         twilio_api_url=twilio.url, twilio_content_url=twilio.url,
                         public_url="https://track.example.com", **more)


@pytest.fixture
async def shipcast(vhost: str, sqlite_url: str, mailbox: tuple[Mailbox, int],  # noqa: F811
                   msg91: FakeMsg91) -> AsyncIterator[ShipcastProcess]:  # noqa: F811
    """shipcast with Twilio (and MSG91, a provider plugin) and an SMTP server, acme's merchant owning every channel."""
    async with FakeTwilio(templates={REJECTED_SID: ("rejected", "UTILITY"),
                                     MARKETING_SID: ("approved", "MARKETING")}) as twilio:
        settings = twilio_settings(vhost, sqlite_url, twilio, smtp_host="127.0.0.1", smtp_port=mailbox[1])
        async with ShipcastProcess(settings, channels=["sms", "whatsapp", "email", "tracking"],
                                   plugins=[msg91.plugin]) as running:
            running.twilio = twilio  # type: ignore[attr-defined]
            running.mailbox = mailbox[0]  # type: ignore[attr-defined]
            running.msg91 = msg91  # type: ignore[attr-defined]
            await running.apply(FILE)
            yield running


async def put(merchant: httpx.AsyncClient, path: str, body: Any, *, patch: bool = False) -> dict[str, Any]:
    """Change a section as the merchant, and the config the answer shows."""
    answer = await (merchant.patch if patch else merchant.put)(f"/v1/partners/acme/config/{path}", json=body)
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


async def config(merchant: httpx.AsyncClient) -> dict[str, Any]:
    answer = await merchant.get("/v1/partners/acme/config")
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


async def post(shipcast: ShipcastProcess, *events: dict[str, Any]) -> None:
    answer = await shipcast.http.post("/v1/events", json=list(events))
    assert answer.status_code == 202, answer.text


def ordered(event_type: str, order_id: str, sequence: int = 1, **customer: Any) -> dict[str, Any]:
    body = event_body(event_type, **customer)
    body["order"]["order_id"], body["sequence"] = order_id, sequence
    return body


# -- each section, round trip: PUT, GET, and what it does -------------------------------------


async def test_whatsapp_content_templates_per_type_and_language_and_their_variables(
        shipcast: ShipcastProcess) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        shown = (await put(merchant, "channels/whatsapp", WHATSAPP))["channels"]["whatsapp"]
        assert shown["content_sids"] == WHATSAPP["content_sids"] and shown["variables"] == WHATSAPP["variables"]
        assert (await config(merchant))["channels"]["whatsapp"] == shown
    assert await bindings(shipcast, "shipcast.whatsapp") == {"acme.OFD", "acme.FAIL"}
    await post(shipcast, ordered("FAIL", "ORD-1", name="Ann O'Brien", language="hi"), ordered("OFD", "ORD-2"))
    await eventually(lambda: len(twilio.received) == 2)
    by_sid = {sent["ContentSid"]: sent for sent in twilio.received}
    assert set(by_sid) == {FAIL_HI_SID, OFD_SID}  # the Hindi FAIL template, the one OFD template
    fail = by_sid[FAIL_HI_SID]
    assert fail["To"] == "whatsapp:+919876543210" and fail["From"] == "whatsapp:+14155238886"
    variables = orjson.loads(fail["ContentVariables"])
    assert list(variables) == ["1", "2", "3"]  # the merchant's three, not the five shipped for FAIL
    assert variables["1"] == "Ann O'Brien" and variables["2"] == "Customer not reachable on phone; door locked"
    assert variables["3"].startswith("https://track.example.com/t/")
    assert orjson.loads(by_sid[OFD_SID]["ContentVariables"])["2"] == "ORD-2"  # OFD's shipped variables


async def test_the_tracking_pages_options(shipcast: ShipcastProcess) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    options = {"timezone": "America/New_York", "reschedule_days": 5, "link_days": 7, "rating": False}
    async with await partner_client(shipcast) as merchant:
        shown = (await put(merchant, "channels/tracking", options))["channels"]["tracking"]
        assert shown == options and (await config(merchant))["channels"]["tracking"] == options
        await put(merchant, "channels/sms", {**SMS, "events": ["FAIL"]})
        failed = ordered("FAIL", "ORD-7", sequence=1)
        await post(shipcast, failed)
        [text] = await eventually(lambda: twilio.received)
        # The link in the text works for link_days days, and not after.
        token = text["Body"].split("https://track.example.com/t/")[1].split()[0]
        now = time.time()
        assert read_tracking_token(shipcast.settings, token, now + 6 * DAY) == ("acme", "ORD-7")
        assert read_tracking_token(shipcast.settings, token, now + 8 * DAY) is None
        await eventually(lambda: shipcast.services.store.get_event(failed["event_id"]))  # on the page
        page = (await shipcast.http.get(f"/t/{token}")).text
        # Its times and the dates offered after the failure are New York's; five of them.
        zone = ZoneInfo("America/New_York")
        happened = datetime.fromisoformat(failed["occurred_at"]).astimezone(zone)
        assert f"<time>{happened:%d %b %Y, %H:%M}</time>" in page
        dates = re.findall(r'<option value="(\d{4}-\d\d-\d\d)"', page)
        tomorrow = datetime.now(UTC).astimezone(zone).date() + timedelta(days=1)
        assert dates == [(tomorrow + timedelta(days=n)).isoformat() for n in range(5)]
        # Delivered: no rating asked for; the merchant turns it on, and the page asks at once.
        delivered = ordered("DEL", "ORD-7", sequence=2)
        await post(shipcast, delivered)
        await eventually(lambda: shipcast.services.store.get_event(delivered["event_id"]))
        page = (await shipcast.http.get(f"/t/{token}")).text
        assert '<li data-type="DEL">' in page and "How was your delivery?" not in page
        await put(merchant, "channels/tracking", {"rating": True}, patch=True)
        await eventually(lambda: _page_with(shipcast, token, "How was your delivery?"))


async def _page_with(shipcast: ShipcastProcess, token: str, text: str) -> str | None:
    html = (await shipcast.http.get(f"/t/{token}")).text
    return html if text in html else None


async def test_sms_dlt_ids_per_language_reach_the_provider(shipcast: ShipcastProcess) -> None:
    gateway: FakeMsg91 = shipcast.msg91  # type: ignore[attr-defined]
    ids = {"OFD": {"en": EN_OFD, "hi": HI_OFD}}
    async with await partner_client(shipcast) as merchant:
        shown = (await put(merchant, "channels/sms", {**SMS, "provider": "msg91", "dlt_template_ids": ids}))
        assert shown["channels"]["sms"]["dlt_template_ids"] == ids
        assert (await config(merchant))["channels"]["sms"]["dlt_template_ids"] == ids
    await post(shipcast, ordered("OFD", "ORD-1", language="hi"), ordered("OFD", "ORD-2", language="en"))
    await eventually(lambda: len(gateway.received) == 2)
    by_id = {sent["DLT_TE_ID"]: sent["sms"][0]["message"] for sent in gateway.received}
    assert set(by_id) == {EN_OFD, HI_OFD}
    assert "ORD-1" in by_id[HI_OFD] and "डिलीवरी" in by_id[HI_OFD] and "ORD-2" in by_id[EN_OFD]


def quiet_now(zone: str = "Asia/Kolkata") -> dict[str, str]:
    """Quiet hours from an hour ago to two hours from now, in ``zone``."""
    now = datetime.now(UTC).astimezone(ZoneInfo(zone))
    return {"start": f"{now - timedelta(hours=1):%H:%M}", "end": f"{now + timedelta(hours=2):%H:%M}", "timezone": zone}


async def test_sms_critical_types_go_out_in_quiet_hours(shipcast: ShipcastProcess) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        await put(merchant, "channels/sms", {**SMS, "events": ["DEL"], "quiet_hours": quiet_now()})
        waits = ordered("DEL", "ORD-1")
        await post(shipcast, waits)
        held = await eventually(lambda: _held(merchant, "ORD-1"))
        assert held == "quiet hours" and twilio.received == []
        shown = (await put(merchant, "channels/sms", {"critical": ["DEL"]}, patch=True))["channels"]["sms"]
        assert shown["critical"] == ["DEL"] and (await config(merchant))["channels"]["sms"] == shown
        await post(shipcast, ordered("DEL", "ORD-2"))
        # ORD-2 goes at once; ORD-1, waiting out the quiet hours in a retry
        # tier, goes when it next comes round, now that DEL is critical.
        sent = await eventually(lambda: twilio.received if len(twilio.received) == 2 else None)
        assert sorted(_order_in(message["Body"]) for message in sent) == ["ORD-1", "ORD-2"]
        assert await _held(merchant, "ORD-2") is None


def _order_in(body: str) -> str:
    return next(word for word in body.split() if word.startswith("ORD-"))


async def _held(merchant: httpx.AsyncClient, order_id: str) -> str | None:
    found = (await merchant.get("/v1/partners/acme/customer-messages", params={"order_id": order_id})).json()
    return next((message["held"] for message in found["messages"] if message.get("held")), None)


async def test_email_transactional_types_carry_no_unsubscribe_link(shipcast: ShipcastProcess) -> None:
    box: Mailbox = shipcast.mailbox  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        shown = await put(merchant, "channels/email", {**EMAIL, "transactional": ["DEL"]})
        assert shown["channels"]["email"]["transactional"] == ["DEL"]
        assert (await config(merchant))["channels"]["email"]["transactional"] == ["DEL"]
        await post(shipcast, ordered("DEL", "ORD-1"))
        [first] = await eventually(lambda: box.messages)
        assert first["List-Unsubscribe"] is None
        await put(merchant, "channels/email", {"transactional": ["OFD", "FAIL"]}, patch=True)
        await post(shipcast, ordered("DEL", "ORD-2"))
        await eventually(lambda: len(box.messages) == 2)
    second = box.messages[1]
    assert "ORD-2" in str(second.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert second["List-Unsubscribe"].startswith("<https://track.example.com/u/")
    assert second["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


WRONG = [
    ("whatsapp", {**WHATSAPP, "content_sids": {"OFD": "HX123", "FAIL": FAIL_SID}},
     "channels.whatsapp.content_sids.OFD", "must be an approved content template's sid"),
    ("whatsapp", {**WHATSAPP, "content_sids": {"OFD": OFD_SID, "FAIL": {"hi": FAIL_HI_SID}}},
     "channels.whatsapp.content_sids.FAIL.en", "English is the fallback"),
    ("whatsapp", {**WHATSAPP, "content_sids": {"OFD": OFD_SID}},
     "channels.whatsapp.content_sids", "no approved content template for ['FAIL']"),
    ("whatsapp", {**WHATSAPP, "content_sids": {"OFD": OFD_SID, "FAIL": {"en": FAIL_SID, "hi": REJECTED_SID}}},
     "channels.whatsapp.content_sids.FAIL.hi", "is not approved for WhatsApp (status: rejected)"),
    ("whatsapp", {**WHATSAPP, "content_sids": {"OFD": MARKETING_SID, "FAIL": FAIL_SID}},
     "channels.whatsapp.content_sids.OFD", "must use UTILITY templates"),
    ("whatsapp", {**WHATSAPP, "variables": {"FAIL": ["{{ customer.name }}", "{{ tracking_url }}"]}},
     "channels.whatsapp.variables.FAIL", "the failure's reason"),
    ("whatsapp", {**WHATSAPP, "variables": {"OFD": ["{{ tracking_url }}", "{{ ''.__class__ }}"]}},
     "channels.whatsapp.variables.OFD.1", "'__class__' is not allowed"),
    ("whatsapp", {**WHATSAPP, "variables": {"DELIVERED": ["{{ tracking_url }}"]}}, "channels.whatsapp.variables",
     "unknown event types ['DELIVERED']"),
    ("whatsapp", {**WHATSAPP, "critical": ["DELIVERED"]}, "channels.whatsapp.critical",
     "unknown event types ['DELIVERED']"),
    ("tracking", {"timezone": "Mars/Olympus"}, "channels.tracking.timezone", "unknown time zone 'Mars/Olympus'"),
    ("tracking", {"reschedule_days": 15}, "channels.tracking.reschedule_days", "less than or equal to 14"),
    ("tracking", {"link_days": 0}, "channels.tracking.link_days", "greater than or equal to 1"),
    ("tracking", {"rating": "sometimes"}, "channels.tracking.rating", "Not a valid boolean"),
    ("tracking", {"colour": "#ffffff"}, "channels.tracking.colour", "Unknown field"),
    ("sms", {**SMS, "dlt_template_ids": {"OFD": "123"}}, "channels.sms.dlt_template_ids.OFD", "19-digit"),
    ("sms", {**SMS, "dlt_template_ids": {"OFD": {"en": EN_OFD}}}, "channels.sms.dlt_template_ids.OFD.hi",
     "OFD texts are sent in 'hi'"),
    ("sms", {**SMS, "dlt_template_ids": {"PICKUP": EN_OFD}}, "channels.sms.dlt_template_ids", "unknown event types"),
    ("sms", {**SMS, "critical": ["DELIVERED"]}, "channels.sms.critical", "unknown event types ['DELIVERED']"),
    ("sms", {**SMS, "critical": "DEL"}, "channels.sms.critical", "Not a valid list"),
    ("email", {**EMAIL, "transactional": ["DELIVERED"]}, "channels.email.transactional",
     "unknown event types ['DELIVERED']"),
    ("email", {**EMAIL, "transactional": "OFD"}, "channels.email.transactional", "Not a valid list"),
    ("email", {**EMAIL, "critical": ["DELIVERED"]}, "channels.email.critical", "unknown event types ['DELIVERED']"),
    ("email", {**EMAIL, "templates": {"DELIVERED": "Delivered\nYour order: {{ tracking_url }}"}},
     "channels.email.templates", "unknown event types ['DELIVERED']"),
]


@pytest.mark.parametrize(("channel", "body", "field", "says"), WRONG,
                         ids=[f"{field.removeprefix('channels.')}:{says[:24]}" for _, _, field, says in WRONG])
async def test_a_wrong_value_is_a_422_naming_the_field_and_nothing_changes(
        shipcast: ShipcastProcess, channel: str, body: dict[str, Any], field: str, says: str) -> None:
    async with await partner_client(shipcast) as merchant:
        before = await config(merchant)
        answer = await merchant.put(f"/v1/partners/acme/config/channels/{channel}", json=body)
        assert answer.status_code == 422, answer.text
        errors = answer.json()["errors"]
        assert field in errors and says in " ".join(errors[field]), errors
        assert await config(merchant) == before


# -- the same errors as the operator's partners apply ------------------------------------------

#: SMS sections wrong in their fields (the schema's checks) and in what they say (the channel's own checks).
BAD_SMS = {
    "fields": {"sender": "A", "events": ["OFD", "DELIVERED"], "quiet_hours": {"start": "21:00", "end": "21:00"},
               "dlt_template_ids": {"OFD": "123"}, "critical": ["PICKUP"]},
    "checks": {"sender": "ACMEIN", "events": ["OFD", "FAIL"], "dlt_template_ids": {"OFD": EN_OFD},
               "templates": {"FAIL": "Hi {{ customer.nmae }},\nwe missed you"}},
}


@pytest.mark.parametrize("wrong", list(BAD_SMS))
async def test_the_api_refuses_a_section_with_the_errors_partners_apply_gives(
        shipcast: ShipcastProcess, tmp_path: Path, wrong: str) -> None:
    section = BAD_SMS[wrong]
    document = {"partners": [{**FILE["partners"][0], "channels": {"sms": section}}]}
    applied = await shipcast.http.post("/v1/partners", json=document)
    assert applied.status_code == 422, applied.text
    async with await partner_client(shipcast) as merchant:
        changed = await merchant.put("/v1/partners/acme/config/channels/sms", json=section)
    assert changed.status_code == 422, changed.text
    merchants = changed.json()["errors"]
    assert len(merchants) >= 2 and all(field.startswith("channels.sms.") for field in merchants), merchants
    # The same fields and messages; apply names the partner first, as a document holds many.
    operators = applied.json()["errors"]
    assert operators == {f"partner 'acme': {field}": messages for field, messages in merchants.items()}
    # The command line says the same, a field a line.
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    done = await asyncio.to_thread(run_cli, shipcast.settings, "partners", "apply", "-f", str(path))
    assert done.returncode == 1, done.stdout
    for field, messages in merchants.items():
        assert f"  partner 'acme': {field}: {'; '.join(messages)}\n" in done.stderr, done.stderr


# -- test messages ----------------------------------------------------------------------------


async def test_a_test_email_reaches_the_smtp_server_in_the_partners_colours(shipcast: ShipcastProcess) -> None:
    box: Mailbox = shipcast.mailbox  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        await put(merchant, "channels/email", {**EMAIL, "templates": {
            "FAIL": "{{ partner.name }}: we missed you\n{{ failure.reason }}. Pick a new time: {{ tracking_url }}"}})
        sent = await merchant.post("/v1/partners/acme/config/channels/email/test",
                                   json={"to": "Me@Acme.example.in", "event_type": "FAIL"})
        assert sent.status_code == 202, sent.text
    [message] = box.messages
    assert sent.json()["status"] == 250 and sent.json()["response"] == f"sent as {message['Message-ID']}"
    assert sent.json()["to"] != "Me@Acme.example.in"  # masked in the answer
    assert message["From"] == "Acme Retail <orders@acme.example.com>" and message["To"] == "Me@Acme.example.in"
    assert message["Subject"] == "Acme Retail: we missed you"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and "Customer not reachable on phone; door locked" in plain.get_content()
    assert html is not None and "#aa3300" in html.get_content()
    assert "https://track.example.com/t/" in html.get_content()


async def test_a_test_whatsapp_message_reaches_twilio_with_its_content_template(shipcast: ShipcastProcess) -> None:
    twilio: FakeTwilio = shipcast.twilio  # type: ignore[attr-defined]
    async with await partner_client(shipcast) as merchant:
        await put(merchant, "channels/whatsapp", WHATSAPP)
        sent = await merchant.post("/v1/partners/acme/config/channels/whatsapp/test",
                                   json={"to": "98123 45678", "event_type": "FAIL", "language": "hi"})
        assert sent.status_code == 202, sent.text
    [message] = twilio.received
    assert sent.json()["response"] == f"SM{1:032d}"  # Twilio's sid for it
    assert message["To"] == "whatsapp:+919812345678" and message["From"] == "whatsapp:+14155238886"
    assert message["ContentSid"] == FAIL_HI_SID
    variables = orjson.loads(message["ContentVariables"])
    assert variables["1"] == "Priya Sharma" and variables["2"] == "Customer not reachable on phone; door locked"
    assert variables["3"].startswith("https://track.example.com/t/")


@pytest.fixture
async def development(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    """shipcast in development mode, with neither Twilio's credentials nor an SMTP server."""
    settings = make_settings(vhost, sqlite_url, development=True, public_url="https://track.example.com")
    async with ShipcastProcess(settings, channels=[]) as running:
        await running.apply(FILE)
        yield running


@pytest.mark.parametrize(("channel", "section", "to", "recipient", "shows"), [
    ("sms", SMS, "9812345678", "+919812345678", "Customer not reachable"),
    ("whatsapp", WHATSAPP, "+919812345678", "whatsapp:+919812345678", "{{2}} = Customer not reachable"),
    ("email", EMAIL, "me@acme.example.in", "me@acme.example.in", "Customer not reachable"),
])
async def test_without_credentials_a_test_message_lands_in_the_development_outbox(
        development: ShipcastProcess, channel: str, section: dict[str, Any], to: str, recipient: str,
        shows: str) -> None:
    async with await partner_client(development) as merchant:
        await put(merchant, f"channels/{channel}", section)
        sent = await merchant.post(f"/v1/partners/acme/config/channels/{channel}/test",
                                   json={"to": to, "event_type": "FAIL"})
        assert sent.status_code == 202, sent.text
    [kept] = await development.services.store.list_outbox(partner_id="acme")
    assert (kept["channel"], kept["recipient"], kept["event_type"]) == (channel, recipient, "FAIL")
    assert shows in kept["text"]
    assert sent.json()["response"].startswith(f"development outbox #{kept['id']}")  # the answer says so
    listed = await asyncio.to_thread(run_cli, development.settings, "outbox", "list", "--json")
    assert [row["id"] for row in orjson.loads(listed.stdout)] == [kept["id"]]


async def test_a_preview_names_an_undefined_variable_at_its_line(shipcast: ShipcastProcess) -> None:
    async with await partner_client(shipcast) as merchant:
        shown = await merchant.post("/v1/partners/acme/config/channels/sms/preview", json={
            "event_type": "OFD", "config": {**SMS, "templates": {"OFD": "{{ tracking_url }}\n{{ customer.nmae }}"}}})
    assert shown.status_code == 200, shown.text
    problems = shown.json()["problems"]
    assert not shown.json()["ok"] and problems
    assert {(p["field"], p["line"]) for p in problems} == {("templates.OFD", 2)}, problems
    assert all("nmae" in p["message"] for p in problems)
    assert {p["language"] for p in problems} == {"en", "hi"}  # one text, for every language


# -- taking effect in another process ---------------------------------------------------------


async def consumers(settings: Settings, queue: str) -> int:
    from shipcast.amqp.management import Management

    async with Management(settings) as management:
        return sum(int(found.get("consumers") or 0) for found in await management.queues() if found["name"] == queue)


async def test_a_change_reaches_a_worker_in_another_process_without_a_restart(vhost: str, sqlite_url: str) -> None:
    """The API (in this process, with no workers) takes the merchant's
    changes; a ``shipcast worker --channel sms`` process, started before them,
    sends with the new text, and stops getting the events once SMS is off."""
    first = "{{ partner.name }}, first text: {{ failure.reason }} {{ tracking_url }}"
    second = "{{ partner.name }}, second text: {{ failure.reason }} {{ tracking_url }}"
    async with FakeTwilio() as twilio:
        settings = twilio_settings(vhost, sqlite_url, twilio)
        async with ShipcastProcess(settings, workers=False) as api:
            await api.services.broker.connect(timeout=30)
            await api.apply(FILE)
            worker = Subprocess(settings, "worker", "--channel", "sms").start()
            output = ""
            try:
                await eventually(lambda: consumers(settings, "shipcast.sms"), timeout=60, interval=0.5)
                async with await partner_client(api) as merchant:
                    await put(merchant, "channels/sms", {**SMS, "templates": {"FAIL": first}})
                    assert await bindings(api, "shipcast.sms") == {"acme.OFD", "acme.FAIL"}
                    await post(api, ordered("FAIL", "ORD-1"))
                    await eventually(lambda: twilio.received, timeout=30)
                    assert twilio.received[0]["Body"].startswith("Acme Retail, first text: Customer not reachable")
                    # The worker has acme's config in memory now: the change reaches it all the same.
                    await put(merchant, "channels/sms", {"templates": {"FAIL": second}}, patch=True)
                    await post(api, ordered("FAIL", "ORD-2"))
                    await eventually(lambda: len(twilio.received) == 2, timeout=30)
                    assert twilio.received[1]["Body"].startswith("Acme Retail, second text: Customer not reachable")
                    # Off: the queue's bindings go, and the worker gets nothing more.
                    off = await merchant.delete("/v1/partners/acme/config/channels/sms")
                    assert off.status_code == 200 and "sms" not in off.json()["channels"]
                    assert await bindings(api, "shipcast.sms") == set()
                    third = ordered("FAIL", "ORD-3")
                    await post(api, third)
                    await asyncio.sleep(1.5)
                    assert len(twilio.received) == 2
                    assert await api.services.store.list_deliveries(event_id=third["event_id"], channel="sms") == []
            finally:
                output = await asyncio.to_thread(worker.stop)
            assert api.workers == [] and worker.process is not None and worker.process.returncode == 0, output
