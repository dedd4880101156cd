"""Process counters in the Prometheus text format, with no extra dependency."""

from __future__ import annotations

from collections import Counter

_counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
_HELP = {
    "shipcast_events_published_total": "Events confirmed by the broker at ingest",
    "shipcast_events_rejected_total": "Events refused at ingest as invalid",
    "shipcast_deliveries_total": "Delivery attempts by channel and outcome",
    "shipcast_targets_skipped_total": "Targets not sent to: already delivered, disabled, or none configured",
}


def inc(name: str, amount: int = 1, **labels: str) -> None:
    _counters[(name, tuple(sorted(labels.items())))] += amount


def value(name: str, **labels: str) -> int:
    """The current value of one counter."""
    return _counters[(name, tuple(sorted(labels.items())))]


def render() -> str:
    lines: list[str] = []
    for name, help_text in _HELP.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        rows = [(labels, value) for (metric, labels), value in sorted(_counters.items()) if metric == name]
        for labels, value in rows or [((), 0)]:
            label_text = ",".join(f'{key}="{val}"' for key, val in labels)
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"
