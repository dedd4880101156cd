"""What the tracking page shows for one order: its status, the panel for that
status, and the timeline, built from the order's events (the archive's
table, which the tracking channel keeps up to date). Personal data is
masked here, before any template sees it, and the OTP never reaches a page
unless the customer asked for it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shipcast.messaging.rules import mask
from shipcast.messaging.templates import DEFAULT_COLOUR, ink_on
from shipcast.model.envelope import Event
from shipcast.model.event_types import EventTypeRegistry
from shipcast.model.partners import Partner

from .words import day_words, moment_words, words

#: The customer's own event types: they add to the timeline, never change the status.
CUSTOMER_TYPES = ("RESCHEDULE_REQUESTED", "INSTRUCTIONS_ADDED", "RATED")


@dataclass(frozen=True)
class Order:
    """One order's events, oldest first, and what follows from them."""

    events: Sequence[Event]

    @property
    def status(self) -> Event | None:
        """The latest event from the OMS (not one of the customer's own)."""
        told = [e for e in self.events if e.event_type not in CUSTOMER_TYPES]
        return told[-1] if told else None

    def since_status(self, event_type: str) -> Event | None:
        """The customer's latest event of this type after the current status."""
        status = self.status
        after = self.events[self.events.index(status) + 1:] if status is not None else self.events
        answers = [e for e in after if e.event_type == event_type]
        return answers[-1] if answers else None

    @property
    def version(self) -> str:
        """Names what the page shows: it changes with every event of the order."""
        return f"{len(self.events)}-{self.events[-1].event_id}" if self.events else "0"

    @property
    def otp(self) -> str | None:
        """The delivery OTP, while the order is out for delivery."""
        status = self.status
        return status.otp.code if status is not None and status.event_type == "OFD" and status.otp else None


def order_of(bodies: Sequence[Mapping[str, Any]], event_types: EventTypeRegistry) -> Order:
    from shipcast.model.envelope import parse_event

    events = [parse_event(dict(body), event_types) for body in bodies]
    # A customer's event has the sequence of the status it answers, and comes after it.
    events.sort(key=lambda e: (e.sequence, e.event_type in CUSTOMER_TYPES, e.occurred_at))
    return Order(events)


def slots(config: Mapping[str, Any], now: datetime) -> list[date]:
    """The dates a customer may reschedule to: the next ``reschedule_days``, from tomorrow."""
    today = now.astimezone(ZoneInfo(config.get("timezone", "Asia/Kolkata"))).date()
    return [today + timedelta(days=n) for n in range(1, int(config.get("reschedule_days", 3)) + 1)]


def masked_phone(phone: str | None) -> str | None:
    return mask(phone.replace(" ", "")) if phone else None


def dialable(phone: str | None) -> str | None:
    """A number a phone can call (``tel:``), or ``None`` for a masked one (``+91 98XXX…``)."""
    digits = re.sub(r"[\s()-]", "", phone or "")
    return digits if digits.lstrip("+").isdigit() else None


def masked_name(name: str) -> str:
    """The first name and initials: 'Priya Sharma' is 'Priya S.'."""
    parts = name.split()
    if not parts:
        return ""
    first, *rest = parts
    return " ".join([first, *(f"{part[0]}." for part in rest)])


def view(order: Order, partner: Partner, config: Mapping[str, Any], language: str, now: datetime,
         **extra: Any) -> dict[str, Any]:
    """The template's context: masked, with the words in ``language``."""
    zone = ZoneInfo(config.get("timezone", "Asia/Kolkata"))
    status = order.status
    said = words(language)
    latest = order.events[-1] if order.events else None

    def when(moment: datetime | None) -> str | None:
        if moment is None:
            return None
        try:
            moment = moment.astimezone(zone)
        except OverflowError:  # at the very end of the calendar (9999-12-31): shown as the OMS sent it, in UTC
            pass
        return moment_words(moment, language)

    def entry(event: Event) -> dict[str, Any]:
        detail = None
        if event.failure:
            detail = said["failures"].get(event.failure.code, event.failure.reason)
        elif event.delivery_confirmation and event.delivery_confirmation.received_by:
            detail = event.delivery_confirmation.received_by
        elif event.return_:
            detail = event.return_.reason
        elif event.event_type == "OFD" and event.rider:
            detail = event.rider.name
        elif event.customer_input:
            given = event.customer_input
            detail = (day_words(given.requested_date, language) if given.requested_date else None) \
                or (f"{given.rating}/5" if given.rating else None) or given.instructions
        return {"type": event.event_type, "words": said["status"].get(event.event_type, event.event_type),
                "when": when(event.occurred_at), "detail": detail}

    customer = (latest.order.customer if latest else None)
    address = latest.order.address if latest else None
    rescheduled = order.since_status("RESCHEDULE_REQUESTED")
    rated = order.since_status("RATED")
    instructed = order.since_status("INSTRUCTIONS_ADDED")
    return {
        "language": language,
        "t": said["labels"],
        "partner": {"name": partner.name, "logo_url": partner.branding.get("logo_url"),
                    "color": partner.branding.get("primary_color") or DEFAULT_COLOUR,
                    "ink": ink_on(partner.branding.get("primary_color") or DEFAULT_COLOUR),
                    "support_phone": partner.branding.get("support_phone"),
                    "support_email": partner.branding.get("support_email")},
        "order_ref": (latest.order.merchant_order_ref or latest.order.order_id) if latest else "",
        "state": status.event_type if status else "",
        "status_words": said["status"].get(status.event_type if status else "", status.event_type if status else ""),
        "customer": {"name": masked_name(customer.name), "phone": masked_phone(customer.phone)} if customer else None,
        "address": {"street": address.line1, "more": bool(address.line2 or address.city)} if address else None,
        "rider": {"name": status.rider.name, "photo_url": status.rider.photo_url, "phone": status.rider.phone,
                  "dial": dialable(status.rider.phone),
                  "vehicle": status.rider.vehicle_number} if status and status.rider else None,
        "has_otp": order.otp is not None,
        "failure": {"words": said["failures"].get(status.failure.code, status.failure.reason),
                    "reason": status.failure.reason} if status and status.failure else None,
        "slots": [{"value": d.isoformat(), "label": day_words(d, language)} for d in slots(config, now)],
        "rescheduled_to": day_words(rescheduled.customer_input.requested_date, language)
        if rescheduled and rescheduled.customer_input and rescheduled.customer_input.requested_date else None,
        "instructed": instructed is not None,
        "delivered": {"at": when(status.delivery_confirmation.delivered_at),
                      "by": status.delivery_confirmation.received_by}
        if status and status.delivery_confirmation else None,
        "rated": rated.customer_input.rating if rated and rated.customer_input else None,
        "rating_on": bool(config.get("rating", True)),
        "returning": {"id": status.return_.return_id, "since": when(status.return_.initiated_at),
                      "reason": status.return_.reason, "to": status.return_.destination}
        if status and status.return_ else None,
        "timeline": [entry(event) for event in reversed(order.events)],
        "version": order.version,
        **extra,
    }
