"""The Ed25519 key pair for ``v1a`` signatures: made once, stored encrypted,
shared by every process; its public half is served as a JWKS document."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from shipcast.plugin.context import ChannelContext
from shipcast.security.crypto import secret_box
from shipcast.security.signing import key_id


def _load(services: ChannelContext, stored: str) -> Ed25519PrivateKey:
    raw = base64.b64decode(secret_box(services.settings).decrypt(stored))
    return Ed25519PrivateKey.from_private_bytes(raw)


async def signing_keys(services: ChannelContext) -> list[Ed25519PrivateKey]:
    """Every stored key, newest (the one that signs) first; one is made if none is stored."""
    stored = await services.store.get_signing_keys()
    if not stored:
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        # Two processes may race here: both insert, the store keeps both, all sign alike after a reload.
        await services.store.add_signing_key(key_id(key), secret_box(services.settings).encrypt(
            base64.b64encode(raw).decode()))
        stored = await services.store.get_signing_keys()
    return [_load(services, private) for _, private in stored]
