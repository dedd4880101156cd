"""Three cheap channels for the fan-out benchmark: each resolves one target
and delivers by doing nothing, so what is measured is the cost of a channel."""

from __future__ import annotations

from shipcast import Channel, Delivered, Event, Target, hookimpl
from shipcast.model.partners import Partner


class _Noop(Channel):
    records_deliveries = False

    def targets(self, event: Event, partner: Partner | None) -> list[Target]:
        return [Target("noop", "nowhere")]

    async def deliver(self, event: Event, body: bytes, target: Target) -> Delivered:
        return Delivered()


class Noop1(_Noop):
    name = "noop1"


class Noop2(_Noop):
    name = "noop2"


class Noop3(_Noop):
    name = "noop3"


@hookimpl
def shipcast_channels() -> list[type[Channel]]:
    return [Noop1, Noop2, Noop3]
