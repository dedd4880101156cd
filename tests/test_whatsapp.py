"""The WhatsApp channel through the real twilio SDK and a local server that
speaks Twilio's Messages API: approved content templates with their
variables, and the fallback to SMS for a customer WhatsApp cannot reach."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from shipcast import metrics
from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

from .helpers import ShipcastProcess, eventually, settled
from .test_sms import FakeTwilio, event_body, sms_settings, twilio, twilio_callback  # noqa: F401 (fixtures)

pytestmark = pytest.mark.broker
OFD_SID, FAIL_SID = "HX" + "a" * 32, "HX" + "b" * 32


def wa_doc(**config: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"whatsapp": {
        "events": ["OFD", "FAIL"], "sender": "+14155238886",
        "content_sids": {"OFD": OFD_SID, "FAIL": FAIL_SID}, **config}}}]}


async def test_a_content_template_goes_with_its_variables(sms_settings: Settings, twilio: FakeTwilio) -> None:
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(variables={"FAIL": ["{{ customer.name }}", "{{ failure.reason }}"]}))
        await shipcast.http.post("/v1/events", json=[event_body("OFD"), event_body("FAIL", name="Ann O'Brien & Co")])
        await eventually(lambda: len(twilio.received) == 2)
    by_sid = {sent["ContentSid"]: sent for sent in twilio.received}
    ofd = by_sid[OFD_SID]
    assert ofd["To"] == "whatsapp:+919876543210" and ofd["From"] == "whatsapp:+14155238886"
    assert set(ofd) == {"To", "From", "ContentSid", "ContentVariables", "StatusCallback"}
    variables = orjson.loads(ofd["ContentVariables"])
    assert variables["1"] == "Acme Retail" and variables["2"] == "ORD-10023" and variables["4"] == "4821"
    assert variables["5"].startswith("https://track.example.com/t/")
    assert orjson.loads(by_sid[FAIL_SID]["ContentVariables"]) == {
        "1": "Ann O'Brien & Co", "2": "Customer not reachable on phone; door locked"}  # as written, not HTML


@pytest.mark.parametrize("code", [63016, 63003])
async def test_a_customer_whatsapp_cannot_reach_gets_a_text_when_the_merchant_allows(
        sms_settings: Settings, twilio: FakeTwilio, code: int) -> None:
    twilio.whatsapp_errors = [(400, code)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(fallback_sms_sender="ACMEIN"))
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        await eventually(lambda: len(twilio.received) == 2)
        await eventually(lambda: shipcast.services.store.list_deliveries(
            event_id=event["event_id"], channel="whatsapp", status="delivered"))
        [attempt] = await shipcast.services.store.list_attempts(event["event_id"], "whatsapp")
    whatsapp, text = twilio.received
    assert whatsapp["To"] == "whatsapp:+919876543210"
    assert text["To"] == "+919876543210" and text["From"] == "ACMEIN" and "4821" in text["Body"]
    assert f"(Twilio {code}" in attempt["response"] and "sent as SMS SM" in attempt["response"]


async def test_a_failure_twilio_reports_later_falls_back_too_and_is_remembered(sms_settings: Settings,
                                                                                twilio: FakeTwilio) -> None:
    """Twilio usually accepts a WhatsApp message and reports later that the
    customer is not on WhatsApp: the signed status callback sends the text
    instead, and that customer's next message goes straight to SMS."""
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc(fallback_sms_sender="ACMEIN"))
        first = event_body("OFD")
        await shipcast.http.post("/v1/events", json=first)
        await eventually(settled(shipcast, first["event_id"], ("delivered",)))
        await eventually(lambda: shipcast.services.store.get_event(first["event_id"]))  # archived
        [accepted] = twilio.received
        sid = (await shipcast.services.store.list_attempts(first["event_id"], "whatsapp"))[0]["response"]
        assert await twilio_callback(shipcast, sid, "failed", ErrorCode="63003", To=accepted["To"]) == 204
        await eventually(lambda: len(twilio.received) == 2)
        text = twilio.received[1]
        assert text["To"] == "+919876543210" and text["From"] == "ACMEIN" and "4821" in text["Body"]
        rows = await eventually(settled(shipcast, first["event_id"], ("delivered",)))
        assert sorted(row["channel"] for row in rows) == ["sms", "whatsapp"]  # the text settled the SMS claim
        attempts = await shipcast.services.store.list_attempts(first["event_id"], "whatsapp")
        assert "Twilio 63003" in attempts[-1]["response"] and "sent as SMS" in attempts[-1]["response"]
        second = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=second)
        await eventually(lambda: len(twilio.received) == 3)
        assert twilio.received[2]["From"] == "ACMEIN"  # no second try on WhatsApp
        await asyncio.sleep(0.5)
        assert len(twilio.received) == 3


async def test_without_fallback_it_is_a_dead_letter_with_twilios_code(sms_settings: Settings,
                                                                       twilio: FakeTwilio) -> None:
    twilio.whatsapp_errors = [(400, 63016)]
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(wa_doc())
        event = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=event)
        [row] = await eventually(lambda: shipcast.services.store.list_deliveries(event_id=event["event_id"],
                                                                                 status="dead"))
        assert row["last_error"].startswith("Twilio 63016") and len(twilio.received) == 1


async def test_the_fallback_never_texts_twice_when_sms_is_on_too(sms_settings: Settings,
                                                                  twilio: FakeTwilio) -> None:
    twilio.whatsapp_errors = [(400, 63016)]
    doc = wa_doc(fallback_sms_sender="ACMEIN")
    doc["partners"][0]["channels"]["sms"] = {"events": ["OFD"], "sender": "ACMEIN"}
    async with ShipcastProcess(sms_settings) as shipcast:
        await shipcast.apply(doc)
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)

        async def settled() -> bool:
            rows = await shipcast.services.store.list_deliveries(event_id=event["event_id"])
            return len(rows) == 2 and all(r["status"] in ("delivered", "skipped") for r in rows)

        await eventually(settled, timeout=20)
    texts = [sent for sent in twilio.received if not sent["To"].startswith("whatsapp:")]
    assert len(texts) == 1


async def test_a_missing_template_or_a_broken_variable_is_refused(sms_settings: Settings) -> None:
    async with ShipcastProcess(sms_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError, match=r"content_sids.*\['FAIL'\]"):
            await shipcast.apply(wa_doc(content_sids={"OFD": OFD_SID}))
        with pytest.raises(ConfigError, match=r"channels.whatsapp.variables.OFD.*otpp"):
            await shipcast.apply(wa_doc(variables={"OFD": ["{{ otpp.code }}"]}))


async def test_after_a_fallback_text_the_sms_channel_sends_nothing_more(sms_settings: Settings,
                                                                        twilio: FakeTwilio) -> None:
    """WhatsApp's fallback texts first; the SMS channel's copy of the event
    (here published to it later) finds the text sent and sends nothing."""
    twilio.whatsapp_errors = [(400, 63016)]
    async with ShipcastProcess(sms_settings, channels=["whatsapp"]) as shipcast:
        doc = wa_doc(fallback_sms_sender="ACMEIN")
        doc["partners"][0]["channels"]["sms"] = {"events": ["OFD"], "sender": "ACMEIN"}
        await shipcast.apply(doc)
        event = event_body("OFD")
        await shipcast.http.post("/v1/events", json=event)
        await eventually(lambda: shipcast.services.store.list_deliveries(
            event_id=event["event_id"], channel="sms", status="delivered"))
        [attempt] = await shipcast.services.store.list_attempts(event["event_id"], "sms")
        assert attempt["response"].startswith("sent as WhatsApp's fallback: SM")
    skipped = metrics.value("shipcast_targets_skipped_total", channel="sms", reason="delivered")
    async with ShipcastProcess(sms_settings, channels=["sms"]):  # now the SMS worker takes its copy
        await eventually(lambda: metrics.value("shipcast_targets_skipped_total", channel="sms",
                                               reason="delivered") > skipped)
    texts = [sent for sent in twilio.received if not sent["To"].startswith("whatsapp:")]
    assert len(texts) == 1
