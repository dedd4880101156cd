"""What a channel is: the base class every channel plugin subclasses.

A channel is configured by class attributes (its name, prefetch, queue
arguments, the marshmallow schema of its per-partner config) and does three
things: say which routing keys a partner's config binds, resolve an event into
targets, and deliver to one target. It never touches the broker: the core
declares its queues, consumes, retries and dead-letters for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from marshmallow import Schema

from shipcast import metrics, tracing
from shipcast.amqp.topology import ChannelTopology
from shipcast.exceptions import ConfigError
from shipcast.model.partners import EventList, declared
from shipcast.security.redact import redact

if TYPE_CHECKING:
    from shipcast.model.envelope import Event
    from shipcast.model.partners import Partner
    from shipcast.plugin.context import ChannelContext, Registered
    from shipcast.settings import Settings

__all__ = ["Channel", "ChannelConfig", "Delivered", "EventList", "Target", "receives", "routing_keys"]


@dataclass(frozen=True)
class Target:
    """One place an event goes: a webhook endpoint, a phone number, a page.

    :param id: unique within the channel for this partner; retries and the
        delivery log are keyed on ``(event_id, channel, id)``.
    :param address: where it goes, for people (a URL, a masked phone number).
    :param options: whatever the channel needs to deliver (a secret, a template).
    """

    id: str
    address: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Deliveries in flight at once to this target, per worker process (the
    #: processes of one ``shipcast run`` share it out);
    #: ``None`` takes ``SHIPCAST_ENDPOINT_CONCURRENCY``.
    concurrency: int | None = None
    #: Deliveries per second to this target, per worker process; ``None`` takes
    #: ``SHIPCAST_ENDPOINT_RATE_LIMIT``, 0 means no limit.
    rate_limit: float | None = None
    #: Deliver one order's events in ``sequence`` order: a later event waits
    #: while an earlier one for the same order is retrying or waiting.
    ordered: bool = False


@dataclass(frozen=True)
class Delivered:
    """What a successful delivery reports back for the attempt log: the
    remote status, the start of its answer, and what was sent
    (``{"method", "url", "headers"}``; never a credential), for the partner to see."""

    status: int | None = None
    response: str | None = None
    request: dict[str, Any] | None = None


class ChannelConfig(Schema):
    """The config every channel accepts: which event types it serves."""

    events = EventList()


def receives(config: Mapping[str, Any], event_type: str) -> bool:
    """Whether a config's ``events`` (absent: ``["*"]``) take events of ``event_type``."""
    events = config.get("events", ["*"])
    return "*" in events or event_type in events


def filtered_targets(event_type: str, entries: Iterable[Mapping[str, Any]],
                     target: Callable[[Mapping[str, Any]], Target | None], metric: str, *,
                     id_label: str, **labels: str) -> list[Target]:
    """The targets of a partner's ``entries`` (endpoints, destinations) that
    take ``event_type``; ``target`` gives ``None`` for one whose filter keeps
    the event out. Those are not sent to and cost no attempt: each is counted
    in ``metric`` (with ``labels``, and the entry's id as ``id_label``) and
    noted on the trace. Called for an event's first delivery
    only: a copy for one target asks :func:`filtered_target`."""
    found, kept_out = [], []
    for entry in entries:
        if not receives(entry, event_type):
            continue
        chosen = target(entry)
        if chosen is None:
            metrics.inc(metric, 1, **labels, **{id_label: entry["id"]})
            kept_out.append(entry["id"])
        else:
            found.append(chosen)
    if kept_out:  # the trace says why these have no attempt
        tracing.note({tracing.FILTERED: kept_out})
    return found


def filtered_target(event_type: str, entries: Iterable[Mapping[str, Any]], target_id: str,
                    target: Callable[[Mapping[str, Any]], Target | None]) -> Target | None:
    """The entry ``target_id`` as a target for a copy aimed at it alone, if it
    still takes ``event_type`` and its filter the event (nothing counted)."""
    for entry in entries:
        if entry["id"] == target_id:
            return target(entry) if receives(entry, event_type) else None
    return None


def routing_keys(partner_id: str, events: Sequence[str]) -> set[str]:
    """The routing keys for a partner's list of event types (``*`` for all)."""
    if "*" in events:
        return {f"{partner_id}.*"}
    return {f"{partner_id}.{event_type}" for event_type in events}


class Channel:
    """Base class of every channel. Subclass it, set the class attributes,
    implement :meth:`targets` and :meth:`deliver`, and register the class with
    the ``shipcast_channels`` hook."""

    #: The channel's name: ``[a-z][a-z0-9_]*``; its queue is ``shipcast.<name>``.
    name: ClassVar[str]
    #: One line for ``shipcast status`` and the docs.
    description: ClassVar[str] = ""
    #: Unacknowledged messages in flight per worker: how many deliveries run at once.
    prefetch: ClassVar[int] = 64
    #: Seconds one deliver() may take before the core counts it as a retryable
    #: timeout; ``None`` for a channel that enforces its own deadline.
    deliver_timeout: ClassVar[float | None] = 120.0
    #: Extra arguments for the work queue (``x-max-length``, ...).
    queue_arguments: ClassVar[Mapping[str, Any]] = {}
    #: Routing keys bound whatever the partners say (``#`` for every event).
    static_bindings: ClassVar[tuple[str, ...]] = ()
    #: Whether the core logs each delivery and skips targets already delivered.
    records_deliveries: ClassVar[bool] = True
    #: The marshmallow schema of this channel's section of a partner's config.
    config_schema: ClassVar[type[Schema]] = ChannelConfig
    #: Whether a partner's own people set this channel's section (the partner
    #: API's ``/config`` routes, the portal's settings), beside the operator's
    #: partners file. The webhook channel's endpoints have routes of their own.
    partner_editable: ClassVar[bool] = False
    #: A page under ``/portal/p/{partner_id}/`` showing what customers see of
    #: the partner's branding on this channel (the branding in its query), for
    #: the portal's branding page to frame; ``None`` for none.
    branding_preview: ClassVar[str | None] = None
    #: Which of the order's customer's addresses its deliveries go to
    #: (``"phone"`` or ``"email"``), or ``None`` when they go elsewhere (an
    #: endpoint, a page). The customer message log and the opt-outs a merchant
    #: sees are those of the channels that set it.
    customer_field: ClassVar[str | None] = None
    #: What lifting an opt-out the customer asked for does not undo (a
    #: provider's own block), shown beside it; ``""`` when nothing.
    lift_note: ClassVar[str] = ""

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self.settings = context.settings

    @classmethod
    def topology(cls, delays: Sequence[int]) -> ChannelTopology:
        """The channel's queues; the core declares them."""
        return ChannelTopology.build(
            cls.name, delays, arguments=cls.queue_arguments, bindings=cls.static_bindings
        )

    @classmethod
    async def prepare(
        cls, registry: Registered, partner_id: str, config: dict[str, Any], stored: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Complete and vet a partner's validated config before it is stored:
        generate and encrypt secrets, refuse what the running settings forbid.
        ``stored`` is the config stored before, if any.

        :raises ConfigError: with ``errors`` keyed by field (``endpoints.0.url``).
        """
        return config

    @classmethod
    def shown(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """A partner's stored section as people see it, wherever it is shown
        (the partner API's ``/config``, the operator's, the portal, the
        command line, the audit log): the fields :attr:`config_schema`
        declares, each secret masked, and nothing :meth:`prepare` stored
        beside them (encrypted credentials, rotated-out secrets, fingerprints).
        What comes back masked in a change keeps the stored value. Override it
        to show more of what :meth:`prepare` stores, masked."""
        shown: dict[str, Any] = redact(declared(cls.config_schema(), config))
        return shown

    @classmethod
    def check(cls, registry: Registered, partner_id: str, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """What is wrong with a partner's validated config that can be found
        without the network (its templates render, in every language), by
        field; empty when nothing is. The portal's live preview asks on every
        change; a channel's :meth:`prepare` should refuse what this finds."""
        return {}

    @classmethod
    def customer_address(cls, written: str, config: Mapping[str, Any]) -> str | None:
        """The customer's phone or email (``customer_field``), as an event or a
        merchant writes it, the way this channel sends to it and keys its
        opt-outs (a phone in E.164, an email in lower case); ``None`` when it
        is not one. ``config`` is the partner's section for this channel (a
        phone's default country). The log's masked address is the mask of it,
        which is how a merchant's search by phone or email finds a customer."""
        return None

    @classmethod
    def bindings(cls, partner_id: str, config: Mapping[str, Any]) -> set[str]:
        """The routing keys a partner's config for this channel binds."""
        return routing_keys(partner_id, config.get("events", ["*"]))

    @classmethod
    def development_outbox(cls, settings: Settings) -> str | None:
        """Why this channel's messages go to the development outbox under
        ``settings`` (its provider is not configured, and
        ``SHIPCAST_DEV_OUTBOX`` is not ``off``), or ``None`` when they are
        sent. Said at start and on every portal page while it holds."""
        return None

    async def start(self) -> None:
        """Open what the channel needs (HTTP clients, SMTP pools)."""

    async def close(self) -> None:
        """Release what :meth:`start` opened."""

    def target(self, partner: Partner, target_id: str) -> Target | None:
        """One of a partner's targets by id, whatever the event type: test
        sends ask for it. ``None`` when there is no such target."""
        return None

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        """Resolve an event into the targets to deliver it to.

        ``partner`` is ``None`` when the event's partner has no stored config.
        """
        raise NotImplementedError

    def target_for(self, event: Event, partner: Partner | None, target_id: str) -> Target | None:
        """Target ``target_id``, when ``event`` still goes to it: a copy of a
        message for one target (a retry, a dead letter replayed) asks, rather
        than :meth:`targets`, which resolves the event for a first delivery.
        ``None`` when the event no longer goes there. By default, the target
        of that id among :meth:`targets`; a channel that does per-event work
        there (counting, say) resolves the one target alone.
        """
        return next((target for target in self.targets(event, partner) if target.id == target_id), None)

    def preview(self, event: Event, partner: Partner) -> tuple[str, str]:
        """What this channel would send the customer for ``event``, without
        sending it, for ``shipcast templates preview``: the message as the
        customer sees it, and a one-line summary (length, parts, template).

        :raises ConfigError: the channel sends no customer message, or the
            partner's template for this event fails.
        """
        raise ConfigError(f"the {self.name} channel sends no customer message to preview")

    def preview_parts(self, event: Event, partner: Partner) -> dict[str, Any]:
        """The message :meth:`preview` shows, in parts for the portal:
        ``text`` and ``summary`` always, and what else the channel has
        (an email's ``subject`` and ``html``, WhatsApp's ``variables``).

        :raises ConfigError: as :meth:`preview`.
        """
        text, summary = self.preview(event, partner)
        return {"text": text, "summary": summary}

    async def send_test(self, event: Event, partner: Partner, to: str) -> Delivered:
        """Send ``event``'s message to ``to`` (the merchant's own number or
        address) now, as a customer would get it, through the provider the
        channel uses, keeping no customer rule (quiet hours, opt-outs).

        :raises ConfigError: the channel sends no test messages, or ``to`` is not an address it sends to.
        :raises RetryableDelivery, PermanentDelivery: the provider refused it.
        """
        raise ConfigError(f"the {self.name} channel sends no test messages")

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered | None:
        """Deliver ``event`` (``body`` is its envelope as JSON) to one target.

        Return normally on success; raise
        :class:`~shipcast.exceptions.RetryableDelivery` or
        :class:`~shipcast.exceptions.PermanentDelivery` on failure.
        """
        raise NotImplementedError
