"""Standard Webhooks signatures, symmetric and asymmetric.

``v1,<base64 HMAC-SHA256>`` and ``v1a,<base64 Ed25519>`` over
``"<webhook-id>.<webhook-timestamp>.<body>"``, several space-separated in one
``webhook-signature`` header while a rotated secret overlaps the new one. A
partner verifies with any Standard Webhooks library (see docs/partners.md);
Ed25519 public keys are published as a JWKS document.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets as _secrets
import time
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsec_"
#: ``whsec_`` and 24 to 68 bytes in base64: whole groups of four characters, the last one padded.
#: ``\Z``, not ``$``: that would also match before a final line break.
SECRET_PATTERN = re.compile(r"^whsec_(?:[A-Za-z0-9+/]{4}){8,22}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def generate_secret() -> str:
    """A new endpoint secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _signed(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def sign(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` signature per valid
    secret, space-separated (several while a rotated secret overlaps)."""
    signed = _signed(msg_id, timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()
        for secret in secrets
    )


#: How far a webhook's timestamp may be from the receiver's clock, in seconds (Standard Webhooks' tolerance).
TOLERANCE = 300


def verify(secrets: Iterable[str], msg_id: str, timestamp: str, body: bytes, header: str, *,
           now: float | None = None) -> str | None:
    """What a receiver checks (the inverse of :func:`sign`): why a webhook
    does not verify with any of ``secrets``, or ``None`` when one of its
    ``v1,`` signatures matches and its timestamp is within :data:`TOLERANCE`."""
    if not msg_id or not timestamp or not header:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        stamp = int(timestamp)
    except ValueError:
        return "webhook-timestamp is not a number of seconds"
    now = time.time() if now is None else now
    if abs(now - stamp) > TOLERANCE:
        return f"webhook-timestamp is more than {TOLERANCE} s from now"
    given = [part.removeprefix("v1,") for part in header.split() if part.startswith("v1,")]
    expected = [part.removeprefix("v1,") for part in sign(secrets, msg_id, stamp, body).split()]
    if any(hmac.compare_digest(g.encode(), e.encode()) for g in given for e in expected):
        return None
    return "no v1 signature matches the endpoint's secret"


def sign_ed25519(key: Ed25519PrivateKey, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1a,`` signature, to append to the header with a space."""
    return "v1a," + base64.b64encode(key.sign(_signed(msg_id, timestamp, body))).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(key: Ed25519PrivateKey) -> str:
    """A stable id for a key pair: the start of its public key's SHA-256."""
    return _b64url(hashlib.sha256(public_bytes(key)).digest()[:12])


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def jwk(key: Ed25519PrivateKey) -> dict[str, Any]:
    """The public half of a key as a JSON Web Key (RFC 8037)."""
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_bytes(key)),
            "kid": key_id(key), "use": "sig", "alg": "EdDSA"}
