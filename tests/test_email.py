"""The email channel end to end: a real SMTP server (aiosmtpd) receives what
shipcast sends through RabbitMQ; the tests parse it: both parts, the headers,
one-click unsubscribe, hostile order data escaped, SMTP errors mapped."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller

from tests.bound import example
from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

from .conftest import free_port, make_settings
from .helpers import ShipcastProcess, eventually, settled

pytestmark = pytest.mark.broker


class Mailbox:
    """An SMTP server's handler: keeps every message; ``refuse`` answers RCPT
    with a code (a full mailbox, an unknown user) instead."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []  # as received, before any parser saw them
        self.refuse: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.refuse:
            return self.refuse.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 Message accepted"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def mail_settings(vhost: str, sqlite_url: str, mailbox: tuple[Mailbox, int]) -> Settings:
    return make_settings(vhost, sqlite_url, smtp_host="127.0.0.1", smtp_port=mailbox[1],
                         public_url="https://track.example.com")


def email_doc(**config: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme Retail",
                          "branding": {"primary_color": "#123456", "logo_url": "https://acme.example.com/l.png"},
                          "channels": {"email": {"events": ["OFD", "DEL", "FAIL"],
                                                 "from_address": "Acme Retail <orders@acme.example.com>",
                                                 "reply_to": "help@acme.example.com", **config}}}]}


def event_body(event_type: str, **customer: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(example(event_type).to_json())
    body["order"]["customer"].update(customer)
    return body


async def test_an_email_has_both_parts_the_headers_and_escapes_hostile_data(
        mail_settings: Settings, mailbox: tuple[Mailbox, int]) -> None:
    box, _ = mailbox
    async with ShipcastProcess(mail_settings) as shipcast:
        await shipcast.apply(email_doc())
        hostile = '<script>alert("x")</script> Priya'
        event = event_body("OFD", name=hostile)
        await shipcast.http.post("/v1/events", json=event)
        [message] = await eventually(lambda: box.messages)
    assert message["From"] == "Acme Retail <orders@acme.example.com>"
    assert message["To"] == "priya@example.com" and message["Reply-To"] == "help@acme.example.com"
    assert message["Subject"] == "Your order ORD-10023 is out for delivery"
    assert message["Message-ID"].endswith("@acme.example.com>") and event["event_id"] in message["Message-ID"]
    assert message["Date"] and message["List-Unsubscribe"] is None  # an OTP is transactional
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    plain, markup = text.get_content(), html.get_content()
    assert "4821" in plain and hostile in plain and "https://track.example.com/t/" in plain
    assert "<script>" not in markup and "&lt;script&gt;" in markup  # autoescaped
    assert "#123456" in markup and "https://acme.example.com/l.png" in markup  # the merchant's branding


async def test_a_review_request_carries_one_click_unsubscribe_which_is_honoured(
        mail_settings: Settings, mailbox: tuple[Mailbox, int]) -> None:
    box, _ = mailbox
    async with ShipcastProcess(mail_settings) as shipcast:
        await shipcast.apply(email_doc())
        await shipcast.http.post("/v1/events", json=event_body("DEL"))
        [message] = await eventually(lambda: box.messages)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = message["List-Unsubscribe"].strip("<>")
        assert link.startswith("https://track.example.com/u/")
        path = link.removeprefix("https://track.example.com")
        assert (await shipcast.http.post(path + "x")).status_code == 404  # a forged token
        page = await shipcast.http.get(path, headers={"authorization": ""})
        assert page.status_code == 200 and "Unsubscribe" in page.text
        done = await shipcast.http.post(path, data={"List-Unsubscribe": "One-Click"}, headers={"authorization": ""})
        assert done.status_code == 200
        # Another review request is not sent; a failure notice, transactional, still is.
        review, failure = event_body("DEL"), event_body("FAIL")
        await shipcast.http.post("/v1/events", json=[review, failure])
        [row] = await eventually(settled(shipcast, review["event_id"], ("delivered", "dead", "skipped")))
        assert row["status"] == "skipped" and "opted out" in row["last_error"]
        await eventually(lambda: len(box.messages) == 2)
        assert box.messages[1]["Subject"].startswith("We missed you")


async def test_one_click_unsubscribe_headers_arrive_verbatim(mail_settings: Settings,
                                                              mailbox: tuple[Mailbox, int]) -> None:
    """RFC 8058: a client offers one-click unsubscribe only when it finds the
    URL itself in List-Unsubscribe, not RFC 2047 encoded-words, which is
    what the header was folded into at 78 columns."""
    box, _ = mailbox
    async with ShipcastProcess(mail_settings) as shipcast:
        await shipcast.apply(email_doc())
        await shipcast.http.post("/v1/events", json=event_body("DEL"))
        [raw] = await eventually(lambda: box.raw)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html = message.get_body(("html",))
    assert html is not None
    # The link the customer can click in the message is the one the header carries.
    [url] = re.findall(r'href="(https://track\.example\.com/u/[^"]+)"', html.get_content())
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert b"=?utf-8?" not in raw.lower()
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert f"List-Unsubscribe: <{url}>".encode() in headers  # one line, as set
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in headers


@pytest.mark.parametrize(("answer", "outcome"), [
    ("550 5.1.1 No such user", "dead"),
    ("452 4.2.2 Mailbox full, try later", "delivered"),  # retried, then accepted
])
async def test_smtp_refusals_are_dead_letters_or_retries(mail_settings: Settings, mailbox: tuple[Mailbox, int],
                                                         answer: str, outcome: str) -> None:
    box, _ = mailbox
    box.refuse = [answer]
    async with ShipcastProcess(mail_settings) as shipcast:
        await shipcast.apply(email_doc())
        event = event_body("FAIL")
        await shipcast.http.post("/v1/events", json=event)

        [row] = await eventually(settled(shipcast, event["event_id"]), timeout=20)
        assert row["status"] == outcome
        [first, *_] = await shipcast.services.store.list_attempts(event["event_id"], "email")
        assert first["status"] == int(answer[:3]) and answer[:3] in first["error"]
        assert len(box.messages) == (1 if outcome == "delivered" else 0)


async def test_a_template_without_what_it_needs_is_refused_at_apply(mail_settings: Settings) -> None:
    async with ShipcastProcess(mail_settings, channels=[]) as shipcast:
        with pytest.raises(ConfigError, match=r"channels.email.templates.DEL.*rating"):
            await shipcast.apply(email_doc(templates={"DEL": "Thanks\n{{ rating }}"}))
        with pytest.raises(ConfigError, match=r"channels.email.templates.DEL.*subject on its first line"):
            await shipcast.apply(email_doc(templates={"DEL": "Thanks for your order {{ order.order_id }}"}))
        with pytest.raises(ConfigError, match="from_address"):
            await shipcast.apply(email_doc(from_address="nobody"))
        # Every message carries the tracking link (where a DEL's customer rates it), a FAIL its reason.
        with pytest.raises(ConfigError, match=r"channels.email.templates.DEL.*must give the tracking link"):
            await shipcast.apply(email_doc(templates={"DEL": "Delivered\nThanks, {{ customer.name }}!"}))
        with pytest.raises(ConfigError, match=r"channels.email.templates.FAIL.*must give the failure's reason"):
            await shipcast.apply(email_doc(templates={"FAIL": "We missed you\nPick a time: {{ tracking_url }}"}))
        await shipcast.apply(email_doc(templates={
            "DEL": "Delivered\nRate us: {{ tracking_url }}",
            "FAIL": "We missed you\n{{ failure.reason }}. Pick a time: {{ tracking_url }}"}))


@pytest.mark.parametrize("language", ["en", "hi"])
@pytest.mark.parametrize("event_type", ["OFD", "DEL", "FAIL", "RET"])
def test_every_email_composes_for_every_event_type_and_language(event_type: str, language: str) -> None:
    from tests.bound import check_templates
    from shipcast.model.partners import Partner
    from shipcast.plugins.email import EmailChannel
    from shipcast.app.services import Services

    settings = make_settings("unused", "sqlite+aiosqlite:///:memory:", public_url="https://track.example.com")
    config = {"events": ["*"], "from_address": "Acme <orders@acme.example.com>", "transactional": ["OFD"]}
    assert check_templates(settings, "email", "acme", "Acme", {}, config) == {}
    channel = EmailChannel(Services.from_settings(settings))
    body = orjson.loads(example(event_type).to_json())
    body["order"]["customer"]["language"] = language
    from tests.bound import parse_event

    event = parse_event(body)
    partner = Partner("acme", "Acme Retail", {"support_email": "care@acme.example.com"}, {"email": config})
    message = channel.compose(event, partner, config, "priya@example.com")
    assert message["Subject"] and "ORD-10023" in message["Subject"]
    assert message["Reply-To"] == "care@acme.example.com"  # no reply_to set: the merchant's support address
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert "https://track.example.com/t/" in html.get_content()  # the tracking button, always
    assert "ORD-10023" in plain.get_content()
    assert (message["List-Unsubscribe"] is None) == (event_type == "OFD")


def test_unsubscribe_links_outlive_a_rotation_of_the_secret_key(mail_settings: Settings) -> None:
    """Links in mail already sent keep working after SHIPCAST_SECRET_KEY is
    rotated (the new key first, the old one after it), and stop once the old
    key is dropped; a link never verifies under another key."""
    import base64
    import os

    from shipcast.security.links import read_unsubscribe_token, unsubscribe_token

    old = mail_settings
    token = unsubscribe_token(old, "email", "acme", "asha@example.com")
    new_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    rotated = old.model_copy(update={"secret_key": f"{new_key},{old.secret_key}"})
    dropped = old.model_copy(update={"secret_key": new_key})
    found = read_unsubscribe_token(rotated, token)
    assert found is not None and found[:2] == ("email", "acme")
    assert read_unsubscribe_token(dropped, token) is None
    assert read_unsubscribe_token(dropped, unsubscribe_token(rotated, "email", "acme", "asha@example.com"))


def test_every_unsubscribe_link_verifies_whatever_bytes_its_mac_holds(mail_settings: Settings) -> None:
    """A link's MAC is binary, and about one in twenty holds the separator's byte."""
    from shipcast.security.links import read_unsubscribe_token, unsubscribe_token

    addresses = [f"customer{i}@example.com" for i in range(1000)]
    assert all(read_unsubscribe_token(mail_settings, unsubscribe_token(mail_settings, "email", "acme", address))
               for address in addresses)
