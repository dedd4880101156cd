"""Signed links: tokens in the links customers get (the tracking page, one-click
unsubscribe) and the MACs of forms, keyed by ``SHIPCAST_SECRET_KEY``."""

from __future__ import annotations

import base64
import hashlib
import hmac

from shipcast.security.crypto import secret_box
from shipcast.security.identifiers import address_hash
from shipcast.settings import Settings


def _link_keys(settings: Settings, purpose: str) -> list[bytes]:
    """The keys links are signed with: one per ``SHIPCAST_SECRET_KEY`` key,
    the first signing, every one verifying, so rotating the secret key (new
    key first, old after it) keeps links in messages already sent working."""
    secrets = [k.strip() for k in (settings.secret_key or "").split(",") if k.strip()] \
        or [secret_box(settings).key_id]
    return [hashlib.sha256(f"{purpose}:{secret}".encode()).digest() for secret in secrets]


#: The bytes of HMAC-SHA256 a link token keeps: 96 bits, unguessable.
MAC_BYTES = 12


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign_link(settings: Settings, purpose: str, payload: str) -> str:
    """``payload`` and its MAC (keyed for ``purpose``), URL-safe: a link
    token nobody can forge or alter. Not encrypted: the payload is readable."""
    mac = _mac(_link_keys(settings, purpose)[0], payload.encode())
    return base64.urlsafe_b64encode(payload.encode() + b"|" + mac).rstrip(b"=").decode()


def verify_link(settings: Settings, purpose: str, token: str) -> str | None:
    """The payload of a token :func:`sign_link` made for ``purpose``, or ``None``."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        return None  # one token per payload: no second spelling with stray characters
    # The MAC is binary and may hold a "|" itself: split at its fixed length, never by searching.
    payload, bar, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
    if not payload or bar != b"|" or not any(hmac.compare_digest(mac, _mac(key, payload))
                              for key in _link_keys(settings, purpose)):
        return None
    return payload.decode("utf-8", "replace")


def unsubscribe_token(settings: Settings, channel: str, partner_id: str, address: str) -> str:
    """A token for one customer's one-click unsubscribe from one partner's
    messages on one channel; it carries a hash of the address, not the address."""
    return sign_link(settings, "unsubscribe", f"{channel}:{partner_id}:{address_hash(address)}")


def read_unsubscribe_token(settings: Settings, token: str) -> tuple[str, str, str] | None:
    """``(channel, partner_id, address hash)``, or ``None`` for a forged token."""
    payload = verify_link(settings, "unsubscribe", token)
    if payload is None or payload.count(":") != 2:
        return None
    channel, partner_id, hashed = payload.split(":")
    return channel, partner_id, hashed


def link_mac(settings: Settings, purpose: str, payload: str) -> str:
    """A short MAC of ``payload`` for ``purpose`` (a form's CSRF token), hex."""
    return _mac(_link_keys(settings, purpose)[0], payload.encode()).hex()


def check_link_mac(settings: Settings, purpose: str, payload: str, mac: str) -> bool:
    return any(hmac.compare_digest(mac.encode(), _mac(key, payload.encode()).hex().encode())
               for key in _link_keys(settings, purpose))
