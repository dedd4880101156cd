"""The tracking page's tokens: the link's (one order, an expiry day) and each
form's CSRF token (bound to the browser's cookie and the page)."""

from __future__ import annotations

import secrets
import time

from shipcast.security.links import check_link_mac, link_mac, seal, unseal
from shipcast.settings import Settings

DAY = 86400
#: The cookie a browser's CSRF tokens are bound to.
CSRF_COOKIE = "shipcast_csrf"


def tracking_token(settings: Settings, partner_id: str, order_id: str, days: int, now: float | None = None) -> str:
    """An opaque, unguessable token naming one order of one partner, valid for ``days`` days."""
    expires = int((time.time() if now is None else now) // DAY) + days
    return seal(settings, "tracking", f"{partner_id}:{expires}:{order_id}")


def read_tracking_token(settings: Settings, token: str, now: float | None = None) -> tuple[str, str] | None:
    """``(partner_id, order_id)``, or ``None`` for a forged, altered or expired token."""
    payload = unseal(settings, "tracking", token)
    if payload is None or payload.count(":") < 2:
        return None
    partner_id, expires, order_id = payload.split(":", 2)
    if not expires.isdigit() or int(expires) < int((time.time() if now is None else now) // DAY):
        return None
    return partner_id, order_id


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(18)


def csrf_token(settings: Settings, cookie: str, page: str) -> str:
    return link_mac(settings, "csrf", f"{cookie}:{page}")


def csrf_ok(settings: Settings, cookie: str | None, page: str, submitted: str | None) -> bool:
    return bool(cookie and submitted) and check_link_mac(settings, "csrf", f"{cookie}:{page}", str(submitted))
