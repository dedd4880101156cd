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

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request

from shipcast.app.api.access import services_of
from shipcast.app.audit import Actor
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError

log = logging.getLogger(__name__)

COOKIE = "shipcast_portal"
ROLES = ("admin", "viewer")
OPERATOR = "operator"
#: How often a session's last-seen time is written: not on every request.
TOUCH_EVERY = timedelta(seconds=60)
#: A plausible email address: one @, no spaces, at most 254 characters.
EMAIL_MAX = 254


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Person:
    """The person behind a portal session."""

    session_id: str
    email: str
    partner_id: str | None
    role: str
    csrf: str

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def may_read(self, partner_id: str) -> bool:
        return self.is_operator or self.partner_id == partner_id

    def may_change(self, partner_id: str) -> bool:
        return self.is_operator or (self.partner_id == partner_id and self.role == "admin")

    @property
    def actor(self) -> Actor:
        return Actor(f"{self.email} ({self.role})", "portal")


class SignInRequired(Exception):
    """No live session: pages send the person to sign in, fragments answer 401."""


def _valid_email(email: str) -> str:
    email = email.strip()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > EMAIL_MAX or any(c.isspace() for c in email) \
            or "@" in domain:
        raise ConfigError("invalid invitation", {"email": ["must be an email address, like dev@example.com"]})
    return email


async def invite(services: Services, *, email: str, partner_id: str | None, role: str, invited_by: Actor,
                 ttl: float | None = None) -> dict[str, Any]:
    """Make a one-time sign-in link for ``email`` as ``role`` of ``partner_id``
    (an operator when ``partner_id`` is ``None`` and ``role`` is ``operator``),
    and email it when SMTP is configured. Returns the link and when it expires.

    :raises ConfigError: naming the field that is wrong (an unknown partner, a role).
    """
    email = _valid_email(email)
    if partner_id is None:
        if role != OPERATOR:
            raise ConfigError("invalid invitation", {"role": ["an invitation without a partner is an operator's"]})
    else:
        if role not in ROLES:
            raise ConfigError("invalid invitation", {"role": [f"must be one of {', '.join(ROLES)}"]})
        if await services.store.get_partner(partner_id) is None:
            raise ConfigError("invalid invitation", {"partner_id": [f"no partner {partner_id!r}"]})
    settings = services.settings
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl or settings.portal_invite_ttl)
    await services.store.add_invitation(_hash(token), email=email, partner_id=partner_id, role=role,
                                        invited_by=f"{invited_by.name} ({invited_by.via})", expires_at=expires_at)
    link = f"{settings.public_url.rstrip('/')}/portal/signin?token={quote(token)}"
    emailed = await _email(services, email, partner_id, role, link, expires_at)
    from shipcast.app.audit import record

    await record(services, invited_by, "person.invite", partner_id=partner_id, subject=email,
                 after={"email": email, "role": role, "expires_at": expires_at.isoformat()})
    return {"email": email, "partner_id": partner_id, "role": role, "link": link,
            "expires_at": expires_at.isoformat(), "emailed": emailed}


async def _email(services: Services, email: str, partner_id: str | None, role: str, link: str,
                 expires_at: datetime) -> bool:
    name = services.settings.portal_name
    what = "as an operator" if partner_id is None else f"for {partner_id} ({role})"
    text = (f"You are invited to the {name} portal {what}.\n\nSign in here (the link works once, until "
            f"{expires_at:%Y-%m-%d %H:%M} UTC):\n\n{link}\n")
    sending = services.registry.hook.shipcast_send_mail(
        settings=services.settings, to=email, subject=f"Your invitation to the {name} portal", text=text)
    if sending is None:
        return False
    try:
        await sending
    except Exception as exc:  # the link is printed anyway: the invitation stands
        log.warning("the invitation to %s was not emailed: %s", email, exc)
        return False
    return True


async def start_session(services: Services, token: str) -> tuple[str, Person] | None:
    """Use an invitation's token: a new session's cookie value and its person,
    or ``None`` when the link was used already, expired or never existed."""
    invitation = await services.store.take_invitation(_hash(token))
    if invitation is None:
        return None
    cookie, session_id, csrf = secrets.token_urlsafe(32), secrets.token_hex(8), secrets.token_urlsafe(24)
    await services.store.add_session(_hash(cookie), session_id, email=invitation["email"],
                                     partner_id=invitation["partner_id"], role=invitation["role"], csrf=csrf)
    person = Person(session_id, invitation["email"], invitation["partner_id"], invitation["role"], csrf)
    return cookie, person


async def end_session(services: Services, cookie: str) -> None:
    await services.store.revoke_sessions(session_hash=_hash(cookie))


async def current_person(request: Request) -> Person | None:
    """The person signed in with this request's cookie, or ``None``."""
    if "portal_person" in request.scope:
        found: Person | None = request.scope["portal_person"]
        return found
    person = None
    cookie = request.cookies.get(COOKIE)
    if cookie and len(cookie) <= 100:
        services = services_of(request)
        digest = _hash(cookie)
        row = await services.store.get_session(digest)
        now = datetime.now(UTC)
        settings = services.settings
        if row is not None and row["revoked_at"] is None \
                and now - row["last_seen"] < timedelta(seconds=settings.portal_session_idle) \
                and now - row["created_at"] < timedelta(seconds=settings.portal_session_max):
            if now - row["last_seen"] >= TOUCH_EVERY:
                await services.store.touch_session(digest)
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
    if not person.may_read(partner_id) or await services_of(request).store.get_partner(partner_id) is None:
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
    return {key: value for key, value in form.multi_items() if isinstance(value, str) and key != "csrf"}


async def checked_form_lists(request: Request, person: Person = Depends(signed_in)) -> dict[str, list[str]]:
    """Like :func:`checked_form`, but each field with every value given (checkboxes)."""
    await checked_form(request, person)
    form = await request.form()
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str) and key != "csrf":
            fields.setdefault(key, []).append(value)
    return fields
