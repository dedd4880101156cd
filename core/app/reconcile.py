"""Applying partner configs: store them, then make the bindings match.

Bindings are the composition: a channel's queue is bound to
``<partner>.<TYPE>`` (or ``<partner>.*``) for every partner whose config
enables that channel, and bindings no config asks for any more are removed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shipcast.amqp.management import Management
from shipcast.amqp.topology import declare_exchange, declare_queue, existing_arguments
from shipcast.app.audit import Actor, record
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError, ManagementRefused
from shipcast.model.partners import Partner, merge_document
from shipcast.plugin.public import public_partner
from shipcast.plugin.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class BindingChanges:
    added: dict[str, set[str]] = field(default_factory=dict)
    removed: dict[str, set[str]] = field(default_factory=dict)


async def prepare(registry: Registry, partners: Sequence[Partner], stored: dict[str, Partner],
                  source: str = "<partners>") -> list[Partner]:
    """Let each channel complete and vet its config (generate and encrypt
    secrets, refuse forbidden destinations). Nothing is returned unless every
    partner passes; errors name the partner and the field."""
    known = registry.channels
    prepared = []
    errors: dict[str, list[str]] = {}
    for partner in partners:
        previous = stored.get(partner.id)
        configs = {}
        for name, config in partner.channels.items():
            try:
                configs[name] = await known[name].prepare(
                    registry, partner.id, dict(config), previous.channels.get(name) if previous else None)
            except ConfigError as exc:
                for loc, messages in (exc.errors or {"(config)": [str(exc)]}).items():
                    errors[f"partner {partner.id!r}: channels.{name}.{loc}"] = messages
        prepared.append(dataclasses.replace(partner, channels=configs))
    if errors:
        raise ConfigError(f"{source}: refused", errors)
    return prepared


async def apply_partners(services: Services, partners: Sequence[Partner], *, source: str = "<partners>",
                         reenable: bool = True, actor: Actor | None = None) -> BindingChanges:
    """Store validated partners (upsert), reconcile bindings, tell the workers.
    Each keeps what its own people set where the document says nothing
    (:func:`~shipcast.model.partners.merge_document`). With ``actor``, each
    partner whose config changed is written to the audit log."""
    stored = {partner.id: partner for partner in await services.store.get_partners()}
    merged, errors = [], {}
    for partner in partners:
        try:
            merged.append(merge_document(services.registry.catalog, stored.get(partner.id), partner))
        except ConfigError as exc:
            errors.update({f"partner {partner.id!r}: {at}": messages for at, messages in exc.errors.items()})
    if errors:
        raise ConfigError(f"{source}: refused", errors)
    ready = await prepare(services.registry, merged, stored, source)
    await services.store.put_partners(ready, reenable=reenable)
    await services.announce_change()
    if actor is not None:
        channels = services.registry.channels
        for partner in ready:
            previous = stored.get(partner.id)
            if previous is None or previous.to_dict() != partner.to_dict():
                await record(services, actor, "partner.apply" if previous else "partner.create",
                             partner_id=partner.id, subject=partner.id,
                             before=public_partner(channels, previous) if previous else None,
                             after=public_partner(channels, partner))
    return await reconcile_bindings(services)


async def reconcile_bindings(services: Services) -> BindingChanges:
    """Declare every channel's queues, create shipcast's policies where
    missing, and make the bindings match the stored configs."""
    all_partners = await services.store.get_partners()
    connection = services.broker.require()
    amqp = await connection.channel()
    changes = BindingChanges()
    try:
        exchange = await declare_exchange(amqp)
        async with Management(services.settings) as management:
            await _ensure_policies(management)
            for name, channel in services.registry.channels.items():
                topology = channel.topology(services.settings.retry_delays)
                # The broker declared the rest on connect.
                queue = await declare_queue(amqp, topology.work, await existing_arguments(connection, topology.work))
                wanted = set(channel.static_bindings)
                for partner in all_partners:
                    if name in partner.channels:
                        wanted |= channel.bindings(partner.id, partner.channels[name])
                current = await management.queue_bindings(topology.work.name)
                for key in sorted(wanted - current):
                    await queue.bind(exchange, key)
                for key in sorted(current - wanted):
                    await queue.unbind(exchange, key)
                if wanted - current:
                    changes.added[topology.work.name] = wanted - current
                if current - wanted:
                    changes.removed[topology.work.name] = current - wanted
    finally:
        await amqp.close()
    for queue_name, keys in changes.added.items():
        log.info("bound %s to %s", queue_name, ", ".join(sorted(keys)))
    for queue_name, keys in changes.removed.items():
        log.info("unbound %s from %s", queue_name, ", ".join(sorted(keys)))
    return changes


async def _ensure_policies(management: Management) -> None:
    try:
        created = await management.ensure_policies()
    except ManagementRefused as exc:
        # The least-privilege user of `shipcast topology`'s definitions gets its policies from them:
        # worth a line, not an alarm. `shipcast status` flags a queue that really lacks them.
        log.info("shipcast's policies not checked: %s; they come from the definitions `shipcast topology` "
                 "prints (or tag the user policymaker). `shipcast status` flags a queue without them.", exc)
        return
    if created:
        log.info("created RabbitMQ policies %s", ", ".join(created))
