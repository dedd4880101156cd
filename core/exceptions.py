"""The errors shipcast raises, all rooted at :class:`ShipcastError`.

Third-party errors (httpx, aio-pika, SQLAlchemy, marshmallow) are mapped to
these at the boundary with ``raise ... from exc``, so callers catch ours::

    ShipcastError
    ├── ConfigError                 a partners file, template or setting is wrong
    ├── InvalidEvent                an event breaks the envelope or its type's row
    ├── BrokerError
    │   ├── BrokerUnavailable       no connection to RabbitMQ right now
    │   ├── ManagementRefused       the management API refused our user (its tags)
    │   ├── MigrationRefused        `shipcast queues migrate` cannot go on safely
    │   ├── TopologyMismatch        a queue exists with other arguments; retrying cannot help
    │   └── PublishNotConfirmed     the broker did not confirm a publish in time
    ├── StoreError                  the database refused or is unreachable
    ├── ApiError                    shipcast's HTTP API did not take events (the OMS-side client)
    │   ├── ApiRefused              a 4xx or a 500: sending the same again cannot help
    │   └── ApiUnavailable          503s or no connection, through every attempt
    └── DeliveryError               raised by a channel while delivering one target
        ├── RetryableDelivery       try again later (timeouts, 5xx, connection errors)
        │   └── DeferDelivery       not now, without spending an attempt (quiet hours)
        │       └── ClaimedElsewhere  another copy of the event is sending it now
        ├── PermanentDelivery       never retry (refused destination, 410, bad target)
        └── SkipDelivery            nothing to send, on purpose (opted out, stale)
            └── SentBefore          a copy cut off before it was logged sent it already
"""

from __future__ import annotations

from typing import Any


class ShipcastError(Exception):
    """Root of every error shipcast raises on purpose."""


class ConfigError(ShipcastError):
    """A partners file, template or setting is invalid.

    ``errors`` maps a dotted location (``acme.channels.webhook.endpoints.0.url``)
    to the messages about it.
    """

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        self.errors = errors or {}
        lines = [message] + [f"  {loc}: {'; '.join(msgs)}" for loc, msgs in self.errors.items()]
        super().__init__("\n".join(lines))


class InvalidEvent(ShipcastError):
    """One or more events are invalid.

    ``errors`` is a list of ``{"loc": [...], "msg": str, "type": str}`` in the
    shape of pydantic and FastAPI errors, one per offending field.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        summary = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" if error["loc"] else error["msg"]
            for error in errors
        )
        super().__init__(f"invalid event: {summary}")


class BrokerError(ShipcastError):
    """Something went wrong talking to RabbitMQ."""


class BrokerUnavailable(BrokerError):
    """There is no open connection to RabbitMQ."""


class ManagementRefused(BrokerError):
    """The RabbitMQ management API refused shipcast's user (401 or 403): its
    tags or permissions do not allow the request."""


class MigrationRefused(BrokerError):
    """A queue cannot be migrated now: a worker consumes it, a policy it will
    depend on is missing, or its arguments are not shipcast's."""


class TopologyMismatch(BrokerError):
    """RabbitMQ holds a queue or exchange declared with other arguments than
    this version of shipcast declares."""


class PublishNotConfirmed(BrokerError):
    """The broker did not confirm a publish (nack, return or timeout)."""


class StoreError(ShipcastError):
    """The database refused a statement or cannot be reached."""


class ApiError(ShipcastError):
    """shipcast's HTTP API did not take the events :mod:`shipcast.client` posted.

    ``status`` is the last HTTP status (``None`` when no answer came), and
    ``detail`` what the API said (its ``detail``, or the start of the body).
    A 422 is raised as :class:`InvalidEvent`, with the API's field errors.
    """

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message)


class ApiRefused(ApiError):
    """The API answered a 4xx (a wrong token, a body too large) or a 500:
    sending the same again cannot help, so it is never retried."""


class ApiUnavailable(ApiError):
    """The API answered 503 (or a gateway's 502/504), or could not be reached,
    on every attempt. ``attempts`` says how many were made."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None, attempts: int = 0) -> None:
        super().__init__(message, status=status, detail=detail)
        self.attempts = attempts


class DeliveryError(ShipcastError):
    """A channel could not deliver an event to one target.

    ``status`` is the remote status (an HTTP code, a provider error code) when
    there is one; ``response`` the start of the remote answer.
    ``target_fault`` is ``False`` when the target is not to blame (quiet hours,
    another copy in flight, one customer's invalid number on a provider that
    serves every customer): the circuit breaker and the concurrency limit
    ignore such failures. ``request`` is what was sent, for the attempt log
    (``{"method", "url", "headers"}``, never a credential), when the channel tells.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, response: str | None = None,
        target_fault: bool = True, request: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.response = response
        self.target_fault = target_fault
        self.request = request
        super().__init__(reason)


class RetryableDelivery(DeliveryError):
    """Delivery failed for now; the worker schedules a retry.

    ``retry_after`` (seconds) asks for no retry before then, as an HTTP
    ``Retry-After`` header does.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        response: str | None = None,
        retry_after: float | None = None,
        target_fault: bool = True,
        request: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason, status=status, response=response, target_fault=target_fault, request=request)
        self.retry_after = retry_after


class PermanentDelivery(DeliveryError):
    """Delivery can never succeed; the worker dead-letters at once.

    ``disable_target`` asks the core to stop sending to this target at all
    (an HTTP 410 Gone, for example).
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        response: str | None = None,
        disable_target: bool = False,
        target_fault: bool = True,
        request: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason, status=status, response=response, target_fault=target_fault, request=request)
        self.disable_target = disable_target


class SkipDelivery(DeliveryError):
    """Nothing is sent, on purpose: the customer opted out, or the message is
    stale (an OFD after the order's DEL). Logged as skipped; never retried or
    parked, and not a failure of the target."""


class DeferDelivery(RetryableDelivery):
    """Not now, and nobody's fault (a merchant's quiet hours): try again after
    ``retry_after`` seconds without spending an attempt, so a deferral never
    exhausts the retries. Logged as ``waiting``."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after=retry_after, target_fault=False)


class ClaimedElsewhere(DeferDelivery):
    """Another copy of this event holds the claim to send it now: try again
    later (should that copy fail, this one sends), without touching the
    delivery log, which the claim's holder settles."""


class SentBefore(SkipDelivery):
    """A copy of this event handed its message to the provider (which gave
    ``message_id``), then lost its broker connection before the worker logged
    it: the channel reports it delivered, and sends nothing again."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"{message_id}: sent by an earlier copy, cut off before it was logged",
                         target_fault=False)
        self.message_id = message_id
