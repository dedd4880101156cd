"""The portal's people: invitations (one-time sign-in links), sessions, and
the audit log of every change made through the portal or the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from shipcast.exceptions import StoreError
from shipcast.store.base import StoreBase, _aware, now
from shipcast.store.tables import audit_log, portal_invitations, portal_sessions


def _session(row: sa.Row[Any]) -> dict[str, Any]:
    return {"id": row.id, "email": row.email, "partner_id": row.partner_id, "role": row.role, "csrf": row.csrf,
            "created_at": _aware(row.created_at), "last_seen": _aware(row.last_seen),
            "revoked_at": _aware(row.revoked_at)}


class PortalStore(StoreBase):

    # -- invitations ------------------------------------------------------

    async def add_invitation(self, token_hash: str, *, email: str, partner_id: str | None, role: str,
                             invited_by: str, expires_at: datetime) -> None:
        await self._run([(portal_invitations.insert(), [{
            "token_hash": token_hash, "email": email, "partner_id": partner_id, "role": role,
            "invited_by": invited_by, "created_at": now(), "expires_at": expires_at}])])

    async def take_invitation(self, token_hash: str) -> dict[str, Any] | None:
        """Use an invitation: the first caller within its lifetime gets it;
        anyone after, or after it expired, gets ``None``."""
        stamp = now()
        table = portal_invitations
        try:
            async with self._connection(False) as conn:
                taken = await conn.execute(table.update().where(
                    table.c.token_hash == token_hash, table.c.used_at.is_(None),
                    table.c.expires_at > stamp).values(used_at=stamp))
                if taken.rowcount != 1:
                    return None
                row = (await conn.execute(sa.select(table).where(table.c.token_hash == token_hash))).one()
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc
        return {"email": row.email, "partner_id": row.partner_id, "role": row.role}

    async def peek_invitation(self, token_hash: str) -> dict[str, Any] | None:
        """An invitation as it stands (used or not, expired or not), without using it."""
        rows = await self._rows(sa.select(portal_invitations).where(portal_invitations.c.token_hash == token_hash))
        if not rows:
            return None
        row = rows[0]
        return {"email": row.email, "partner_id": row.partner_id, "role": row.role,
                "expires_at": _aware(row.expires_at), "used_at": _aware(row.used_at)}

    async def list_invitations(self, partner_id: str | None = None, *, operators: bool = False,
                               limit: int = 200) -> list[dict[str, Any]]:
        table = portal_invitations
        query = sa.select(table).order_by(table.c.created_at.desc()).limit(limit)
        if operators:
            query = query.where(table.c.partner_id.is_(None))
        elif partner_id is not None:
            query = query.where(table.c.partner_id == partner_id)
        return [{"id": r.token_hash[:16], "email": r.email, "partner_id": r.partner_id, "role": r.role,
                 "invited_by": r.invited_by, "created_at": _aware(r.created_at),
                 "expires_at": _aware(r.expires_at), "used_at": _aware(r.used_at)}
                for r in await self._rows(query)]

    # -- sessions ---------------------------------------------------------

    async def add_session(self, session_hash: str, session_id: str, *, email: str, partner_id: str | None,
                          role: str, csrf: str) -> None:
        stamp = now()
        await self._run([(portal_sessions.insert(), [{
            "session_hash": session_hash, "id": session_id, "email": email, "partner_id": partner_id,
            "role": role, "csrf": csrf, "created_at": stamp, "last_seen": stamp}])])

    async def get_session(self, session_hash: str) -> dict[str, Any] | None:
        rows = await self._rows(sa.select(portal_sessions).where(portal_sessions.c.session_hash == session_hash))
        return _session(rows[0]) if rows else None

    async def touch_session(self, session_hash: str) -> None:
        await self._run([(portal_sessions.update().where(portal_sessions.c.session_hash == session_hash)
                          .values(last_seen=now()), None)])

    async def revoke_sessions(self, *, session_hash: str | None = None, session_id: str | None = None,
                              email: str | None = None, partner_id: str | None = None,
                              everyone_of_partner: bool = False) -> int:
        """Revoke one session (by its hash or id), or every live one of a person
        (``email`` within ``partner_id``), or of a partner. Returns how many."""
        table = portal_sessions
        query = table.update().where(table.c.revoked_at.is_(None)).values(revoked_at=now())
        if session_hash is not None:
            query = query.where(table.c.session_hash == session_hash)
        elif session_id is not None:
            query = query.where(table.c.id == session_id)
        elif email is not None:
            query = query.where(table.c.email == email, table.c.partner_id.is_(None) if partner_id is None
                                else table.c.partner_id == partner_id)
        elif everyone_of_partner and partner_id is not None:
            query = query.where(table.c.partner_id == partner_id)
        else:
            raise ValueError("say which sessions to revoke")
        if session_id is not None and partner_id is not None:
            query = query.where(table.c.partner_id == partner_id)
        try:
            async with self._connection(False) as conn:
                return int((await conn.execute(query)).rowcount or 0)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def list_sessions(self, partner_id: str | None = None, *, operators: bool = False,
                            live_since: datetime | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Sessions not revoked and seen since ``live_since``, newest first (no CSRF tokens)."""
        table = portal_sessions
        query = sa.select(table).where(table.c.revoked_at.is_(None)).order_by(table.c.last_seen.desc()).limit(limit)
        if operators:
            query = query.where(table.c.partner_id.is_(None))
        elif partner_id is not None:
            query = query.where(table.c.partner_id == partner_id)
        if live_since is not None:
            query = query.where(table.c.last_seen >= live_since)
        return [{key: value for key, value in _session(row).items() if key != "csrf"}
                for row in await self._rows(query)]

    async def prune_portal(self, before: datetime, batch: int, *, dry_run: bool = False) -> int:
        """Delete up to ``batch`` invitations that expired, and sessions last
        seen (or revoked), before ``before``: none of them can sign anyone in
        any more (with ``dry_run``: count every one that would go)."""
        dead = [(portal_invitations, portal_invitations.c.token_hash, portal_invitations.c.expires_at < before),
                (portal_sessions, portal_sessions.c.session_hash,
                 sa.or_(portal_sessions.c.last_seen < before, portal_sessions.c.revoked_at < before))]
        if dry_run:
            return sum([await self._total(table, old) for table, _, old in dead])
        count = 0
        for table, key, old in dead:
            found = [row[0] for row in await self._rows(sa.select(key).where(old).limit(batch))]
            if found:
                await self._run([(table.delete().where(key.in_(found)), None)])
            count += len(found)
        return count

    # -- audit log --------------------------------------------------------

    async def add_audit(self, *, actor: str, via: str, partner_id: str | None, action: str,
                        subject: str | None, before: Any, after: Any) -> None:
        def dumped(value: Any) -> str | None:
            return None if value is None else orjson.dumps(value, default=str).decode()

        await self._run([(audit_log.insert(), [{
            "at": now(), "actor": actor[:300], "via": via, "partner_id": partner_id, "action": action,
            "subject": subject[:300] if subject else subject, "before": dumped(before), "after": dumped(after)}])])

    async def list_audit(self, partner_id: str | None = None, *, before_id: int | None = None,
                         action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The audit log newest first, a page at a time: the next page starts
        before the last row's ``id`` (keyset, not offset)."""
        query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if partner_id is not None:
            query = query.where(audit_log.c.partner_id == partner_id)
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        if action:
            query = query.where(audit_log.c.action == action)
        return [{"id": r.id, "at": _aware(r.at), "actor": r.actor, "via": r.via, "partner_id": r.partner_id,
                 "action": r.action, "subject": r.subject,
                 "before": orjson.loads(r.before) if r.before else None,
                 "after": orjson.loads(r.after) if r.after else None}
                for r in await self._rows(query)]
