"""What the store forgets: retention (old attempts, response excerpts,
archived events, OTPs no longer needed) and a customer's request to be
forgotten. Every pass works in small batches, so deliveries writing at the
same time are never held up for long.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from shipcast.security.identifiers import normalized
from shipcast.store.base import StoreBase, _utc
from shipcast.store.tables import attempts, deliveries, events, opt_outs, outbox, provider_messages

#: What a customer's forgotten fields read afterwards.
REDACTED = "[redacted]"
#: The event types after which an order's OTP has no use.
DONE = ("DEL", "RET")


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone)


def same_phone(a: str | None, b: str) -> bool:
    """Two ways of writing one number: the same last ten digits (the national number)."""
    return a is not None and len(_digits(b)) >= 6 and _digits(a)[-10:] == _digits(b)[-10:]


@dataclass
class Forgotten:
    """What a request to forget a customer changed, table by table."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    #: Messages of the development outbox about their orders, deleted (they hold full addresses).
    outbox: int = 0
    event_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "deliveries": self.deliveries, "attempts": self.attempts,
                "outbox": self.outbox,
                "opt_outs": "kept: stored as keyed hashes, so the customer stays opted out (their masked "
                            "address dropped)"}


def redact_customer(body: dict[str, Any]) -> dict[str, Any]:
    """An archived event with the customer's personal data taken out: their
    name, phone, email and address, who received the parcel, what they wrote,
    the OTP. The order and its history stay."""
    order = dict(body.get("order") or {})
    order["customer"] = {**(order.get("customer") or {}), "name": REDACTED, "phone": None, "email": None}
    order["address"] = None
    redacted = {**body, "order": order, "otp": None}
    if redacted.get("delivery_confirmation"):
        redacted["delivery_confirmation"] = {**redacted["delivery_confirmation"], "received_by": None,
                                             "proof_url": None}
    if redacted.get("customer_input"):
        redacted["customer_input"] = {key: (None if key in ("instructions", "comment") else value)
                                      for key, value in redacted["customer_input"].items()}
    return redacted


class PrivacyStore(StoreBase):

    async def prune_attempts(self, before: datetime, batch: int, *, dry_run: bool = False) -> int:
        """Delete up to ``batch`` attempts logged before ``before`` (with
        ``dry_run``: count every one that would go)."""
        return await self._delete_some(attempts, attempts.c.at < _utc(before), batch, dry_run=dry_run)

    async def strip_responses(self, before: datetime, batch: int, *, dry_run: bool = False,
                              since: datetime | None = None) -> int:
        """Drop the response excerpts of up to ``batch`` attempts logged before
        ``before`` (and, with ``since``, not before it: older ones go whole)."""
        old = sa.and_(attempts.c.at < _utc(before), attempts.c.response.is_not(None),
                      attempts.c.at >= _utc(since) if since is not None else sa.true())
        if dry_run:
            return await self._total(attempts, old)
        found = [row.id for row in await self._rows(sa.select(attempts.c.id).where(old).limit(batch))]
        if found:
            await self._run([(attempts.update().where(attempts.c.id.in_(found)).values(response=None), None)])
        return len(found)

    async def prune_events(self, before: datetime, batch: int, *, dry_run: bool = False) -> int:
        """Delete up to ``batch`` events archived before ``before``, with their
        deliveries, attempts and provider messages."""
        old = events.c.stored_at < _utc(before)
        if dry_run:
            return await self._total(events, old)
        found = [row.event_id for row in await self._rows(sa.select(events.c.event_id).where(old).limit(batch))]
        if found:
            await self._run([(table.delete().where(table.c.event_id.in_(found)), None)
                             for table in (attempts, provider_messages, deliveries, events)])
            self._stored_events.clear()  # gone: a copy seen again is stored again
        return len(found)

    async def drop_spent_otps(self, now: datetime, batch: int, *, dry_run: bool = False) -> int:
        """Take the OTP out of up to ``batch`` archived events whose order was
        delivered or returned since, or whose OTP has expired."""
        later = events.alias("later")
        done = sa.exists().where(later.c.partner_id == events.c.partner_id, later.c.order_id == events.c.order_id,
                                 later.c.event_type.in_(DONE))
        # Stored JSON writes a present OTP as "otp":{…}, an absent one as "otp":null.
        holding = events.c.body.like('%"otp":{%')
        limit = None if dry_run else batch
        changed = {row.event_id: row.body for row in await self._rows(
            sa.select(events.c.event_id, events.c.body).where(holding, done).limit(limit))}
        # Expired OTPs of orders still open: page through them all (however many are still valid).
        last = ""
        while limit is None or len(changed) < limit:
            rows = await self._rows(sa.select(events.c.event_id, events.c.body)
                                    .where(holding, ~done, events.c.event_id > last)
                                    .order_by(events.c.event_id).limit(batch * 4))
            if not rows:
                break
            last = rows[-1].event_id
            for row in rows:
                expires = (orjson.loads(row.body).get("otp") or {}).get("expires_at")
                if expires and datetime.fromisoformat(expires.replace("Z", "+00:00")) <= now:
                    changed[row.event_id] = row.body
                if limit is not None and len(changed) >= limit:
                    break
        if changed and not dry_run:
            await self._rewrite({event_id: {**orjson.loads(body), "otp": None} for event_id, body in changed.items()})
        return len(changed)

    async def _rewrite(self, bodies: Mapping[str, dict[str, Any]]) -> None:
        await self._run([(events.update().where(events.c.event_id == sa.bindparam("id"))
                          .values(body=sa.bindparam("new_body")),
                          [{"id": event_id, "new_body": orjson.dumps(body).decode()}
                           for event_id, body in bodies.items()])])

    async def forget_customer(self, *, phone: str | None = None, email: str | None = None,
                              partner_id: str | None = None, batch: int = 500) -> Forgotten:
        """Redact a customer's personal data from every archived event that
        names them (by phone or email, of one partner or all), the addresses
        of their deliveries, and the provider responses logged for them; and
        delete the development outbox's messages about those events."""
        if not phone and not email:
            raise ValueError("give a phone number or an email address")
        # A coarse filter in SQL (the number's last two digits, which no way of
        # writing it splits, or the address), the exact match in Python.
        needle = _digits(phone or "")[-2:] if phone else normalized(email or "")
        candidates = events.c.body.like(f"%{needle}%") if phone else sa.func.lower(events.c.body).like(
            f"%{needle}%")
        done = Forgotten()
        last = ""
        while True:
            query = sa.select(events.c.event_id, events.c.body).where(candidates, events.c.event_id > last)
            if partner_id:
                query = query.where(events.c.partner_id == partner_id)
            rows = await self._rows(query.order_by(events.c.event_id).limit(batch))
            if not rows:
                break
            last = rows[-1].event_id
            matched = {row.event_id: orjson.loads(row.body) for row in rows
                       if _names(orjson.loads(row.body), phone, email)}
            if matched:
                await self._rewrite({event_id: redact_customer(body) for event_id, body in matched.items()})
                done.event_ids += list(matched)
                done.events += len(matched)
        for start in range(0, len(done.event_ids), batch):
            ids = done.event_ids[start:start + batch]
            await self._forget_opt_out_masks(ids)
            done.deliveries += await self._total(deliveries, sa.and_(deliveries.c.event_id.in_(ids),
                                                                     deliveries.c.channel != "webhook"))
            done.attempts += await self._total(attempts, sa.and_(attempts.c.event_id.in_(ids),
                                                                 attempts.c.response.is_not(None)))
            done.outbox += await self._total(outbox, outbox.c.event_id.in_(ids))
            await self._run([
                (deliveries.update().where(deliveries.c.event_id.in_(ids), deliveries.c.channel != "webhook")
                 .values(address=REDACTED), None),
                (attempts.update().where(attempts.c.event_id.in_(ids)).values(response=None), None),
                (outbox.delete().where(outbox.c.event_id.in_(ids)), None)])
        return done

    async def _forget_opt_out_masks(self, event_ids: list[str]) -> None:
        """Drop the masked address of the opt-outs a forgotten customer's
        deliveries were masked as (the opt-out itself stays: the customer
        stays opted out). Another customer of the partner masked the same
        on that channel loses the mask shown beside theirs too: the list
        shows fewer masks rather than keep one of the forgotten's."""
        masked = {(row.channel, row.partner_id, row.address) for row in await self._rows(
            sa.select(deliveries.c.channel, deliveries.c.partner_id, deliveries.c.address).where(
                deliveries.c.event_id.in_(event_ids), deliveries.c.channel != "webhook",
                deliveries.c.address != REDACTED).distinct())}
        await self._run([(opt_outs.update().where(
            opt_outs.c.channel == channel, opt_outs.c.partner_id == partner_id,
            sa.func.lower(opt_outs.c.address_mask) == address.lower()).values(address_mask=None), None)
            for channel, partner_id, address in sorted(masked)])


def _names(body: Mapping[str, Any], phone: str | None, email: str | None) -> bool:
    customer = ((body.get("order") or {}).get("customer") or {})
    if phone and same_phone(customer.get("phone"), phone):
        return True
    return bool(email and customer.get("email") and normalized(customer["email"]) == normalized(email))
