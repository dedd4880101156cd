"""Partner API tokens (hashed) and the webhook signing keys."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shipcast.store.base import StoreBase, _aware, now
from shipcast.store.tables import partner_tokens, signing_keys


class KeyStore(StoreBase):

    async def add_partner_token(self, token_hash: str, partner_id: str, name: str) -> None:
        await self._run([(partner_tokens.insert(), [{"token_hash": token_hash, "partner_id": partner_id,
                                                     "name": name, "created_at": now()}])])

    async def list_partner_tokens(self, partner_id: str) -> list[dict[str, Any]]:
        rows = await self._rows(sa.select(partner_tokens).where(partner_tokens.c.partner_id == partner_id)
                                .order_by(partner_tokens.c.created_at))
        return [{"id": r.token_hash[:16], "name": r.name, "created_at": _aware(r.created_at)} for r in rows]

    async def delete_partner_token(self, partner_id: str, token_id: str) -> bool:
        """Revoke the partner's token whose hash starts with ``token_id`` (16 hex digits)."""
        if len(token_id) != 16:
            return False
        found = (partner_tokens.c.partner_id == partner_id) & partner_tokens.c.token_hash.startswith(
            token_id, autoescape=True)
        rows = await self._rows(sa.select(partner_tokens.c.token_hash).where(found))
        await self._run([(partner_tokens.delete().where(found), None)])
        return bool(rows)

    async def partner_for_token(self, token_hash: str) -> str | None:
        rows = await self._rows(sa.select(partner_tokens.c.partner_id)
                                .where(partner_tokens.c.token_hash == token_hash))
        return str(rows[0].partner_id) if rows else None

    async def get_signing_keys(self) -> list[tuple[str, str]]:
        """``(kid, encrypted private key)``, newest first."""
        rows = await self._rows(sa.select(signing_keys).order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid))
        return [(r.kid, r.private_key) for r in rows]

    async def add_signing_key(self, kid: str, private_key: str) -> None:
        await self._run([(self._insert(signing_keys).on_conflict_do_nothing(),
                          [{"kid": kid, "private_key": private_key, "created_at": now()}])])
