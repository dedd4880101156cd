"""The portal in a real headless Chromium (Debian's ``chromium``, driven by
Playwright), as its people use it:

* a new partner developer, from the invitation link to a test event their
  own server verified with the ``standardwebhooks`` library, counting every
  interaction (at most 12);
* debugging: a failing delivery's error and response, the endpoint's URL
  fixed, the message resent and seen delivered, by keyboard alone;
* an operator replaying a parked message and seeing it delivered;
* isolation: every page of partner A, opened with partner B's session, is a 404;
* every page: no serious or critical axe-core violation, nothing wider
  than a 360 px phone, no Content Security Policy refusal, a screenshot at
  phone and desktop width in ``build/test-artifacts/portal/``, and (shipcast
  in development mode, customers' messages kept in the outbox) the banner
  saying so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Locator, Page, expect
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shipcast.app.people import invite
from shipcast.store import OutboxMessage
from tests.bound import example

from .conftest import ARTIFACTS, make_settings
from .helpers import Receiver, ShipcastProcess, eventually, partners_doc, serve, settled
from .portal import TESTS
from .test_portal_access import filled, portal_routes

pytestmark = [pytest.mark.broker, pytest.mark.slow]

AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
#: The most interactions a new developer may need, from the invitation to a verified test event.
MOST_STEPS = 12


async def photograph(page: Page, name: str) -> None:
    """A step of a flow, for docs/portal.md: ``build/test-artifacts/portal/flow-<name>.png``."""
    folder = ARTIFACTS / "portal"
    folder.mkdir(parents=True, exist_ok=True)
    # A page taller than the window is taken at its whole height in a window that tall: Chromium's
    # full-page capture draws a frame of another origin (a sandboxed preview) at the old window's scale.
    window = page.viewport_size
    height = await page.evaluate("document.documentElement.scrollHeight")
    if window is not None and height > window["height"]:
        await page.set_viewport_size({"width": window["width"], "height": height})
    try:
        await page.screenshot(path=str(folder / f"flow-{name}.png"), full_page=True)
    finally:
        if window is not None:
            await page.set_viewport_size(window)


class Steps:
    """One person's page, counting what they do: each navigation, click,
    keystroke sequence or field filled is one interaction."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.done: list[str] = []
        self.refused: list[str] = []  # what the browser's CSP refused, were anything
        page.on("console", lambda message: self.refused.append(message.text)
                if "Content Security Policy" in message.text else None)

    async def goto(self, url: str) -> Any:
        self.done.append(f"open {url}")
        return await self.page.goto(url)

    async def click(self, target: Locator, why: str) -> None:
        self.done.append(f"click {why}")
        await target.click()

    async def fill(self, target: Locator, text: str, why: str) -> None:
        self.done.append(f"type {why}")
        await target.fill(text)


async def person_page(browser: Browser, viewport: dict[str, int] = DESKTOP, **options: Any) -> Page:
    context = await browser.new_context(viewport=viewport, locale="en-IN", **options)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    return page


async def sign_in(page: Page, shipcast: ShipcastProcess, email: str, partner_id: str | None,
                  role: str = "admin") -> None:
    made = await invite(shipcast.services, email=email, partner_id=partner_id,
                        role="operator" if partner_id is None else role, invited_by=TESTS)
    await page.goto(made["link"].replace(shipcast.settings.public_url.rstrip("/"), shipcast.base_url))
    await page.get_by_role("button", name=re.compile("^Sign in as")).click()
    await expect(page.get_by_text(f"Signed in as {email}")).to_be_visible()


class OwnServer:
    """The developer's own webhook receiver: it checks each request's
    signature with the secret they copied from the portal."""

    def __init__(self) -> None:
        self.secret: str | None = None
        self.verified: list[dict[str, Any]] = []
        self.refused: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is None:
            self.refused.append("no secret configured yet")
            return web.Response(status=500, text="no secret configured yet")
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=401, text=f"bad signature: {exc}")
        self.verified.append(payload)
        return web.Response(text="verified, thanks")


@pytest.fixture
async def shipcast(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with ShipcastProcess(make_settings(vhost, sqlite_url, public_url="http://portal.example.com")) as running:
        yield running


@pytest.fixture
async def developing(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    """shipcast in development mode with no Twilio or SMTP settings: customers' messages go to the outbox."""
    settings = make_settings(vhost, sqlite_url, development=True, public_url="http://portal.example.com")
    async with ShipcastProcess(settings) as running:
        yield running


async def test_a_new_developer_gets_to_a_verified_test_event(browser: Browser, shipcast: ShipcastProcess) -> None:
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"archive": {}}}]})
    own = OwnServer()
    app = web.Application()
    app.router.add_post("/webhooks/shipcast", own.handle)
    runner, port = await serve(app)
    page = await person_page(browser, permissions=["clipboard-read", "clipboard-write"])
    steps = Steps(page)
    try:
        made = await invite(shipcast.services, email="dev@acme.example.com", partner_id="acme", role="admin",
                            invited_by=TESTS)
        # The link from the invitation email (its host is the public URL; here the test's server).
        await steps.goto(made["link"].replace(shipcast.settings.public_url, shipcast.base_url))
        await steps.click(page.get_by_role("button", name="Sign in as dev@acme.example.com"), "sign in")
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        await photograph(page, "1-overview")
        await steps.click(page.get_by_role("navigation", name="Partner pages").get_by_role("link", name="Endpoints"),
                          "Endpoints")
        await steps.fill(page.get_by_label("URL"), f"http://127.0.0.1:{port}/webhooks/shipcast", "the URL")
        await photograph(page, "2-add-endpoint")
        await steps.click(page.get_by_role("button", name="Add endpoint"), "Add endpoint")
        await expect(page.get_by_role("heading", name=re.compile("added"))).to_be_visible()
        await photograph(page, "3-secret-and-snippets")
        # Copy the secret, as they would into their server's configuration.
        await steps.click(page.get_by_role("button", name="Copy the secret"), "Copy")
        own.secret = await page.evaluate("navigator.clipboard.readText()")
        assert own.secret.startswith("whsec_")
        # The snippets beside it never hold the secret.
        assert own.secret not in (await page.locator("main").inner_text()).replace(
            await page.locator("#secret").inner_text(), "")
        await steps.click(page.get_by_role("button", name="Send a test event"), "Send a test event")
        # The attempt arrives on the page while it is open: no reload.
        live = page.locator("#live-attempts")
        await expect(live.get_by_text("delivered").first).to_be_visible(timeout=20_000)
        await expect(live).to_have_attribute("data-final", "")
        await expect(live.get_by_text("verified, thanks").first).to_be_attached()
        await expect(live.get_by_text("webhook-signature").first).to_be_attached()
        await live.get_by_text("POST http").first.click()  # open the request sent, for the picture
        await photograph(page, "4-test-event-delivered")
        assert len(own.verified) == 1 and own.verified[0]["partner_id"] == "acme", (own.verified, own.refused)
        assert len(steps.done) <= MOST_STEPS, steps.done
        assert not steps.refused, steps.refused
        print(f"\nfrom invitation to a verified test event in {len(steps.done)} interactions: {steps.done}")
    finally:
        await page.context.close()
        await runner.cleanup()


async def test_debugging_a_failing_delivery_by_keyboard(browser: Browser, shipcast: ShipcastProcess,
                                                        receiver: Receiver) -> None:
    wrong = receiver.url.replace("/hook", "/hook-old")  # a path the server no longer has: 404
    await shipcast.apply(partners_doc("acme", wrong))
    event = example("DEL", partner_id="acme")
    assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                     headers={"content-type": "application/json"})).status_code == 202
    await eventually(settled(shipcast, event.event_id, ("dead",)), timeout=30)
    page = await person_page(browser)
    steps = Steps(page)
    try:
        await sign_in(page, shipcast, "dev@acme.example.com", "acme")
        await page.goto(f"{shipcast.base_url}/portal/p/acme/messages")
        row = page.get_by_role("row").filter(has_text=event.event_id[:8])
        await expect(row.get_by_text("dead")).to_be_visible()
        await page.goto(f"{shipcast.base_url}/portal/p/acme/messages/{event.event_id}")
        live = page.locator("#live-attempts")
        await expect(live.get_by_text("404").first).to_be_visible()  # the status and error, said
        # The start of the response, one keystroke away.
        summary = live.get_by_text("Start of the response").first
        await summary.focus()
        await page.keyboard.press("Enter")
        await expect(live.get_by_text("Not Found").first).to_be_visible()
        await photograph(page, "5-failing-delivery")
        # Fix the URL, by keyboard: to the endpoint's page, its URL field, save.
        await page.goto(f"{shipcast.base_url}/portal/p/acme/endpoints/main")
        url = page.get_by_label("URL")
        await url.focus()
        await page.keyboard.press("Control+A")
        await page.keyboard.type(receiver.url)
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_contain_text("saved", ignore_case=True)
        assert (await shipcast.services.store.get_partner("acme")).channels["webhook"]["endpoints"][0]["url"] == \
            receiver.url
        # Resend it and see it delivered.
        await page.goto(f"{shipcast.base_url}/portal/p/acme/messages/{event.event_id}")
        await page.get_by_role("button", name="Resend to every target").focus()
        await page.keyboard.press("Enter")  # back on the message's page, which follows the new attempt live
        await expect(page.get_by_role("status").first).to_contain_text("Sent again")
        await expect(page.locator("#live-attempts").get_by_text("delivered").first).to_be_visible(timeout=20_000)
        assert [r.headers["webhook-id"] for r in receiver.delivered] == [event.event_id]
        assert not steps.refused, steps.refused
    finally:
        await page.context.close()


async def test_an_operator_replays_a_parked_message(browser: Browser, shipcast: ShipcastProcess,
                                                    receiver: Receiver) -> None:
    receiver.default = 400  # a permanent refusal: parked at once
    await shipcast.apply(partners_doc("acme", receiver.url))
    event = example("FAIL", partner_id="acme")
    assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                     headers={"content-type": "application/json"})).status_code == 202
    await eventually(settled(shipcast, event.event_id, ("dead",)), timeout=30)
    page = await person_page(browser)
    try:
        await sign_in(page, shipcast, "ops@example.com", None)
        await page.goto(f"{shipcast.base_url}/portal/operator/queues")
        lot = page.locator("main")
        await expect(lot.get_by_text(event.event_id).first).to_be_visible(timeout=20_000)
        await expect(lot.get_by_text("400").first).to_be_visible()  # its reason
        await photograph(page, "6-operator-parking-lot")
        receiver.default = 200  # the partner fixed their server
        await page.get_by_role("button", name=re.compile("^Replay")).first.click()
        await eventually(lambda: receiver.delivered, timeout=20)
        assert receiver.delivered[-1].headers["webhook-id"] == event.event_id
        await page.goto(f"{shipcast.base_url}/portal/p/acme/messages/{event.event_id}")
        await expect(page.locator("#live-attempts").get_by_text("delivered").first).to_be_visible(timeout=20_000)
    finally:
        await page.context.close()


async def pages_of(shipcast: ShipcastProcess) -> tuple[dict[str, str], list[str]]:
    """Partner acme's data for every route's parameters, and every page's URL."""
    event = example("OFD", partner_id="acme")
    assert (await shipcast.http.post("/v1/events", content=event.to_json(),
                                     headers={"content-type": "application/json"})).status_code == 202
    await eventually(settled(shipcast, event.event_id), timeout=30)
    token = (await shipcast.http.post("/v1/partners/acme/tokens", params={"name": "ci"})).json()
    sessions = await shipcast.services.store.list_sessions(operators=True)
    number = await shipcast.services.store.add_outbox(OutboxMessage(  # an email in the development outbox
        channel="email", partner_id="acme", event_id=event.event_id, event_type="OFD", order_id="ORD-10023",
        recipient="priya@example.com", subject="Your order", text="Hello", html="<p>Hello</p>"))
    params = {"partner_id": "acme", "endpoint_id": "main", "event_id": event.event_id, "event_type": "OFD",
              "token_id": token["id"], "channel": "webhook", "customer_channel": "sms",
              "session_id": sessions[0]["id"] if sessions else "none",
              "number": str(number)}
    # Live fragments, and an email's own document in its message page's frame, are parts of pages, not pages.
    urls = [filled(path, params) for method, path in portal_routes(shipcast) if method == "GET"
            and not path.endswith(("/attempts", "/live", "/html"))]
    return params, urls


async def test_another_partners_session_finds_nothing(browser: Browser, shipcast: ShipcastProcess,
                                                      receiver: Receiver) -> None:
    await shipcast.apply(partners_doc("acme", receiver.url))
    await shipcast.apply(partners_doc("globex", receiver.url))
    _, urls = await pages_of(shipcast)
    page = await person_page(browser)
    try:
        await sign_in(page, shipcast, "dev@globex.example.com", "globex")
        acme = [url for url in urls if url.startswith("/portal/p/acme")]
        assert len(acme) >= 10, acme
        for url in acme:
            response = await page.goto(shipcast.base_url + url)
            assert response is not None and response.status == 404, (url, response and response.status)
            assert "acme" not in (await page.locator("main").inner_text()).lower(), url
    finally:
        await page.context.close()


def slug(url: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", url.removeprefix("/portal/").lower()).strip("-") or "home"


async def test_every_page_is_accessible_fits_a_phone_is_photographed_and_says_development_mode(
        browser: Browser, developing: ShipcastProcess, receiver: Receiver) -> None:
    assert AXE.is_file(), f"{AXE} missing: deploy/test-tools.sh installs it (make tools)"
    shipcast = developing
    await shipcast.apply(partners_doc("acme", receiver.url, description="Orders to the ERP"))
    folder = ARTIFACTS / "portal"
    folder.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[str]] = {}
    taken: list[Path] = []
    bannered: list[str] = []
    previews: set[str] = set()  # what customers see, framed in a portal page: not a portal page
    for viewport, width in ((PHONE, "phone"), (DESKTOP, "desktop")):
        # axe is injected into each page, so this context lets it past the CSP (the flows above keep it).
        page = await person_page(browser, viewport=viewport, bypass_csp=True)
        try:
            await sign_in(page, shipcast, f"ops-{width}@example.com", None)
            _, urls = await pages_of(shipcast)
            urls = ["/portal/signin"] + urls
            for url in urls:
                response = await page.goto(shipcast.base_url + url)
                assert response is not None and response.status == 200, (url, response and response.status)
                if response.headers["content-security-policy"].startswith("sandbox;"):
                    previews.add(url)
                else:
                    await expect(page.locator(".dev-banner"), url).to_contain_text(
                        "messages go to the development outbox, not to customers")
                    bannered.append(url)
                await page.add_script_tag(path=str(AXE))
                result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
                bad = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                       for v in result["violations"] if v["impact"] in ("serious", "critical")]
                found.setdefault(url, []).extend(bad)
                if width == "phone":
                    wide = await page.evaluate("document.documentElement.scrollWidth")
                    assert wide <= PHONE["width"] + 1, f"{url} is {wide} px wide on a 360 px phone"
                shot = folder / f"{slug(url)}-{width}.png"
                shot.unlink(missing_ok=True)  # a picture left by an earlier run proves nothing
                await page.screenshot(path=str(shot), full_page=True)
                taken.append(shot)
        finally:
            await page.context.close()
    serious = {url: problems for url, problems in found.items() if problems}
    assert not serious, serious
    phone = [shot for shot in taken if shot.name.endswith("-phone.png")]
    assert len(phone) >= 15 and all(shot.stat().st_size > 0 for shot in taken), taken
    # Every page said development mode; the only ones that did not are the branding page's two previews.
    assert previews == {"/portal/p/acme/branding/email", "/portal/p/acme/branding/tracking"}, previews
    assert len(bannered) == len(taken) - 2 * len(previews), (len(bannered), len(taken))


async def test_without_javascript_everything_works_but_live_updates(browser: Browser, shipcast: ShipcastProcess,
                                                                   receiver: Receiver) -> None:
    """Scripts off: signing in, adding an endpoint, reading its secret and
    sending a test event all work; the attempts show on reloading."""
    await shipcast.apply({"partners": [{"id": "acme", "name": "Acme Retail", "channels": {"archive": {}}}]})
    page = await person_page(browser, java_script_enabled=False)
    try:
        await sign_in(page, shipcast, "dev@acme.example.com", "acme")
        await page.goto(f"{shipcast.base_url}/portal/p/acme/endpoints")
        await page.get_by_label("URL").fill(receiver.url)
        await page.get_by_role("button", name="Add endpoint").click()
        secret = await page.locator("#secret").inner_text()
        assert secret.startswith("whsec_")
        await expect(page.get_by_role("button", name="Copy the secret")).to_be_hidden()  # it needs the script
        await page.get_by_role("button", name="Send a test event").click()
        await eventually(lambda: receiver.delivered, timeout=20)
        Webhook(secret).verify(receiver.delivered[0].body, receiver.delivered[0].headers)
        message = page.url
        assert "/messages/" in message
        for _ in range(50):  # nothing refreshes by itself: load it again, as the page says
            if await page.locator("#live-attempts").get_by_text("delivered").count():
                break
            await asyncio.sleep(0.2)  # not a burst of reloads, each racing the last one's navigation
            await page.goto(message)
        await expect(page.locator("#live-attempts").get_by_text("delivered").first).to_be_visible()
    finally:
        await page.context.close()
