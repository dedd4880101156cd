"""The tracking page in a real headless Chromium (Debian's ``chromium``,
driven by Playwright): live updates without a reload, the OTP behind a tap,
the forms, hostile order data, JavaScript off, and screenshots of two
merchants' pages at phone and desktop width, kept in
``build/test-artifacts/tracking/`` (``SHIPCAST_TEST_ARTIFACTS`` moves them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from .conftest import ARTIFACTS
from .helpers import Receiver, ShipcastProcess, eventually, serve
from .test_tracking import doc, event, page_url, post_events, shipcast  # noqa: F401 (fixture)

pytestmark = pytest.mark.broker

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


#: A merchant's logo and a rider's photo, served as a CDN would (the page loads them).
LOGO = ('<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" rx="18" '
        'fill="{colour}"/><text x="48" y="62" font-size="44" text-anchor="middle" fill="#fff" '
        'font-family="sans-serif">{letter}</text></svg>')


@pytest.fixture(scope="module")
async def cdn() -> AsyncIterator[str]:
    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        colour, letter = {"acme": ("#aa3300", "A"), "zippy": ("#0a7c3f", "Z")}.get(name, ("#5b6475", "R"))
        return web.Response(text=LOGO.format(colour=colour, letter=letter), content_type="image/svg+xml")

    app = web.Application()
    app.router.add_get("/{name}.svg", image)
    runner, port = await serve(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def branded(cdn: str, receiver: Receiver | None = None, partner: str = "acme", **tracking: Any) -> dict[str, Any]:
    config = doc(receiver, partner, **tracking)
    config["partners"][0]["branding"]["logo_url"] = f"{cdn}/{partner}.svg"
    return config


def with_photo(cdn: str, body: dict[str, Any]) -> dict[str, Any]:
    if body.get("rider"):
        body["rider"]["photo_url"] = f"{cdn}/rider.svg"
    return body


async def open_page(browser: Browser, url: str, viewport: dict[str, int] = PHONE, **options: Any) -> Page:
    context = await browser.new_context(viewport=viewport, locale="en-IN", **options)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    return page


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.joinpath("tracking").mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "tracking" / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def received(receiver: Receiver, event_type: str) -> list[dict[str, Any]]:
    return [body for body in (orjson.loads(r.body) for r in receiver.delivered) if body["event_type"] == event_type]


async def test_the_page_follows_the_order_live_and_takes_the_customers_answers(
        browser: Browser, shipcast: ShipcastProcess, receiver: Receiver, cdn: str) -> None:
    await shipcast.apply(branded(cdn, receiver))
    await post_events(shipcast, with_photo(cdn, event("OFD", 1)))
    url = shipcast.base_url + page_url(shipcast.settings)
    page = await open_page(browser, url)
    first = await page.goto(url)
    assert first is not None and "4821" not in await first.text()  # the OTP is not in the page's HTML
    await expect(page.locator("#status")).to_have_text("Out for delivery")
    await page.evaluate("window.loadedOnce = true")  # gone if the page ever reloads
    # The OTP appears only after a tap.
    await expect(page.locator("#otp")).to_be_hidden()
    await page.click("#show-otp")
    await expect(page.locator("#otp")).to_have_text("4821")
    await expect(page.locator("#call")).to_have_attribute("href", "tel:+919812345678")
    await screenshot(page, "live-1-ofd-phone")

    # FAIL, then DEL, appear by themselves.
    await post_events(shipcast, with_photo(cdn, event("FAIL", 2)))
    await expect(page.locator("#status")).to_have_text("We missed you")
    await expect(page.locator("#timeline li")).to_have_count(2)
    assert await page.evaluate("window.loadedOnce === true"), "the page reloaded"
    assert int(await page.evaluate("document.body.dataset.updates")) >= 1

    # The reschedule form, from the live-updated page (its CSRF token filled in by the page).
    await page.select_option("#date", index=1)
    chosen = await page.input_value("#date")
    await page.click("#reschedule-form button")
    await expect(page.locator(".notice")).to_contain_text("we asked for delivery on the date you picked")
    [asked] = await eventually(lambda: received(receiver, "RESCHEDULE_REQUESTED"))
    assert asked["customer_input"]["requested_date"] == chosen and asked["order"]["order_id"] == "ORD-10023"
    await expect(page.locator("#rescheduled")).to_be_visible()

    await page.evaluate("window.loadedOnce = true")
    await post_events(shipcast, with_photo(cdn, event("DEL", 3)))  # the OMS's next number, after the reschedule
    await expect(page.locator("#status")).to_have_text("Delivered")
    await expect(page.locator("#received-by")).to_have_text("Priya (self)")
    assert await page.evaluate("window.loadedOnce === true"), "the page reloaded"

    await page.click("label[for=star4]")
    await page.fill("#comment", "Polite and on time")
    await page.click("#rating-form button")
    await expect(page.locator(".notice")).to_contain_text("Thank you for your rating")
    [rated] = await eventually(lambda: received(receiver, "RATED"))
    assert rated["customer_input"] == {"rating": 4, "comment": "Polite and on time", "requested_date": None,
                                       "instructions": None, "submitted_via": "tracking_page"}
    await expect(page.locator("#rated")).to_contain_text("4/5")
    await screenshot(page, "live-2-rated-phone")
    await page.context.close()


@pytest.mark.parametrize(("partner", "colour", "language"), [("acme", "#aa3300", "en"), ("zippy", "#0a7c3f", "hi")])
async def test_each_merchants_page_at_phone_and_desktop_width(browser: Browser, shipcast: ShipcastProcess,
                                                              cdn: str, partner: str, colour: str,
                                                              language: str) -> None:
    config = branded(cdn, partner=partner)
    config["partners"][0]["branding"]["primary_color"] = colour
    config["partners"][0]["name"] = "Zippy Foods" if partner == "zippy" else "Acme Retail"
    await shipcast.apply(config)
    await post_events(shipcast, with_photo(cdn, event("OFD", 1, partner=partner)),
                      with_photo(cdn, event("FAIL", 2, partner=partner)))
    url = shipcast.base_url + page_url(shipcast.settings, partner) + f"?lang={language}"
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    for width, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await open_page(browser, url, viewport)
        await page.goto(url)
        await expect(page.locator("header.brand")).to_have_css("background-color", f"rgb({red}, {green}, {blue})")
        await expect(page.locator("html")).to_have_attribute("lang", language)
        assert await page.evaluate("document.querySelector('header.brand img').naturalWidth") > 0  # the logo
        # Nothing runs off the side of a phone's screen.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot = await screenshot(page, f"{partner}-{width}")
        assert shot.stat().st_size > 10_000
        await page.context.close()


async def test_hostile_order_data_never_runs(browser: Browser, shipcast: ShipcastProcess) -> None:
    """Shown as text, on the first load and through a live update: no element
    is made of it (the CSP would also stop a script, so the DOM is what is checked)."""
    await shipcast.apply(doc())
    reason = '<script>window.pwned=2</script><img src=x onerror="window.pwned=1">Door locked'
    hostile = event("FAIL", 1)
    hostile["failure"].update(code="OTHER", reason=reason)
    await post_events(shipcast, hostile)
    url = shipcast.base_url + page_url(shipcast.settings)
    page = await open_page(browser, url)
    await page.goto(url)
    await expect(page.locator("#failure-reason")).to_have_text(reason)
    later = event("FAIL", 2)  # a live update carries the same data again
    later["failure"] = hostile["failure"]
    await post_events(shipcast, later)
    await expect(page.locator("#timeline li")).to_have_count(2)
    await expect(page.locator("#failure-reason")).to_have_text(reason)
    assert await page.locator("#main script, #main img[src=x], #timeline img").count() == 0
    assert await page.evaluate("window.pwned === undefined")
    await page.context.close()


async def test_with_javascript_off_the_page_and_its_forms_still_work(browser: Browser,
                                                                     shipcast: ShipcastProcess) -> None:
    await shipcast.apply(doc())
    await post_events(shipcast, event("OFD", 1))
    url = shipcast.base_url + page_url(shipcast.settings)
    page = await open_page(browser, url, java_script_enabled=False)
    await page.goto(url)
    await expect(page.locator("#status")).to_have_text("Out for delivery")
    await expect(page.locator("footer noscript")).to_have_count(1)
    await page.click("#show-otp")  # a plain form post: the page comes back with the OTP
    await expect(page.locator("#otp")).to_have_text("4821")
    await screenshot(page, "no-javascript-otp-phone")
    await page.context.close()
