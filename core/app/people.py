"""The portal's people: invitations by one-time link, and the sessions they
start. What the portal, the API and the command line share; the guards of
pages are in :mod:`shipcast.app.portal.session`."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from shipcast.app.audit import Actor, record
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError

log = logging.getLogger(__name__)

#: A partner's people's roles; an operator's is ``operator``.
ROLES = ("admin", "viewer")
OPERATOR = "operator"
EMAIL_MAX = 254


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


def digest(value: str) -> str:
    """What is stored of a link's token or a session's cookie: its SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()


def _valid_email(email: str) -> str:
    email = email.strip()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > EMAIL_MAX \
            or any(c.isspace() or not c.isprintable() or c in ',;<>()[]\\:"' for c in email) or "@" in domain:
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
    await services.store.add_invitation(digest(token), email=email, partner_id=partner_id, role=role,
                                        invited_by=f"{invited_by.name} ({invited_by.via})", expires_at=expires_at)
    link = f"{settings.public_url.rstrip('/')}/portal/signin?token={quote(token)}"
    emailed = await _email(services, email, partner_id, role, link, expires_at)
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
    invitation = await services.store.take_invitation(digest(token))
    if invitation is None:
        return None
    cookie, session_id, csrf = secrets.token_urlsafe(32), secrets.token_hex(8), secrets.token_urlsafe(24)
    await services.store.add_session(digest(cookie), session_id, email=invitation["email"],
                                     partner_id=invitation["partner_id"], role=invitation["role"], csrf=csrf)
    return cookie, Person(session_id, invitation["email"], invitation["partner_id"], invitation["role"], csrf)


async def revoke_session(services: Services, session_id: str, actor: Actor) -> bool:
    """End the session ``session_id`` at once (whoever's it is), recorded in the
    audit log; ``False`` when no live session has that id."""
    if "\x00" in session_id or not await services.store.revoke_sessions(session_id=session_id):
        return False
    await record(services, actor, "session.revoke", partner_id=None, subject=session_id)
    return True


async def end_session(services: Services, cookie: str) -> None:
    await services.store.revoke_sessions(session_hash=digest(cookie))
