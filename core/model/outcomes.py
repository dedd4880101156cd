"""One vocabulary for what happened to a delivery, from the worker to the
store to the API.

An :class:`Outcome` is what one attempt came to; a :class:`DeliveryStatus`
is where a delivery (one event to one target) stands after its latest
attempt. Both are string enums: they are stored, logged and served as their
values.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """Where one event's delivery to one target stands."""

    DELIVERED = "delivered"
    RETRYING = "retrying"
    WAITING = "waiting"
    SKIPPED = "skipped"
    DEAD = "dead"


class Outcome(StrEnum):
    """What one attempt came to."""

    #: The target took it.
    DELIVERED = "delivered"
    #: It failed and goes to a retry tier.
    RETRY = "retry"
    #: It failed for good (permanent, exhausted, or the target is gone): parked.
    DEAD = "dead"
    #: Deferred without an attempt (busy, rate limited, ordered, quiet hours).
    WAITING = "waiting"
    #: Nothing to send (opted out, sent before, no longer relevant).
    SKIPPED = "skipped"

    @property
    def status(self) -> DeliveryStatus:
        """The delivery's status once its latest attempt came to this."""
        return _STATUS[self]


_STATUS = {Outcome.DELIVERED: DeliveryStatus.DELIVERED, Outcome.RETRY: DeliveryStatus.RETRYING,
           Outcome.DEAD: DeliveryStatus.DEAD, Outcome.WAITING: DeliveryStatus.WAITING,
           Outcome.SKIPPED: DeliveryStatus.SKIPPED}
