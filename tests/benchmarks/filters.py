"""Payload filters' cost per event (scenario ``filters``), in-process, no
services: the webhook channel resolving an event into its targets
(``WebhookChannel.targets``, where filters run, before any network work)
for one endpoint with no filter, the baseline, then with each filter below;
and the compiled predicate alone. Each figure is µs per event, its ratio to
the baseline measured in the same run. An event a filter keeps out costs
less than the baseline's: no target is built for it.

    python -m tests.benchmarks.run filters [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: A filter per line of the report: from the simplest to a nested one.
FILTERS: dict[str, dict[str, Any]] = {
    "equality": {"order.payment.method": "cod"},
    "one of 3": {"order.address.city": ["Bengaluru", "Mysuru", "Pune"]},
    "any of 2": {"any": [{"order.address.city": ["Bengaluru", "Mysuru"]}, {"event_type": "RET"}]},
    "all of 4": {"all": [
        {"event_type": ["OFD", "DEL"]}, {"order.item_count": {"gte": 2, "lt": 50}},
        {"occurred_at": {"gte": "2020-01-01T00:00:00Z"}}, {"return": {"exists": False}}]},
    "not(any(all))": {"not": {"any": [{"all": [{"order.payment.method": "prepaid"},
                                                    {"order.payment.amount": {"gt": 5000}}]},
                                           {"order.address.state": "Goa"}]}},
}
CITIES = ("Bengaluru", "Mysuru", "Pune", "Delhi", "Chennai")


def sample_events(n: int) -> list[Any]:
    """``n`` events of mixed types, cities, payment methods and sizes."""
    from shipcast.model.examples import example
    from shipcast.plugin.registry import Registry
    from shipcast.settings import Settings

    types = Registry(Settings(plugins="webhook")).event_types
    kinds = ("OFD", "DEL", "FAIL", "RET")
    found = []
    for index in range(n):
        event = example(kinds[index % 4], types, partner_id="acme", order_id=f"ORD-{index}")
        order = event.order
        assert order.address is not None and order.payment is not None
        order = order.model_copy(update={
            "address": order.address.model_copy(update={"city": CITIES[index % len(CITIES)]}),
            "payment": order.payment.model_copy(update={"method": ("cod", "prepaid")[index % 2],
                                                        "amount": float(index * 37 % 9000)}),
            "item_count": index % 60})
        found.append(event.model_copy(update={"order": order}))
    return found


def _per_event(runs: dict[str, Any], events: list[Any], rounds: int, passes: int = 5) -> dict[str, float]:
    """µs per event of each ``run(event)``: the best of ``passes``, each run in
    turn within a pass, so that a neighbour's load on a shared machine weighs
    on the baseline as on the rest."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(passes):
        for name, run in runs.items():
            started = time.perf_counter()
            for _ in range(rounds):
                for event in events:
                    run(event)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: seconds / (rounds * len(events)) * 1e6 for name, seconds in best.items()}


async def filters(tmp: Path, quick: bool) -> None:
    from cryptography.fernet import Fernet

    from shipcast.model.filters import compile_filter
    from shipcast.model.partners import Partner
    from shipcast.plugins.webhook.channel import WebhookChannel, with_secret
    from shipcast.security.crypto import secret_box
    from shipcast.settings import Settings

    from .run import report

    settings = Settings(plugins="webhook", secret_key=Fernet.generate_key().decode())
    box = secret_box(settings)
    channel = WebhookChannel(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    channel._box = box  # what start() sets, without its HTTP session and signing keys
    events = sample_events(500 if quick else 2000)
    rounds = 2 if quick else 5

    def partner(spec: dict[str, Any] | None) -> Partner:
        endpoint = with_secret(box, {"id": "main", "url": "https://hooks.acme.example/x", "events": ["*"],
                                     **({"filter": spec} if spec is not None else {})}, None, None, 0)
        return Partner("acme", "Acme", channels={"webhook": {"endpoints": [endpoint]}})

    plain = partner(None)
    partners = {name: partner(spec) for name, spec in FILTERS.items()}
    predicates = {name: compile_filter(spec) for name, spec in FILTERS.items()}
    runs: dict[str, Any] = {"": lambda event: channel.targets(event, plain)}
    runs.update({name: (lambda event, found=found: channel.targets(event, found)) for name, found in partners.items()})
    runs.update({f"alone {name}": predicate for name, predicate in predicates.items()})
    cost = _per_event(runs, events, rounds)
    baseline = cost[""]
    report("filters: targets(), one endpoint, no filter", baseline, "µs/ev")
    for name, found in partners.items():
        kept = sum(1 for event in events if channel.targets(event, found)) / len(events)
        report(f"filters: targets(), {name}, {kept:.0%} kept", cost[name], "µs/ev", baseline, "of no filter")
    for name in FILTERS:
        report(f"filters: the compiled filter alone, {name}", cost[f"alone {name}"] * 1000, "ns/ev",
               baseline * 1000, "of targets() with no filter")
