"""Process metrics in the Prometheus text format, with no extra dependency:
counters, gauges and histograms, each declared once in :data:`METRICS`.

Labels are bounded by configuration, never by traffic: channel, event type
(registered types only), outcome, and for the circuit gauge and the filtered
counter the partner and target id of a configured target (an endpoint id, or
``customer``). Event ids, order ids and addresses are never labels.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

Labels = tuple[tuple[str, str], ...]

#: Every metric: its type and help text. Only these are rendered.
METRICS: dict[str, tuple[str, str]] = {
    "shipcast_ingest_requests_total": ("counter", "POST /v1/events requests by HTTP status"),
    "shipcast_events_published_total": ("counter", "Events confirmed by the broker at ingest, by event type"),
    "shipcast_events_rejected_total": ("counter", "Events refused at ingest as invalid"),
    "shipcast_deliveries_total": ("counter", "Delivery attempts by channel, event type and outcome "
                                             "(delivered, retry, dead, skipped, waiting)"),
    "shipcast_targets_skipped_total": ("counter", "Targets not sent to: already delivered, disabled, or none"),
    "shipcast_webhook_filtered_total": ("counter", "Events a webhook endpoint's filter kept from it (not sent, "
                                                   "no attempt), by partner and endpoint"),
    "shipcast_amqp_filtered_total": ("counter", "Events an AMQP destination's filter kept from it (not sent, "
                                                "no attempt), by partner and destination"),
    "shipcast_circuit_changes_total": ("counter", "Circuit breaker changes by channel and change"),
    "shipcast_deliveries_in_flight": ("gauge", "Deliveries running now, by channel"),
    "shipcast_circuit_state": ("gauge", "Each target's circuit: 0 closed, 1 half open, 2 open "
                                        "(targets whose circuit has changed since the process started)"),
    "shipcast_relay_published_total": ("counter", "Outbox rows the relay published (confirmed) and deleted"),
    "shipcast_relay_failed_total": ("counter", "Outbox rows the relay moved aside as invalid"),
    "shipcast_relay_active": ("gauge", "1 while this relay holds the outbox's lock and publishes, 0 on standby"),
    "shipcast_relay_outbox_depth": ("gauge", "Outbox rows pending"),
    "shipcast_relay_outbox_oldest_seconds": ("gauge", "Age of the oldest pending outbox row (0: none pending)"),
    "shipcast_relay_outbox_failed": ("gauge", "Outbox rows moved aside, waiting for an operator"),
    "shipcast_delivery_latency_seconds": ("histogram", "From publish to delivered, retries included, "
                                                       "by channel and event type"),
}
#: Histogram bucket bounds, seconds: from a fast webhook to a long retry tier.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)
CIRCUIT = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
#: Gauges whose processes' values are not added up: the worst one is shown.
WORST_OF = frozenset({"shipcast_circuit_state"})

_counters: Counter[tuple[str, Labels]] = Counter()
_gauges: dict[tuple[str, Labels], float] = {}
_histograms: dict[tuple[str, Labels], list[float]] = {}  # bucket counts, then +Inf, sum


def _key(name: str, labels: dict[str, str]) -> tuple[str, Labels]:
    return name, tuple(sorted(labels.items()))


def inc(name: str, amount: int = 1, **labels: str) -> None:
    _counters[_key(name, labels)] += amount


def add(name: str, delta: float, **labels: str) -> None:
    """Move a gauge by ``delta``."""
    key = _key(name, labels)
    _gauges[key] = _gauges.get(key, 0.0) + delta


def put(name: str, value: float, **labels: str) -> None:
    """Set a gauge."""
    _gauges[_key(name, labels)] = value


def observe(name: str, seconds: float, **labels: str) -> None:
    row = _histograms.setdefault(_key(name, labels), [0.0] * (len(BUCKETS) + 2))
    row[bisect.bisect_left(BUCKETS, seconds)] += 1
    row[-1] += seconds


def value(name: str, **labels: str) -> float:
    """The current value of one counter or gauge (a histogram: its count)."""
    key = _key(name, labels)
    if key in _histograms:
        return sum(_histograms[key][:-1])
    return _gauges.get(key, _counters[key])


def _text(labels: Labels) -> str:
    return ",".join(f'{key}="{str(val).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for key, val in labels)


def _line(name: str, labels: Labels, number: float) -> str:
    text = _text(labels)
    shown = int(number) if float(number).is_integer() else number
    return f"{name}{{{text}}} {shown}" if text else f"{name} {shown}"


#: Where the processes of one ``shipcast run`` leave their figures for each
#: other (see :func:`share`), and this process's file there.
_shared: tuple[Path, str] | None = None
#: The files of processes that ended: their counters and histograms still
#: count (so sums never go back), their gauges no longer.
RETIRED = "retired-"


def share(directory: str | Path, name: str) -> None:
    """Show the figures of every process sharing ``directory``: each writes
    its own there (:func:`publish`), and :func:`render`, in any of them, adds
    up the files, so every process shows the same sums and none goes back."""
    global _shared
    _shared = Path(directory), f"{name}.json"


def publish() -> None:
    """Write this process's figures for the others (atomically: a reader sees
    the last whole file). A no-op unless :func:`share` was called."""
    if _shared is None:
        return
    directory, name = _shared
    state = {"counters": [[metric, labels, number] for (metric, labels), number in list(_counters.items())],
             "gauges": [[metric, labels, number] for (metric, labels), number in list(_gauges.items())],
             "histograms": [[metric, labels, list(row)] for (metric, labels), row in list(_histograms.items())]}
    partial = directory / f".{name}.{os.getpid()}"
    partial.write_text(json.dumps(state))
    partial.replace(directory / name)


def retire(directory: str | Path, name: str, number: int) -> None:
    """Keep the figures of a process that ended (its counters count on; see
    :data:`RETIRED`), so that the one started in its place begins from none."""
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / f"{name}.json").replace(Path(directory) / f"{RETIRED}{name}-{number}.json")


def _states() -> list[tuple[bool, dict[str, Any]]]:
    """Every process's last figures (whether it ended, and its state). A file
    retired while they are read is read again under its new name."""
    assert _shared is not None
    directory = _shared[0]
    for _ in range(5):
        found: list[tuple[bool, dict[str, Any]]] = []
        for path in sorted(directory.glob("*.json")):
            try:
                state = json.loads(path.read_text())
            except FileNotFoundError:
                break  # retired (renamed) since the listing: list again
            except (OSError, ValueError):
                continue  # not a file a process wrote whole
            found.append((path.name.startswith(RETIRED), state))
        else:
            return found
    return found


def _labels(found: Any) -> Labels:
    return tuple((str(key), str(value)) for key, value in found)


def _merged() -> tuple[Counter[tuple[str, Labels]], dict[tuple[str, Labels], float],
                       dict[tuple[str, Labels], list[float]]]:
    """The figures of every process sharing the directory, this one's written first."""
    publish()
    counters: Counter[tuple[str, Labels]] = Counter()
    gauges: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], list[float]] = {}
    width = len(BUCKETS) + 2
    for retired, state in _states():
        for metric, labels, number in state.get("counters", ()):
            counters[metric, _labels(labels)] += number
        for metric, labels, number in () if retired else state.get("gauges", ()):
            key = (metric, _labels(labels))
            gauges[key] = max(gauges.get(key, number), number) if metric in WORST_OF \
                else gauges.get(key, 0.0) + number
        for metric, labels, row in state.get("histograms", ()):
            if len(row) == width:  # (another version's buckets cannot be added up)
                key = (metric, _labels(labels))
                histograms[key] = [a + b for a, b in zip(histograms.get(key, [0.0] * width), row, strict=True)]
    return counters, gauges, histograms


def render() -> str:
    counters, gauges, histograms = _merged() if _shared is not None else (_counters, _gauges, _histograms)
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            for (metric, labels), row in sorted(histograms.items()):
                if metric != name:
                    continue
                cumulative = 0.0
                for bound, count in zip((*BUCKETS, float("inf")), row[:-1], strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(_line(f"{name}_bucket", (*labels, ("le", le)), cumulative))
                lines.append(_line(f"{name}_sum", labels, round(row[-1], 6)))
                lines.append(_line(f"{name}_count", labels, cumulative))
            continue
        source: dict[tuple[str, Labels], float] = dict(gauges) if kind == "gauge" else dict(counters)
        rows = sorted((labels, number) for (metric, labels), number in source.items() if metric == name)
        if not rows and kind == "counter":
            rows = [((), 0)]
        lines += [_line(name, labels, number) for labels, number in rows]
    return "\n".join(lines) + "\n"
