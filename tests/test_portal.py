"""The portal's doors: invitations that work once and expire, sessions
(cookie flags, idle expiry, revocation, signing out), CSRF on every form,
the CSP on every page, and the audit log of changes made through the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller

from shipcast.store.tables import events
from tests.bound import example

from .conftest import free_port, make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, run_cli
from .portal import Visitor, invitation, signed_in, two_partners

pytestmark = pytest.mark.broker


@pytest.fixture
async def portal(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with two_partners(make_settings(vhost, sqlite_url)) as running:
        yield running


async def test_an_invitation_signs_in_once(portal: ShipcastProcess) -> None:
    link = await invitation(portal, "dev@acme.example.com", "acme", "viewer")
    token = link.split("token=", 1)[1]
    async with Visitor(portal) as browser:
        # Opening the link (as a mail scanner would) shows whom it signs in, and uses nothing up.
        shown = await browser.get(link)
        assert shown.status_code == 200 and "dev@acme.example.com" in shown.text and "viewer" in shown.text
        assert (await browser.get(link)).status_code == 200
        signed = await browser.post("/portal/signin", {"token": token}, csrf=False)
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "shipcast_portal=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Path=/portal" in cookie and "Secure" not in cookie  # SHIPCAST_PUBLIC_URL is http here
        home = await browser.get("/portal/")
        assert home.status_code == 303 and home.headers["location"] == "/portal/p/acme/"
    async with Visitor(portal) as other:
        again = await other.post("/portal/signin", {"token": token}, csrf=False)
        assert again.status_code == 400 and "used already" in again.text
        assert "shipcast_portal" not in again.headers.get("set-cookie", "")
        assert "used already" in (await other.get(link)).text


async def test_an_expired_or_made_up_link_signs_in_nobody(portal: ShipcastProcess) -> None:
    from shipcast.app.people import invite

    from .portal import TESTS

    made = await invite(portal.services, email="late@acme.example.com", partner_id="acme", role="admin",
                        invited_by=TESTS, ttl=1)
    token = made["link"].split("token=", 1)[1]
    async with Visitor(portal) as browser:
        # Wait out the link's one second, then it is refused, shown and posted alike.
        import asyncio

        await asyncio.sleep(1.2)
        assert "expired" in (await browser.get(f"/portal/signin?token={token}")).text
        assert (await browser.post("/portal/signin", {"token": token}, csrf=False)).status_code == 400
        assert (await browser.post("/portal/signin", {"token": "made-up"}, csrf=False)).status_code == 400
        assert (await browser.post("/portal/signin", {"token": "x" * 5000}, csrf=False)).status_code == 400
        # Not signed in: a page sends you to sign in.
        page = await browser.get("/portal/p/acme/")
        assert page.status_code == 303 and page.headers["location"] == "/portal/signin"


async def test_invitations_refuse_what_is_wrong_naming_the_field(portal: ShipcastProcess) -> None:
    http = portal.http
    bad = [({"email": "not-an-address", "partner_id": "acme"}, "email"),
           ({"email": "a@b.example", "partner_id": "nobody"}, "partner_id"),
           ({"email": "x,evil@b.example", "partner_id": "acme"}, "email"),  # one address, not a list
           ({"email": "Dev <dev@b.example>", "partner_id": "acme"}, "email"),
           ({"email": "a@b.example", "partner_id": "acme", "role": "owner"}, "role"),
           ({"email": "a@b.example"}, "operator"),
           ({"email": "a@b.example", "partner_id": "acme", "operator": True}, "operator")]
    for body, field in bad:
        response = await http.post("/v1/portal/invitations", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.text, (body, response.text)
    made = await http.post("/v1/portal/invitations", json={"email": "ops@example.com", "operator": True})
    assert made.status_code == 201 and made.json()["role"] == "operator"
    assert made.json()["link"].startswith(f"{portal.settings.public_url}/portal/signin?token=")
    # A partner's own token cannot invite anyone.
    token = (await http.post("/v1/partners/acme/tokens")).json()["token"]
    refused = await http.post("/v1/portal/invitations", json={"email": "x@acme.example.com", "partner_id": "acme"},
                              headers={"authorization": f"Bearer {token}"})
    assert refused.status_code == 403


async def test_sessions_end_when_signed_out_revoked_or_idle(portal: ShipcastProcess) -> None:
    browser = await signed_in(portal, "dev@acme.example.com", "acme")
    try:
        assert (await browser.get("/portal/signin")).status_code == 200
        # Signing out needs the form's token, then the cookie no longer opens anything.
        assert (await browser.post("/portal/signout", {"csrf": "wrong"})).status_code == 403
        out = await browser.post("/portal/signout")
        assert out.status_code == 303
    finally:
        await browser.aclose()
    # The same cookie, kept by someone who copied it, is dead too.
    cookie = out.request.headers["cookie"]
    async with Visitor(portal) as copy:
        dead = await copy.http.get("/portal/p/acme/", headers={"cookie": cookie})
        assert dead.status_code == 303 and dead.headers["location"] == "/portal/signin"

    # Revoked by the operator, through the API.
    browser = await signed_in(portal, "dev2@acme.example.com", "acme")
    try:
        live = (await portal.http.get("/v1/portal/sessions", params={"partner_id": "acme"})).json()
        mine = next(s for s in live if s["email"] == "dev2@acme.example.com")
        assert "csrf" not in mine
        assert (await portal.http.delete(f"/v1/portal/sessions/{mine['id']}")).status_code == 200
        assert (await portal.http.delete(f"/v1/portal/sessions/{mine['id']}")).status_code == 404
        assert (await browser.get("/portal/")).status_code == 303
        assert (await browser.get("/portal/")).headers["location"] == "/portal/signin"
    finally:
        await browser.aclose()

    # Idle past SHIPCAST_PORTAL_SESSION_IDLE: the session's last-seen time is moved back.
    browser = await signed_in(portal, "dev3@acme.example.com", "acme")
    try:
        import sqlalchemy as sa

        from shipcast.store.tables import portal_sessions

        store = portal.services.store
        idle = datetime.now(UTC) - timedelta(seconds=portal.settings.portal_session_idle + 5)
        await store._run([(portal_sessions.update().where(portal_sessions.c.email == "dev3@acme.example.com")
                           .values(last_seen=idle), None)])
        assert (await browser.get("/portal/")).headers["location"] == "/portal/signin"
        rows = await store._rows(sa.select(portal_sessions.c.revoked_at)
                                 .where(portal_sessions.c.email == "dev3@acme.example.com"))
        assert rows and rows[0].revoked_at is None  # expired by time, not revoked
    finally:
        await browser.aclose()


async def test_pages_carry_a_nonce_csp_and_no_inline_script(portal: ShipcastProcess) -> None:
    async with Visitor(portal) as browser:
        page = await browser.get("/portal/signin")
        policy = page.headers["content-security-policy"]
        nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        scripts = page.text.count("<script")
        assert scripts == page.text.count(f'<script nonce="{nonce}" src="/portal/static/') == 1
        assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
        assert (await browser.get("/portal/signin")).headers["content-security-policy"] != policy  # a new nonce
        script = await browser.get("/portal/static/portal.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert (await browser.get("/portal/static/..%2Fsignin.html")).status_code == 404
        assert (await browser.get("/portal/static/base.html")).status_code == 404


async def test_https_public_url_makes_the_cookie_secure(vhost: str, sqlite_url: str) -> None:
    settings = make_settings(vhost, sqlite_url, public_url="https://notify.example.com",
                             portal_name="Acme Logistics Partners", portal_logo_url="https://cdn.example.com/logo.svg")
    async with ShipcastProcess(settings, workers=False) as running:
        await eventually(lambda: running.services.broker.connected)
        await running.apply(partners_doc("acme", "https://acme.example.com/hooks"))
        link = await invitation(running, "dev@acme.example.com", "acme")
        async with Visitor(running) as browser:
            signed = await browser.post("/portal/signin", {"token": link.split("token=", 1)[1]}, csrf=False)
            cookies = signed.headers.get_list("set-cookie")
            assert len(cookies) == 2 and all("Secure" in cookie for cookie in cookies), cookies  # session, notice
            # The operator's name and logo head every page.
            shown = await browser.get("/portal/signin")
            assert "<title>Sign in · Acme Logistics Partners</title>" in shown.text
            assert '<img src="https://cdn.example.com/logo.svg" alt="">' in shown.text


async def test_the_command_line_invites_and_revokes(portal: ShipcastProcess) -> None:
    printed = run_cli(portal.settings, "portal", "invite", "--partner", "acme", "--email", "cli@acme.example.com",
                      "--role", "viewer")
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip().splitlines()[-1]
    assert link.startswith(f"{portal.settings.public_url}/portal/signin?token=")
    assert "viewer of acme" in printed.stdout
    wrong = run_cli(portal.settings, "portal", "invite", "--email", "x@example.com")
    assert wrong.returncode != 0 and "--partner, or --operator" in wrong.stderr
    unknown = run_cli(portal.settings, "portal", "invite", "--partner", "nobody", "--email", "x@example.com")
    assert unknown.returncode != 0 and "nobody" in unknown.stderr
    async with Visitor(portal) as browser:
        assert (await browser.post("/portal/signin", {"token": link.split("token=", 1)[1]},
                                   csrf=False)).status_code == 303
        assert (await browser.get("/portal/signin")).status_code == 200
    listed = run_cli(portal.settings, "portal", "sessions", "--partner", "acme")
    assert "cli@acme.example.com" in listed.stdout
    revoked = run_cli(portal.settings, "portal", "revoke", "--email", "cli@acme.example.com", "--partner", "acme")
    assert revoked.returncode == 0 and "revoked 1 session" in revoked.stdout
    assert "cli@acme.example.com" not in run_cli(portal.settings, "portal", "sessions").stdout


async def test_changes_through_the_api_are_audited_without_secrets(portal: ShipcastProcess) -> None:
    http = portal.http
    made = (await http.post("/v1/partners/acme/tokens", params={"name": "ci"})).json()
    await http.delete(f"/v1/partners/acme/tokens/{made['id']}")
    doc = partners_doc("acme", "https://acme.example.com/v2", secret="whsec_" + "A" * 43 + "=")
    response = await http.post("/v1/partners", json=doc)
    assert response.status_code == 200, response.text
    log = await portal.services.store.list_audit("acme")
    actions = [row["action"] for row in log]
    assert actions[:3] == ["partner.apply", "token.revoke", "token.create"], actions
    applied = log[0]
    assert applied["actor"] == "operator token" and applied["via"] == "api"
    before = applied["before"]["channels"]["webhook"]["endpoints"][0]
    after = applied["after"]["channels"]["webhook"]["endpoints"][0]
    assert before["url"] == "https://acme.example.com/hooks" and after["url"] == "https://acme.example.com/v2"
    text = str(log)
    assert made["token"] not in text and "whsec_" not in text and "gAAAAA" not in text  # nor encrypted
    assert after["secret"] == "…redacted…" and "previous_secrets" not in after
    # A partner's token is named in what it changed.
    token = (await http.post("/v1/partners/acme/tokens", params={"name": "theirs"})).json()
    await http.post("/v1/partners/acme/recover", params={"since": "2026-01-01T00:00:00Z"},
                    headers={"authorization": f"Bearer {token['token']}"})
    latest = (await portal.services.store.list_audit("acme", limit=1))[0]
    assert latest["action"] == "messages.recover" and latest["actor"] == f"token {token['id']} of acme"
    # Keyset pages: the next page starts before the last id seen.
    first = await portal.services.store.list_audit("acme", limit=2)
    rest = await portal.services.store.list_audit("acme", before_id=first[-1]["id"])
    assert [r["id"] for r in first + rest] == [r["id"] for r in await portal.services.store.list_audit("acme")]


async def test_an_invitation_is_emailed_when_smtp_is_configured(vhost: str, sqlite_url: str) -> None:
    from .test_email import Mailbox

    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = make_settings(vhost, sqlite_url, smtp_host="127.0.0.1", smtp_port=port,
                                 smtp_from_address="Acme Logistics <portal@notify.example.com>")
        async with ShipcastProcess(settings, workers=False) as running:
            await eventually(lambda: running.services.broker.connected)
            await running.apply(partners_doc("acme", "https://acme.example.com/hooks"))
            made = await running.http.post("/v1/portal/invitations",
                                           json={"email": "dev@acme.example.com", "partner_id": "acme"})
            assert made.status_code == 201 and made.json()["emailed"] is True
            [message] = box.messages
            assert message["To"] == "dev@acme.example.com" and "portal@notify.example.com" in message["From"]
            assert made.json()["link"] in message.get_content()
            # The mail server refusing: the invitation stands, its link answered, the failure said.
            box.refuse.append("550 no such user")
            refused = await running.http.post("/v1/portal/invitations",
                                              json={"email": "gone@acme.example.com", "partner_id": "acme"})
            assert refused.status_code == 201 and refused.json()["emailed"] is False
            async with Visitor(running) as browser:
                token = refused.json()["link"].split("token=", 1)[1]
                assert (await browser.post("/portal/signin", {"token": token}, csrf=False)).status_code == 303
    finally:
        controller.stop()
    # Without SHIPCAST_SMTP_HOST nobody is emailed: the link is for the operator to pass on.
    async with ShipcastProcess(make_settings(vhost, sqlite_url), workers=False) as running:
        await eventually(lambda: running.services.broker.connected)
        made = await running.http.post("/v1/portal/invitations", json={"email": "ops@example.com", "operator": True})
        assert made.json()["emailed"] is False


async def test_a_message_no_target_takes_stops_waiting_for_one(vhost: str, sqlite_url: str, receiver: Receiver) -> None:
    """An event whose type no endpoint takes is archived and never delivered:
    its page waits for a delivery a minute, then stops polling and says why."""
    async with ShipcastProcess(make_settings(vhost, sqlite_url)) as shipcast:
        await shipcast.apply(partners_doc("acme", receiver.url, events=["OFD"]))
        event = example("DEL", partner_id="acme")
        assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                         headers={"content-type": "application/json"})).status_code == 202
        await eventually(lambda: shipcast.services.store.get_event(event.event_id))
        browser = await signed_in(shipcast, "dev@acme.example.com", "acme", "viewer")
        try:
            live = f"/portal/p/acme/messages/{event.event_id}/attempts"
            waiting = await browser.get(live)
            assert waiting.status_code == 200 and "data-final" not in waiting.text
            assert "No delivery logged yet" in waiting.text
            store = shipcast.services.store
            await store._run([(events.update().where(events.c.event_id == event.event_id)
                               .values(stored_at=datetime.now(UTC) - timedelta(seconds=61)), None)])
            done = await browser.get(live)
            assert "data-final" in done.text and "takes its type" in done.text
            assert not receiver.requests  # and nothing was sent meanwhile
        finally:
            await browser.aclose()
