"""Applying partner configs: store them, then make the bindings match.

Bindings are the composition: a channel's queue is bound to
``<partner>.<TYPE>`` (or ``<partner>.*``) for every partner whose config
enables that channel, and bindings no config asks for any more are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .management import Management
from .partners import Partner
from .plugin_manager import channels
from .services import Services
from .topology import declare_exchange, declare_queue

log = logging.getLogger(__name__)


@dataclass
class BindingChanges:
    added: dict[str, set[str]] = field(default_factory=dict)
    removed: dict[str, set[str]] = field(default_factory=dict)


def prepare(partners: Sequence[Partner], stored: dict[str, Partner]) -> list[Partner]:
    """Let each channel complete its config (generate secrets, keep old ones)."""
    known = channels()
    prepared = []
    for partner in partners:
        previous = stored.get(partner.id)
        configs = {
            name: known[name].prepare(partner.id, dict(config),
                                      previous.channels.get(name) if previous else None)
            for name, config in partner.channels.items()
        }
        prepared.append(Partner(partner.id, partner.name, partner.branding, configs))
    return prepared


async def apply_partners(services: Services, partners: Sequence[Partner]) -> BindingChanges:
    """Store validated partners (upsert), reconcile bindings, tell the workers."""
    stored = {partner.id: partner for partner in await services.store.get_partners()}
    await services.store.put_partners(prepare(partners, stored))
    await services.announce_change()
    return await reconcile_bindings(services)


async def reconcile_bindings(services: Services) -> BindingChanges:
    """Declare every channel's queues and make its bindings match the stored configs."""
    all_partners = await services.store.get_partners()
    connection = services.broker.require()
    amqp = await connection.channel()
    changes = BindingChanges()
    try:
        exchange = await declare_exchange(amqp)
        async with Management(services.settings) as management:
            for name, channel in channels().items():
                topology = channel.topology(services.settings.retry_delays)
                queue = await declare_queue(amqp, topology.work)  # the broker declared the rest on connect
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
