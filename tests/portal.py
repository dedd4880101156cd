"""Signing in to the portal in tests, as a browser would: an invitation
link, its sign-in button, then the session's cookie and each page's CSRF
token. ``Visitor`` is one person's browser (httpx, following nothing)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from shipcast.app.audit import Actor
from shipcast.app.people import invite
from shipcast.settings import Settings

from .helpers import ShipcastProcess, eventually, partners_doc

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TESTS = Actor("tests", "cli")


@asynccontextmanager
async def two_partners(settings: Settings, acme_url: str = "https://acme.example.com/hooks",
                       globex_url: str = "https://globex.example.com/hooks",
                       **acme_endpoint: Any) -> AsyncIterator[ShipcastProcess]:
    """shipcast's API (no workers) with partners acme and globex, each with an endpoint ``main``."""
    async with ShipcastProcess(settings, workers=False) as running:
        await eventually(lambda: running.services.broker.connected)
        await running.apply(partners_doc("acme", acme_url, **acme_endpoint))
        await running.apply(partners_doc("globex", globex_url))
        yield running


class Visitor:
    """One person's browser on the portal: cookies kept, redirects not followed."""

    def __init__(self, shipcast: ShipcastProcess) -> None:
        self.http = httpx.AsyncClient(base_url=shipcast.base_url, timeout=30)
        self.csrf = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.get(path, **kwargs)
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
                   **kwargs: Any) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        return await self.http.post(path, data=form, **kwargs)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Visitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def invitation(shipcast: ShipcastProcess, email: str, partner_id: str | None = None,
                     role: str = "admin") -> str:
    """A one-time sign-in link's path (``/portal/signin?token=…``)."""
    made = await invite(shipcast.services, email=email, partner_id=partner_id,
                        role="operator" if partner_id is None else role, invited_by=TESTS)
    return str(made["link"]).removeprefix(shipcast.settings.public_url.rstrip("/"))


async def signed_in(shipcast: ShipcastProcess, email: str, partner_id: str | None = None,
                    role: str = "admin") -> Visitor:
    """A visitor signed in through a new invitation, its CSRF token read off its home page."""
    visitor = Visitor(shipcast)
    link = await invitation(shipcast, email, partner_id, role)
    token = link.split("token=", 1)[1]
    signed = await visitor.post("/portal/signin", {"token": token}, csrf=False)
    assert signed.status_code == 303, signed.text
    page = await visitor.get("/portal/signin")  # every page signed in carries the token, in its sign-out form
    assert page.status_code == 200, page.text
    assert visitor.csrf, "the page carries the session's CSRF token"
    return visitor
