"""The portal: partners' people and operators, in a browser, under ``/portal/``.

Server-rendered from ``templates/portal/`` on the API's own app, through the
same functions the API calls (no rule is written twice). Pages work without
JavaScript; the one script the package ships adds live updates. Every form
carries the session's CSRF token, every page a nonce-based CSP.

Plugins add pages of their own: routes under ``/portal/p/{partner_id}/…``
(``shipcast_routers``) guarded by :func:`member` or :func:`partner_admin`,
and a navigation entry (``shipcast_portal_sections``).
"""

from __future__ import annotations

from fastapi import APIRouter

from shipcast.app.people import Person
from shipcast.app.portal.session import (
    SignInRequired,
    checked_form,
    checked_form_lists,
    current_person,
    member,
    operator,
    partner_admin,
    signed_in,
)
from shipcast.app.portal.web import form_errors, fragment, framed, page, redirect

__all__ = ["Person", "SignInRequired", "checked_form", "checked_form_lists", "current_person", "form_errors",
           "fragment", "framed", "member", "operator", "page", "partner_admin", "redirect", "routers",
           "signed_in"]


def routers() -> list[APIRouter]:
    """The portal's own routes (plugins add theirs through ``shipcast_routers``)."""
    # Not ``operator.py``: importing a submodule of that name would replace the
    # package's ``operator`` guard with the module.
    from shipcast.app.portal import channels, customers, operator_pages, outbox, partner, relay, signin

    return [signin.router, partner.router, customers.router, channels.router, operator_pages.router, outbox.router,
            relay.router]
