"""What a merchant's customers got: the customer message log (every message
of the customer channels, those whose ``customer_field`` is set: sent,
skipped or waiting, and why), found by order id or by the customer's phone or
email; and the customers' opt-outs, listed, looked up and lifted. The partner
API and the portal both call these functions, so no rule is written twice.

The delivery log keeps only a masked address, which many customers share. A
search by phone or email narrows the log to the mask of the address as each
channel sends to it, then confirms each candidate against the customer of the
archived event: a customer who was forgotten (their event redacted) is found
no more. At most :data:`SCAN_LIMIT` candidates are read for one page; a page
that stops there says so and links on from where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shipcast.app.audit import Actor, record
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError
from shipcast.messaging.rules import asked_by_customer, held_because
from shipcast.model.outcomes import DeliveryStatus
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel
from shipcast.security.identifiers import mask
from shipcast.store.customers import OptOutKey, opt_out_key
from shipcast.store.deliveries import DeliveryKey, delivery_key

#: The most candidate rows (same mask) read to fill one page of a search by phone or email.
SCAN_LIMIT = 2000
#: Candidates read at a time.
BATCH = 200
#: The search's fields, each bounded.
FIELDS = {"order_id": 100, "phone": 40, "email": 254, "channel": 64, "status": 16}
#: An opt-out's id: the start of its stored (keyed) hash.
OPT_OUT_ID = re.compile(r"[0-9a-f]{16}")


def customer_channels(services: Services, customer_field: str | None = None) -> dict[str, type[Channel]]:
    """The installed channels whose messages go to the order's customer (by
    ``customer_field``, ``"phone"`` or ``"email"``, when given), by name."""
    return {name: channel for name, channel in sorted(services.registry.channels.items())
            if channel.customer_field and customer_field in (None, channel.customer_field)}


def _not_a_customer_channel(channels: Mapping[str, Any]) -> list[str]:
    return [f"not a customer channel; those are: {', '.join(channels)}"]


def _config(partner: Partner | None, channel: str) -> Mapping[str, Any]:
    return (partner.channels.get(channel) or {}) if partner is not None else {}


@dataclass
class CustomerSearch:
    """A search of the log, checked: the channels it reads, and for a search
    by phone or email, the customer's address as each of them sends to it."""

    channels: list[str]
    order_id: str | None = None
    status: str | None = None
    #: ``"phone"`` or ``"email"`` when searching by one.
    by: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)


def customer_addresses(services: Services, partner: Partner | None, customer_field: str, written: str,
                       channel: str | None = None) -> dict[str, str]:
    """``written`` (a phone or an email) as each customer channel of that
    field sends to it, by channel (only ``channel``'s, when given); channels
    for which it is no address are left out.

    :raises ConfigError: it is no address for any of them, naming the field.
    """
    longest = FIELDS[customer_field]
    if len(written) > longest or "\x00" in written:
        raise ConfigError("invalid search", {customer_field: [f"at most {longest} characters of text"]})
    if channel is not None and channel not in customer_channels(services):
        raise ConfigError("invalid search", {"channel": _not_a_customer_channel(customer_channels(services))})
    channels = {name: found for name, found in customer_channels(services, customer_field).items()
                if channel in (None, name)}
    if not channels:
        raise ConfigError("invalid search", {customer_field: [
            f"{channel or 'no customer channel'} sends nothing to a customer's {customer_field}"]})
    found = {name: address for name, cls in channels.items()
             if (address := cls.customer_address(written, _config(partner, name))) is not None}
    if not found:
        wrong = "an email address, like priya@example.com" if customer_field == "email" else \
            "a phone number: with its +country code, or as the customer's country writes it"
        raise ConfigError("invalid search", {customer_field: [f"must be {wrong}"]})
    return found


def parse_customer_search(services: Services, partner: Partner | None,
                          values: Mapping[str, str | None]) -> CustomerSearch:
    """A search as typed (``order_id``, ``phone``, ``email``, ``channel``,
    ``status``), checked.

    :raises ConfigError: with each wrong field named.
    """
    typed = {name: str(values.get(name) or "").strip() for name in FIELDS}
    errors: dict[str, list[str]] = {}
    for name, longest in FIELDS.items():
        if len(typed[name]) > longest:
            errors[name] = [f"at most {longest} characters"]
        elif "\x00" in typed[name]:
            errors[name] = ["holds a NUL character, which is not text"]
    channels = customer_channels(services)
    if typed["channel"] and "channel" not in errors and typed["channel"] not in channels:
        errors["channel"] = _not_a_customer_channel(channels)
    statuses = [status.value for status in DeliveryStatus]
    if typed["status"] and "status" not in errors and typed["status"] not in statuses:
        errors["status"] = [f"must be one of {', '.join(statuses)}"]
    if typed["phone"] and typed["email"]:
        errors.setdefault("email", []).append("search by a phone or an email, not both")
    search = CustomerSearch([typed["channel"]] if typed["channel"] and not errors else list(channels),
                            typed["order_id"] or None, typed["status"] or None)
    for by in ("phone", "email"):
        if typed[by] and not errors:
            try:
                search.addresses = customer_addresses(services, partner, by, typed[by], typed["channel"] or None)
            except ConfigError as exc:
                errors.update(exc.errors)
            search.by = by
            search.channels = list(search.addresses)
    if errors:
        raise ConfigError("invalid search", errors)
    return search


@dataclass
class LogPage:
    """One page of the customer message log."""

    rows: list[dict[str, Any]]
    #: Where the next page starts, if there is one.
    next: DeliveryKey | None
    #: Candidate rows read (for a search by phone or email, those sharing its mask).
    scanned: int
    #: The page stopped at :data:`SCAN_LIMIT` candidates: more may match beyond ``next``.
    capped: bool


def log_row(row: dict[str, Any]) -> dict[str, Any]:
    """A delivery as the customer message log shows it: why the rules held it
    back (``opted out``, ``stale``, ``quiet hours``, ``unreachable``), if they did."""
    return {**row, "held": held_because(row.get("last_error"))}


async def customer_messages(services: Services, partner_id: str, search: CustomerSearch, *,
                            after: DeliveryKey | None = None, limit: int = 25) -> LogPage:
    """A page of the partner's customer messages, newest first."""
    store = services.store
    where: dict[str, Any] = {"partner_id": partner_id, "channels": search.channels, "order_id": search.order_id,
                             "status": search.status}
    if search.by is None:
        found = await store.page_deliveries(**where, after=after, limit=limit + 1)
        more = len(found) > limit
        return LogPage([log_row(row) for row in found[:limit]], delivery_key(found[limit - 1]) if more else None,
                       len(found), False)
    partner = await services.partners.get(partner_id)
    channels = customer_channels(services)
    wanted = search.addresses
    masks = sorted({mask(address) for address in wanted.values()})
    kept: list[dict[str, Any]] = []
    scanned, cursor = 0, after
    while True:
        size = min(BATCH, SCAN_LIMIT - scanned)
        batch = await store.page_deliveries(**where, masks=masks, after=cursor, limit=size)
        scanned += len(batch)
        bodies = await store.partner_events(partner_id, [row["event_id"] for row in batch])
        for row in batch:
            customer = ((bodies.get(row["event_id"]) or {}).get("order") or {}).get("customer") or {}
            written = customer.get(search.by)
            cls = channels.get(row["channel"])
            if written and cls is not None and \
                    cls.customer_address(str(written), _config(partner, row["channel"])) == wanted[row["channel"]]:
                kept.append(log_row(row))
        if len(kept) > limit:
            return LogPage(kept[:limit], delivery_key(kept[limit - 1]), scanned, False)
        if len(batch) < size:
            return LogPage(kept, None, scanned, False)
        cursor = delivery_key(batch[-1])
        if scanned >= SCAN_LIMIT:
            return LogPage(kept, cursor, scanned, True)


# -- opt-outs -----------------------------------------------------------------------


def opt_out_view(services: Services, row: dict[str, Any]) -> dict[str, Any]:
    """An opt-out as the merchant sees it: its id (the start of its keyed
    hash; never the hash whole), the masked address when it was recorded with
    one, whether the customer asked for it, and what lifting it leaves."""
    channel = services.registry.channels.get(row["channel"])
    asked = asked_by_customer(row["reason"])
    return {"id": row["address_hash"][:16], "channel": row["channel"], "reason": row["reason"], "at": row["at"],
            "address": row.get("address_mask"), "asked_by_customer": asked,
            "note": channel.lift_note if asked and channel is not None else ""}


async def opt_outs_page(services: Services, partner_id: str, *, channel: str | None = None,
                        after: OptOutKey | None = None,
                        limit: int = 25) -> tuple[list[dict[str, Any]], OptOutKey | None]:
    """A page of the partner's opt-outs on the customer channels (or
    ``channel``), newest first, and where the next page starts, if one does.

    :raises ConfigError: ``channel`` is no customer channel.
    """
    channels = customer_channels(services)
    if channel and channel not in channels:
        raise ConfigError("invalid search", {"channel": _not_a_customer_channel(channels)})
    found = await services.store.list_opt_outs(partner_id, channels=[channel] if channel else list(channels),
                                               after=after, limit=limit + 1)
    return ([opt_out_view(services, row) for row in found[:limit]],
            opt_out_key(found[limit - 1]) if len(found) > limit else None)


async def find_opt_outs(services: Services, partner_id: str, customer_field: str, written: str,
                        channel: str | None = None) -> list[dict[str, Any]]:
    """One customer's opt-outs, by the phone or email the merchant typed
    (keyed the way each channel keyed it when they opted out).

    :raises ConfigError: it is no phone or email, naming the field.
    """
    partner = await services.partners.get(partner_id)
    found: list[dict[str, Any]] = []
    for name, address in customer_addresses(services, partner, customer_field, written, channel).items():
        found += await services.store.list_opt_outs(partner_id, channels=[name],
                                                    hashes=services.store.identifiers.matches(address))
    return [opt_out_view(services, row) for row in sorted(found, key=lambda row: row["at"], reverse=True)]


class NotFound(LookupError):
    """No such opt-out for this partner."""


async def lift_opt_out(services: Services, partner_id: str, channel: str, opt_out_id: str, actor: Actor, *,
                       customer_asked: bool) -> dict[str, Any]:
    """Lift one opt-out, so the channel sends to the customer again; written
    to the audit log with the masked address only. One the customer asked
    for (they replied STOP, they unsubscribed) is lifted only when the
    merchant says the customer asked to get messages again
    (``customer_asked``). Returns the opt-out as it was.

    :raises NotFound: the partner has no such opt-out.
    :raises ConfigError: ``customer_asked`` is needed and was not given.
    """
    if channel not in customer_channels(services) or not OPT_OUT_ID.fullmatch(opt_out_id):
        raise NotFound(opt_out_id)
    row = await services.store.find_opt_out(partner_id, channel, opt_out_id)
    if row is None:
        raise NotFound(opt_out_id)
    shown = opt_out_view(services, row)
    if shown["asked_by_customer"] and not customer_asked:
        raise ConfigError("not lifted", {"customer_asked": [
            f"the customer opted out themselves ({row['reason']}): lift it only when they have asked to get "
            f"these messages again, and confirm that they did"]})
    if not await services.store.delete_opt_out(partner_id, channel, row["address_hash"]):
        raise NotFound(opt_out_id)
    await record(services, actor, "opt_out.lift", partner_id=partner_id,
                 subject=f"{channel} {shown['address'] or shown['id']}",
                 before={key: shown[key] for key in ("id", "channel", "address", "reason", "at")},
                 after={"customer_asked": customer_asked})
    return shown
