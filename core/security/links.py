"""Tokens in the links customers get (the tracking page, one-click
unsubscribe) and the MACs of forms, keyed by ``SHIPCAST_SECRET_KEY``.

A link's token is sealed (:func:`seal`): AES-SIV over its payload, so it can
be neither forged, altered nor read, and one payload has one token. Tokens
of earlier versions, signed but readable (:func:`sign_link`), are still
accepted while the key that signed them is configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from shipcast.security.crypto import secret_box
from shipcast.security.identifiers import Identifiers, mask
from shipcast.settings import Settings


def identifiers(settings: Settings) -> Identifiers:
    """How these settings key customer identifiers."""
    return Identifiers(lambda: purpose_keys(settings, "identifiers"))


def purpose_keys(settings: Settings, purpose: str) -> list[bytes]:
    """32-byte keys for one purpose (``tracking``, ``identifiers``…): one per
    ``SHIPCAST_SECRET_KEY`` key, the first in use, every one still accepted, so
    rotating the secret key (new key first, old after it) keeps what was made
    with the old one working."""
    configured = [k.strip() for k in (settings.secret_key or "").split(",") if k.strip()]
    if not configured:  # the generated key file; the same derivation as the key given in the variable
        configured = [secret_box(settings).key]
    # Keys derived from each key, first; then from each key's id, which keyed what
    # was made while the key lived only in the key file (still accepted, never used).
    roots = configured + [hashlib.sha256(key.encode()).hexdigest() for key in configured]
    return [hashlib.sha256(f"{purpose}:{secret}".encode()).digest() for secret in roots]


#: The bytes of HMAC-SHA256 a link token keeps: 96 bits, unguessable.
MAC_BYTES = 12


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def sign_link(settings: Settings, purpose: str, payload: str) -> str:
    """``payload`` and its MAC (keyed for ``purpose``), URL-safe: a link
    token nobody can forge or alter. Not encrypted: the payload is readable."""
    mac = _mac(purpose_keys(settings, purpose)[0], payload.encode())
    return base64.urlsafe_b64encode(payload.encode() + b"|" + mac).rstrip(b"=").decode()


def _decoded(token: str) -> bytes | None:
    """A token's bytes, or ``None`` unless it is their one spelling (no stray characters)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == token else None


def verify_link(settings: Settings, purpose: str, token: str) -> str | None:
    """The payload of a token :func:`sign_link` made for ``purpose``, or ``None``."""
    raw = _decoded(token)
    if raw is None:
        return None
    # The MAC is binary and may hold a "|" itself: split at its fixed length, never by searching.
    payload, bar, mac = raw[:-MAC_BYTES - 1], raw[-MAC_BYTES - 1:-MAC_BYTES], raw[-MAC_BYTES:]
    if not payload or bar != b"|" or not any(hmac.compare_digest(mac, _mac(key, payload))
                              for key in purpose_keys(settings, purpose)):
        return None
    return payload.decode("utf-8", "replace")


def _siv_keys(settings: Settings, purpose: str) -> list[AESSIV]:
    return [AESSIV(hashlib.sha512(b"seal:" + key).digest()) for key in purpose_keys(settings, purpose)]


def seal(settings: Settings, purpose: str, payload: str) -> str:
    """``payload`` sealed for ``purpose``, URL-safe: opaque, unforgeable, and
    the same token each time for the same payload."""
    sealed = _siv_keys(settings, purpose)[0].encrypt(payload.encode(), [purpose.encode()])
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def unseal(settings: Settings, purpose: str, token: str) -> str | None:
    """The payload of a token :func:`seal` made for ``purpose`` (or, from an
    earlier version, :func:`sign_link`), or ``None``."""
    raw = _decoded(token)
    if raw is None:
        return None
    for box in _siv_keys(settings, purpose):
        try:
            return box.decrypt(raw, [purpose.encode()]).decode("utf-8", "replace")
        except (InvalidTag, ValueError):
            continue
    return verify_link(settings, purpose, token)


def unsubscribe_token(settings: Settings, channel: str, partner_id: str, address: str) -> str:
    """A token for one customer's one-click unsubscribe from one partner's
    messages on one channel: sealed, and holding only the address's keyed
    hash and its mask (which the merchant's list of opt-outs shows)."""
    return seal(settings, "unsubscribe",
                f"{channel}:{partner_id}:{identifiers(settings).key(address)}:{mask(address)}")


def read_unsubscribe_token(settings: Settings, token: str) -> tuple[str, str, str, str | None] | None:
    """``(channel, partner_id, the address as stored, its mask)`` (no mask in
    an earlier version's token), or ``None`` for a forged token."""
    payload = unseal(settings, "unsubscribe", token)
    parts = payload.split(":", 3) if payload is not None else []
    if len(parts) not in (3, 4):
        return None
    channel, partner_id, hashed, *masked = parts
    return channel, partner_id, hashed, masked[0] if masked else None


def link_mac(settings: Settings, purpose: str, payload: str) -> str:
    """A short MAC of ``payload`` for ``purpose`` (a form's CSRF token), hex."""
    return _mac(purpose_keys(settings, purpose)[0], payload.encode()).hex()


def check_link_mac(settings: Settings, purpose: str, payload: str, mac: str) -> bool:
    return any(hmac.compare_digest(mac.encode(), _mac(key, payload.encode()).hex().encode())
               for key in purpose_keys(settings, purpose))
