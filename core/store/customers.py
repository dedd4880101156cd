"""What customer channels keep about customers: send claims, provider
messages and their reports, opt-outs (addresses keyed, never in clear)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from shipcast.exceptions import StoreError
from shipcast.security.identifiers import mask
from shipcast.store.base import StoreBase, _aware, _utc, now
from shipcast.store.tables import deliveries, opt_outs, provider_messages

#: Where an opt-out sits in a partner's list: ``(at, channel, address_hash)``.
OptOutKey = tuple[datetime, str, str]


def opt_out_key(row: dict[str, Any]) -> OptOutKey:
    """The key of a row of :meth:`CustomerStore.list_opt_outs`: the next page starts after it."""
    return row["at"], row["channel"], row["address_hash"]


class CustomerStore(StoreBase):

    async def claim(self, event_id: str, channel: str, target: str, partner_id: str, address: str,
                    stale_after: float) -> str | None:
        """Claim the right to send one message, so concurrent or redelivered
        copies of an event never send it twice. Returns ``None`` when claimed,
        else the delivery's status (``delivered``, or ``sending`` while another
        copy is in flight). A ``sending`` claim older than ``stale_after``
        seconds belongs to a worker that died: it is taken over."""
        stamp = now()
        key = (deliveries.c.event_id == event_id) & (deliveries.c.channel == channel) \
            & (deliveries.c.target == target)
        try:
            async with self._connection(False) as conn:
                inserted = await conn.execute(self._insert(deliveries).on_conflict_do_nothing(), {
                    "event_id": event_id, "channel": channel, "target": target, "partner_id": partner_id,
                    "address": address, "status": "sending", "attempts": 0, "updated_at": stamp})
                if inserted.rowcount == 1:
                    return None
                taken = await conn.execute(deliveries.update().where(key & (
                    deliveries.c.status.not_in(("delivered", "sending"))
                    | ((deliveries.c.status == "sending")
                       & (deliveries.c.updated_at < stamp - timedelta(seconds=stale_after))))
                ).values(status="sending", updated_at=stamp))
                if taken.rowcount == 1:
                    return None
                found = (await conn.execute(sa.select(deliveries.c.status).where(key))).first()
                return str(found.status) if found is not None else "sending"
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_provider_message(self, provider: str, message_id: str, event_id: str, channel: str,
                                   target: str) -> None:
        await self._run([(self._insert(provider_messages).on_conflict_do_nothing(), [
            {"provider": provider, "message_id": message_id, "event_id": event_id, "channel": channel,
             "target": target, "rank": 0, "at": now()}])])

    async def sent_message(self, event_id: str, channel: str, target: str) -> str | None:
        """The id a provider gave a message sent under this delivery's current
        ``sending`` claim (noted since it was taken), if any: a message from an
        earlier claim, which may have failed since, does not count."""
        found = await self._rows(sa.select(provider_messages.c.message_id).join(deliveries, (
            (deliveries.c.event_id == provider_messages.c.event_id)
            & (deliveries.c.channel == provider_messages.c.channel)
            & (deliveries.c.target == provider_messages.c.target))).where(
            (provider_messages.c.event_id == event_id) & (provider_messages.c.channel == channel)
            & (provider_messages.c.target == target) & (deliveries.c.status == "sending")
            & (provider_messages.c.at >= deliveries.c.updated_at)).limit(1))
        return str(found[0].message_id) if found else None

    async def provider_status(self, provider: str, message_id: str, status: str,
                              rank: int) -> dict[str, Any] | None:
        """Record a provider's status for a message it accepted, unless a later
        one (a higher ``rank``) is recorded already: callbacks come duplicated
        and out of order. Returns the message's delivery (``event_id``,
        ``channel``, ``target``, ``partner_id``) when it was recorded."""
        key = (provider_messages.c.provider == provider) & (provider_messages.c.message_id == message_id)
        try:
            async with self._connection(False) as conn:
                moved = await conn.execute(provider_messages.update().where(
                    key & (provider_messages.c.rank < rank)).values(rank=rank, at=now()))
                if moved.rowcount != 1:
                    return None
                found = (await conn.execute(sa.select(provider_messages).where(key))).one()
                delivery = (deliveries.c.event_id == found.event_id) & (deliveries.c.channel == found.channel) \
                    & (deliveries.c.target == found.target)
                await conn.execute(deliveries.update().where(delivery).values(provider_status=status[:64]))
                partner = (await conn.execute(sa.select(deliveries.c.partner_id).where(delivery))).first()
                return {"event_id": found.event_id, "channel": found.channel, "target": found.target,
                        "partner_id": partner.partner_id if partner is not None else None}
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    # -- customers: opt-outs and the order's later events ---------------------

    async def undelivered(self, event_id: str, channel: str, target: str, reason: str) -> bool:
        """A delivery the provider accepted and later failed (an SMS the
        carrier refused): logged as dead with the provider's reason, so a
        replay, or another copy of the event, may send it again. Returns
        whether it was logged as delivered until now."""
        try:
            async with self._connection(False) as conn:
                changed = await conn.execute(deliveries.update().where(
                    (deliveries.c.event_id == event_id) & (deliveries.c.channel == channel)
                    & (deliveries.c.target == target) & (deliveries.c.status == "delivered")
                ).values(status="dead", last_error=reason, updated_at=now()))
                return bool(changed.rowcount)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def add_opt_out(self, channel: str, partner_id: str, address: str, reason: str, *,
                          hashed: bool = False, masked: str | None = None) -> None:
        """Record that a customer opted out: ``address`` is keyed before it is
        stored, beside its mask (or given as stored already, from an
        unsubscribe link, with the mask it carries if any)."""
        await self._run([(self._insert(opt_outs).on_conflict_do_nothing(), [
            {"channel": channel, "partner_id": partner_id,
             "address_hash": address if hashed else self.identifiers.key(address), "reason": reason,
             "at": now(), "address_mask": masked if hashed else mask(address)}])])

    async def list_opt_outs(self, partner_id: str, *, channels: Sequence[str] | None = None,
                            hashes: Sequence[str] | None = None, after: OptOutKey | None = None,
                            limit: int = 25) -> list[dict[str, Any]]:
        """A partner's opt-outs, newest first, a page at a time (keyset, like
        :meth:`page_deliveries`: the next page starts after the last row's
        :func:`opt_out_key`); ``hashes``: only those stored so (one customer's)."""
        o = opt_outs.c
        query = sa.select(opt_outs).where(o.partner_id == partner_id).order_by(
            o.at.desc(), o.channel.desc(), o.address_hash.desc()).limit(limit)
        if channels is not None:
            query = query.where(o.channel.in_(list(channels)))
        if hashes is not None:
            query = query.where(o.address_hash.in_(list(hashes)))
        if after is not None:
            at, channel, hashed = after
            stamp = _utc(at)
            query = query.where(o.at <= stamp, sa.or_(o.at < stamp, sa.and_(o.at == stamp, sa.or_(
                o.channel < channel, sa.and_(o.channel == channel, o.address_hash < hashed)))))
        return [{**row._asdict(), "at": _aware(row.at)} for row in await self._rows(query)]

    async def find_opt_out(self, partner_id: str, channel: str, hash_start: str) -> dict[str, Any] | None:
        """The partner's opt-out on ``channel`` whose stored hash starts with ``hash_start`` (hex), if one."""
        rows = await self._rows(sa.select(opt_outs).where(
            opt_outs.c.partner_id == partner_id, opt_outs.c.channel == channel,
            opt_outs.c.address_hash.startswith(hash_start, autoescape=True)).limit(2))
        return {**rows[0]._asdict(), "at": _aware(rows[0].at)} if len(rows) == 1 else None

    async def delete_opt_out(self, partner_id: str, channel: str, address_hash: str) -> bool:
        """Lift one opt-out; ``False`` when it was not there (lifted meanwhile)."""
        try:
            async with self._connection(False) as conn:
                gone = await conn.execute(opt_outs.delete().where(
                    opt_outs.c.partner_id == partner_id, opt_outs.c.channel == channel,
                    opt_outs.c.address_hash == address_hash))
                return bool(gone.rowcount)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {exc}") from exc

    async def opted_out(self, channel: str, partner_id: str, address: str) -> str | None:
        """Why this address opted out of this partner's messages on this
        channel, if it did. One found under an older key (or as an earlier
        version's bare hash) is keyed again under the current one."""
        matches = self.identifiers.matches(address)
        rows = await self._rows(sa.select(
            opt_outs.c.reason, opt_outs.c.address_hash, opt_outs.c.address_mask).where(
            opt_outs.c.channel == channel, opt_outs.c.partner_id == partner_id,
            opt_outs.c.address_hash.in_(matches)))
        if not rows:
            return None
        current = [row for row in rows if row.address_hash == matches[0]]
        if len(current) < len(rows):  # some under an older key, or an earlier version's bare hash
            row = (current or rows)[0]
            await self._run([
                (self._insert(opt_outs).on_conflict_do_nothing(), [
                    {"channel": channel, "partner_id": partner_id, "address_hash": matches[0],
                     "reason": row.reason, "at": now(), "address_mask": row.address_mask or mask(address)}]),
                (opt_outs.delete().where(opt_outs.c.channel == channel, opt_outs.c.partner_id == partner_id,
                                         opt_outs.c.address_hash.in_(matches[1:])), None)])
        return str((current or rows)[0].reason)
