"""How portal pages are rendered and answered: the layout's context, the
nonce-based Content Security Policy, a notice carried across a redirect,
and the navigation (the core's pages and the plugins' sections)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shipcast import __version__
from shipcast.app.people import Person
from shipcast.app.services import services_of
from shipcast.messaging import outbox
from shipcast.plugin.portal import PortalSection

NOTICE_COOKIE = "shipcast_notice"

#: The core's own pages of a partner, beside those plugins add.
CORE_SECTIONS = (
    PortalSection("Overview", "", 0),
    PortalSection("Deliveries", "messages", 20),
    PortalSection("Customer messages", "customers", 22),
    PortalSection("Opt-outs", "opt-outs", 24),
    PortalSection("Customer channels", "channels", 30),
    PortalSection("Branding", "branding", 35),
    PortalSection("Outbox", "outbox", 40),
    PortalSection("Event catalog", "catalog", 60),
    PortalSection("API tokens", "tokens", 70),
    PortalSection("Audit log", "audit", 80),
)

#: The operator's pages.
OPERATOR_SECTIONS = (
    PortalSection("Partners", "", 0),
    PortalSection("Queues", "queues", 10),
    PortalSection("Operator events", "events", 20),
    PortalSection("People", "people", 30),
    PortalSection("Audit log", "audit", 40),
    PortalSection("Outbox", "outbox", 50),
    PortalSection("Relay", "relay", 60),
)


def _shown(value: Any) -> Any:
    """A null shows as a dash, never as "None"."""
    return "—" if value is None else value


@cache
def environment() -> jinja2.Environment:
    """The portal's templates (``templates/portal/``): autoescaped, strict
    about undefined names, a null printed as a dash."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("shipcast.templates"))),
        autoescape=True, undefined=jinja2.StrictUndefined, finalize=_shown, auto_reload=False)
    env.filters["when"] = lambda value: "—" if value is None else (
        value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else str(value))
    return env


def security_headers(nonce: str) -> dict[str, str]:
    """No inline script runs: only the portal's own script, carrying the nonce."""
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; img-src * data:; "
              "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'")
    return {"Content-Security-Policy": policy, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def sections(request: Request) -> list[PortalSection]:
    """The core's pages and every plugin's, in order."""
    cached: list[PortalSection] | None = getattr(request.app.state, "portal_sections", None)
    if cached is None:
        found = list(CORE_SECTIONS)
        for added in services_of(request).registry.hook.shipcast_portal_sections():
            found.extend(added)
        cached = request.app.state.portal_sections = sorted(found, key=lambda s: (s.order, s.label))
    return cached


def development_outbox(request: Request) -> dict[str, str]:
    """The channels whose messages go to the development outbox, and why: the
    banner on every page while there are any (the settings do not change while the app runs)."""
    cached: dict[str, str] | None = getattr(request.app.state, "development_outbox", None)
    if cached is None:
        services = services_of(request)
        cached = request.app.state.development_outbox = outbox.reasons(services.settings,
                                                                       services.registry.channels)
    return cached


def page(request: Request, template: str | jinja2.Template, person: Person | None, *, title: str,
         partner_id: str | None = None, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A whole page in the portal's layout: ``template`` is a file of
    ``templates/portal/``, or a template a plugin made with :func:`environment`
    (which can extend ``portal/base.html``)."""
    nonce = secrets.token_urlsafe(16)
    settings = services_of(request).settings
    notice = request.cookies.get(NOTICE_COOKIE)
    found = environment().get_template(f"portal/{template}") if isinstance(template, str) else template
    body = found.render(
        request=request, person=person, title=title, partner_id=partner_id, nonce=nonce,
        portal_name=settings.portal_name, portal_logo=settings.portal_logo_url, version=__version__,
        sections=sections(request) if partner_id else [], operator_sections=OPERATOR_SECTIONS,
        notice=unquote(notice)[:500] if notice else None, path=request.url.path,
        development_outbox=development_outbox(request), **context)
    response = HTMLResponse(body, status_code=status_code, headers=security_headers(nonce))
    if notice:
        response.delete_cookie(NOTICE_COOKIE, path="/portal")
    return response


def fragment(request: Request, template: str, **context: Any) -> HTMLResponse:
    """A piece of a page, fetched by the portal's script for live updates."""
    body = environment().get_template(f"portal/{template}").render(request=request, **context)
    return HTMLResponse(body, headers=security_headers(secrets.token_urlsafe(8)))


def redirect(request: Request, url: str, notice: str | None = None) -> Response:
    """After a POST, to a page (303), with a notice it shows once (in a cookie,
    ``Secure`` when ``SHIPCAST_PUBLIC_URL`` is https, like the session's)."""
    response = RedirectResponse(url, status_code=303)
    if notice:
        response.set_cookie(NOTICE_COOKIE, quote(notice[:500]), max_age=60, path="/portal", httponly=True,
                            samesite="lax", secure=services_of(request).settings.public_url.startswith("https:"))
    return response


def form_errors(errors: Mapping[str, Any]) -> dict[str, list[str]]:
    """A ConfigError's or a 422's errors as ``{field: [messages]}``, for the field they belong beside."""
    shown: dict[str, list[str]] = {}
    for field, messages in errors.items():
        key = str(field).split(".")[0]  # "events.1" belongs beside "events"
        items = messages if isinstance(messages, list) else [messages]
        shown.setdefault(key, []).extend(str(m) for m in items)
    return shown


def framed(html: str, nonce: str | None = None) -> HTMLResponse:
    """A preview of what customers see, for a frame in the portal's own
    pages: no script may run in it, whatever it holds (a sandbox without
    scripts), and only the portal may frame it."""
    style = f"'nonce-{nonce}'" if nonce else "'unsafe-inline'"
    policy = (f"sandbox; default-src 'none'; style-src {style}; img-src https: http: data:; "
              "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
    return HTMLResponse(html, headers={"Content-Security-Policy": policy, "X-Frame-Options": "SAMEORIGIN",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                                       "Cache-Control": "no-store"})
