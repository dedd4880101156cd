"""Partner-scoped API tokens (``scp_…``): made, listed and revoked the same
way through the API, the portal and the command line, each change audited."""

from __future__ import annotations

import hashlib
import secrets

from shipcast.app.audit import Actor, record
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError

PARTNER_TOKEN_PREFIX = "scp_"
NAME_MAX = 200


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(services: Services, partner_id: str, name: str, actor: Actor) -> dict[str, str]:
    """A new token scoped to ``partner_id``, shown this once: only its hash is
    stored, and the start of that hash is the token's id.

    :raises ConfigError: the name is empty or too long.
    """
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise ConfigError("invalid token", {"name": [f"must be 1 to {NAME_MAX} characters"]})
    if "\x00" in name:  # PostgreSQL stores no NUL
        raise ConfigError("invalid token", {"name": ["holds a NUL character, which is not text"]})
    token = PARTNER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_hash(token)
    await services.store.add_partner_token(digest, partner_id, name)
    await record(services, actor, "token.create", partner_id=partner_id, subject=digest[:16],
                 after={"id": digest[:16], "name": name})
    return {"partner_id": partner_id, "id": digest[:16], "name": name, "token": token}


async def revoke_token(services: Services, partner_id: str, token_id: str, actor: Actor) -> bool:
    """Revoke one of ``partner_id``'s tokens at once; ``False`` if it has no such token."""
    before = [t for t in await services.store.list_partner_tokens(partner_id) if t.get("id") == token_id]
    if not await services.store.delete_partner_token(partner_id, token_id):
        return False
    await record(services, actor, "token.revoke", partner_id=partner_id, subject=token_id,
                 before=before[0] if before else {"id": token_id})
    return True
