"""Partners' applied configs, disabled targets, endpoint health and the
operator events about it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from shipcast.exceptions import StoreError
from shipcast.model.partners import Partner
from shipcast.store.base import StoreBase, _aware, now
from shipcast.store.records import partner_from_json
from shipcast.store.tables import disabled_targets, endpoint_health, operator_events, partner_tokens, partners


class PartnerStore(StoreBase):

    async def put_partners(self, items: Sequence[Partner], *, reenable: bool = True) -> None:
        """Upsert partners and, with ``reenable``, re-enable their disabled
        targets (the operator has just re-asserted their config)."""
        stamp = now()
        rows = [{"id": p.id, "name": p.name, "config": orjson.dumps(p.to_dict()).decode(),
                 "updated_at": stamp} for p in items]
        upsert = self._insert(partners)
        upsert = upsert.on_conflict_do_update(
            index_elements=[partners.c.id],
            set_={"name": upsert.excluded.name, "config": upsert.excluded.config,
                  "updated_at": upsert.excluded.updated_at})
        ids = [p.id for p in items]
        statements: list[tuple[Any, Any]] = [(upsert, rows)]
        if reenable:
            statements += [(table.delete().where(table.c.partner_id.in_(ids)), None)
                           for table in (disabled_targets, endpoint_health)]
        await self._run(statements)

    async def get_partners(self) -> list[Partner]:
        rows = await self._rows(sa.select(partners.c.config).order_by(partners.c.id))
        return [partner_from_json(row.config) for row in rows]

    async def get_partner(self, partner_id: str) -> Partner | None:
        rows = await self._rows(sa.select(partners.c.config).where(partners.c.id == partner_id))
        return partner_from_json(rows[0].config) if rows else None

    async def delete_partner(self, partner_id: str) -> bool:
        rows = await self._rows(sa.select(partners.c.id).where(partners.c.id == partner_id))
        await self._run([(table.delete().where(table.c.partner_id == partner_id), None)
                         for table in (disabled_targets, endpoint_health, partner_tokens)]
                        + [(partners.delete().where(partners.c.id == partner_id), None)])
        return bool(rows)

    # -- disabled targets -------------------------------------------------

    async def disable_target(self, channel: str, partner_id: str, target: str, reason: str) -> None:
        insert = self._insert(disabled_targets).on_conflict_do_nothing()
        await self._run([(insert, [{"channel": channel, "partner_id": partner_id, "target": target,
                                    "reason": reason, "disabled_at": now()}])])

    async def enable_target(self, channel: str, partner_id: str, target: str) -> None:
        """Re-enable a target and forget its failures."""
        await self._run([(table.delete().where((table.c.channel == channel) & (table.c.partner_id == partner_id)
                                               & (table.c.target == target)), None)
                         for table in (disabled_targets, endpoint_health)])

    async def get_disabled_targets(self) -> set[tuple[str, str, str]]:
        rows = await self._rows(sa.select(disabled_targets.c.channel, disabled_targets.c.partner_id,
                                          disabled_targets.c.target))
        return {(row.channel, row.partner_id, row.target) for row in rows}

    # -- events -----------------------------------------------------------

    async def get_failing(self) -> dict[tuple[str, str, str], datetime]:
        rows = await self._rows(sa.select(endpoint_health))
        return {(r.channel, r.partner_id, r.target): _aware(r.failing_since) or now() for r in rows}

    async def mark_failing(self, channel: str, partner_id: str, target: str, since: datetime,
                           error: str) -> datetime | None:
        """Note that a target is failing. Returns when its failing began if it
        was failing already (another process may have noted it first)."""
        key = (endpoint_health.c.channel == channel) & (endpoint_health.c.partner_id == partner_id) \
            & (endpoint_health.c.target == target)
        try:
            async with self._connection(False) as conn:
                inserted = await conn.execute(self._insert(endpoint_health).on_conflict_do_nothing(), {
                    "channel": channel, "partner_id": partner_id, "target": target,
                    "failing_since": since, "last_error": error})
                if inserted.rowcount == 1:
                    return None
                await conn.execute(endpoint_health.update().where(key).values(last_error=error))
                found = (await conn.execute(sa.select(endpoint_health.c.failing_since).where(key))).first()
                return _aware(found.failing_since) if found is not None else since
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def clear_failing(self, channel: str, partner_id: str, target: str) -> datetime | None:
        """Forget that a target was failing; returns since when, if it was."""
        key = (endpoint_health.c.channel == channel) & (endpoint_health.c.partner_id == partner_id) \
            & (endpoint_health.c.target == target)
        try:
            async with self._connection(False) as conn:
                found = (await conn.execute(sa.select(endpoint_health.c.failing_since).where(key))).first()
                deleted = await conn.execute(endpoint_health.delete().where(key))
                # Only the caller that deleted the row reports the recovery.
                return _aware(found.failing_since) if found is not None and deleted.rowcount == 1 else None
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_operator_event(self, event_id: str, type_: str, body: dict[str, Any]) -> None:
        await self._run([(operator_events.insert(), [{"id": event_id, "at": now(), "type": type_,
                                                      "body": orjson.dumps(body).decode()}])])

    async def list_operator_events(self, *, unsent: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Operator events, oldest first when ``unsent`` (to send), else newest first."""
        query = sa.select(operator_events).limit(limit)
        if unsent:
            query = query.where(operator_events.c.sent_at.is_(None)).order_by(operator_events.c.at)
        else:
            query = query.order_by(operator_events.c.at.desc())
        return [{"id": r.id, "type": r.type, "at": _aware(r.at), "sent_at": _aware(r.sent_at),
                 "body": orjson.loads(r.body)} for r in await self._rows(query)]

    async def mark_operator_event_sent(self, event_id: str) -> None:
        await self._run([(operator_events.update().where(operator_events.c.id == event_id)
                          .values(sent_at=now()), None)])
