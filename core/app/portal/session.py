"""Who is signed in to the portal, and what they may do.

A person is invited by a one-time link (``shipcast portal invite``, or
``POST /v1/portal/invitations``). Using it starts a session: a random cookie
(HttpOnly, SameSite=Lax, Secure under an https ``SHIPCAST_PUBLIC_URL``)
whose hash is stored with the person's email, partner and role. A session
ends when signed out, revoked, idle for ``SHIPCAST_PORTAL_SESSION_IDLE``
seconds or older than ``SHIPCAST_PORTAL_SESSION_MAX``.

Roles: a partner's ``viewer`` reads, its ``admin`` also changes its
endpoints and tokens, an ``operator`` sees and changes every partner and the
operator pages. A page of another partner, or an operator page, is a 404 to
everyone else: the portal does not say what exists beyond one's own.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime, timedelta

from fastapi import Depends, HTTPException, Request

from shipcast.app.people import Person, digest
from shipcast.app.services import services_of

log = logging.getLogger(__name__)

COOKIE = "shipcast_portal"
#: How often a session's last-seen time is written: not on every request.
TOUCH_EVERY = timedelta(seconds=60)


class SignInRequired(Exception):
    """No live session: pages send the person to sign in, fragments answer 401."""


async def current_person(request: Request) -> Person | None:
    """The person signed in with this request's cookie, or ``None``."""
    if "portal_person" in request.scope:
        found: Person | None = request.scope["portal_person"]
        return found
    person = None
    cookie = request.cookies.get(COOKIE)
    if cookie and len(cookie) <= 100:
        services = services_of(request)
        hashed = digest(cookie)
        row = await services.store.get_session(hashed)
        now = datetime.now(UTC)
        settings = services.settings
        if row is not None and row["revoked_at"] is None \
                and now - row["last_seen"] < timedelta(seconds=settings.portal_session_idle) \
                and now - row["created_at"] < timedelta(seconds=settings.portal_session_max):
            if now - row["last_seen"] >= TOUCH_EVERY:
                await services.store.touch_session(hashed)
            person = Person(row["id"], row["email"], row["partner_id"], row["role"], row["csrf"])
    request.scope["portal_person"] = person
    return person


async def signed_in(request: Request) -> Person:
    person = await current_person(request)
    if person is None:
        raise SignInRequired()
    return person


async def member(partner_id: str, request: Request, person: Person = Depends(signed_in)) -> Person:
    """A person who may read ``partner_id``'s pages; anyone else gets a 404,
    as does everyone for a partner that does not exist."""
    if not person.may_read(partner_id) or "\x00" in partner_id \
            or await services_of(request).store.get_partner(partner_id) is None:
        raise HTTPException(404, "no such page")
    return person


async def partner_admin(partner_id: str, request: Request, person: Person = Depends(member)) -> Person:
    """A person who may change ``partner_id``'s endpoints and tokens: its admin, or an operator."""
    if not person.may_change(partner_id):
        raise HTTPException(403, "your role reads this partner's pages; ask an admin to change them")
    return person


async def operator(person: Person = Depends(signed_in)) -> Person:
    """An operator; a 404 to everyone else."""
    if not person.is_operator:
        raise HTTPException(404, "no such page")
    return person


async def checked_form(request: Request, person: Person = Depends(signed_in)) -> dict[str, str]:
    """A POSTed form whose CSRF token is this session's: its fields, each
    given once (the last wins) and bounded by the body limit. A form
    without the token, or with another, is a 403."""
    form = await request.form()
    given = form.get("csrf")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), person.csrf.encode()):
        raise HTTPException(403, "this form has expired: reload the page and try again")
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str) and key != "csrf"}
    for key, value in form.multi_items():  # PostgreSQL stores no NUL: refused here, not failed there
        if isinstance(value, str) and "\x00" in value:
            raise HTTPException(422, f"the field {key[:64]!r} holds a NUL character, which is not text")
    return fields


async def checked_form_lists(request: Request, person: Person = Depends(signed_in)) -> dict[str, list[str]]:
    """Like :func:`checked_form`, but each field with every value given (checkboxes)."""
    await checked_form(request, person)
    form = await request.form()
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str) and key != "csrf":
            fields.setdefault(key, []).append(value)
    return fields
