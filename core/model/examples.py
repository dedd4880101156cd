"""Realistic sample events, for ``shipcast schema --example TYPE`` and the docs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shipcast.model.envelope import Event, new_event_id, parse_event, rfc3339
from shipcast.model.event_types import EventTypeRegistry

_GROUPS: dict[str, Any] = {
    "rider": {"rider_id": "RDR-2291", "name": "Ravi Kumar", "phone": "+919812345678",
              "photo_url": "https://cdn.example.com/riders/RDR-2291.jpg", "vehicle_number": "KA01AB1234"},
    "otp": {"code": "4821"},
    "failure": {"code": "CUSTOMER_UNAVAILABLE", "reason": "Customer not reachable on phone; door locked",
                "attempt": 1, "reschedule_url": "https://acme.example.com/reschedule/ORD-10023"},
    "return": {"return_id": "RTN-5531", "reason": "Customer refused the delivery",
               "destination": "Acme Warehouse, Peenya, Bengaluru"},
    "delivery_confirmation": {"received_by": "Priya (self)", "method": "otp",
                              "proof_url": "https://cdn.example.com/pod/ORD-10023.jpg"},
}


#: What the customer sends back, by event type (a new date is tomorrow's).
_CUSTOMER_INPUT: dict[str, dict[str, Any]] = {
    "INSTRUCTIONS_ADDED": {"instructions": "Leave it with the security desk at gate 2"},
    "RATED": {"rating": 4, "comment": "Quick and polite, thank you"},
}


def example(event_type: str, registry: EventTypeRegistry, *, partner_id: str = "acme",
            order_id: str = "ORD-10023", sequence: int = 1, now: datetime | None = None) -> Event:
    """A valid event of ``event_type``, carrying every group its row requires."""
    row = registry[event_type]
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    data: dict[str, Any] = {
        "event_id": new_event_id(),
        "event_type": event_type,
        "occurred_at": rfc3339(now),
        "partner_id": partner_id,
        "sequence": sequence,
        "order": {
            "order_id": order_id,
            "merchant_order_ref": "ACME-88213",
            "customer": {"name": "Priya Sharma", "phone": "+919876543210",
                         "email": "priya@example.com", "language": "en"},
            "address": {"line1": "42, 3rd Cross, Indiranagar", "line2": "Near the metro station",
                        "city": "Bengaluru", "state": "Karnataka", "postal_code": "560038", "country": "IN"},
            "payment": {"method": "cod", "amount": 1499.0, "currency": "INR"},
            "item_count": 2,
            "promised_date": now.date().isoformat(),
        },
    }
    for group in sorted(row.required - {"order"}):
        value = dict(_GROUPS.get(group, {}))
        if group == "otp":
            value["expires_at"] = rfc3339(now + timedelta(hours=8))
        if group == "delivery_confirmation":
            value["delivered_at"] = rfc3339(now)
        if group == "return":
            value["initiated_at"] = rfc3339(now - timedelta(hours=2))
        if group == "customer_input":
            value = _CUSTOMER_INPUT.get(event_type, {"comment": "Please call before coming"})
            if event_type == "RESCHEDULE_REQUESTED":
                value = {"requested_date": (now + timedelta(days=1)).date().isoformat()}
        data[group] = value
    return parse_event(data, registry)
