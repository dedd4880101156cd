"""The reliability table: printed at the end of the run and kept as a test
artefact; docs/reliability.md holds a copy from a recorded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACT = Path("build/test-artifacts/reliability.md")

COLUMNS = ("scenario", "events", "faults", "lost", "duplicates", "parked", "recovery", "notes")
HEADINGS = ("scenario", "events", "faults injected", "lost", "duplicates", "parked", "time to recover", "notes")


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "–"
    if name == "recovery":
        return f"{value:.1f} s"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one line per scenario, in scenario order."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    for row in sorted(rows, key=lambda r: r["scenario"]):
        lines.append("| " + " | ".join(_cell(name, row.get(name)) for name in COLUMNS) + " |")
    return "\n".join(lines)


def write_artifact(rows: list[dict[str, Any]]) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(table(rows) + "\n")
