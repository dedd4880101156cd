"""A customer message as it will be sent, before its config is saved: the
portal's live preview and the partner API's ``…/preview`` render a draft
channel config for one event type and language, with a realistic sample
event and with the same event with every optional field null, and list what
the channel's own checks find wrong with the draft, each problem with the
field, the language and the line it is at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shipcast.exceptions import ConfigError
from shipcast.messaging.templates import LANGUAGES, sparse_event, tracking_url
from shipcast.model.envelope import Event
from shipcast.model.examples import example
from shipcast.model.partners import Partner
from shipcast.plugin.channel import Channel

#: Where a problem's text names its line, and the language a template check prefixes it with.
_LINE = re.compile(r"\bline ([0-9]+)\b")
_LANGUAGE = re.compile(rf"^({'|'.join(LANGUAGES)}): ")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a draft: ``field`` as the partners file names it
    (``templates.FAIL``), the template's ``language`` and ``line`` when known."""

    field: str
    message: str
    language: str | None = None
    line: int | None = None

    @property
    def text(self) -> str:
        """The message without the language it starts with (shown beside that language's text)."""
        return self.message.removeprefix(f"{self.language}: ") if self.language else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "language": self.language, "line": self.line}


@dataclass
class Sample:
    """The message for one sample event: its parts (:meth:`Channel.preview_parts`), or why it cannot be made."""

    label: str
    parts: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sample": self.label, **(self.parts or {}), "error": self.error}


@dataclass
class Preview:
    channel: str
    event_type: str
    language: str
    tracking_url: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def for_field(self, name: str, language: str | None = None) -> list[Problem]:
        """The problems of one field (and language), for the editor beside it."""
        return [p for p in self.problems if p.field == name and (language is None or p.language in (None, language))]

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "event_type": self.event_type, "language": self.language,
                "tracking_url": self.tracking_url, "ok": self.ok,
                "samples": [sample.to_dict() for sample in self.samples],
                "problems": [problem.to_dict() for problem in self.problems]}


def problems_of(errors: dict[str, list[str]]) -> list[Problem]:
    """A channel's check errors as problems, the language and line read off each message."""
    found = []
    for where, messages in errors.items():
        for message in messages:
            language = _LANGUAGE.match(message)
            line = _LINE.search(message)
            found.append(Problem(where, message, language.group(1) if language else None,
                                 int(line.group(1)) if line else None))
    return found


def sample_events(registry: Any, partner_id: str, event_type: str, language: str) -> list[tuple[str, Event]]:
    """The realistic sample of ``event_type`` in ``language``, and the same with every optional field null."""
    event = example(event_type, registry.event_types, partner_id=partner_id)
    event = event.model_copy(update={"order": event.order.model_copy(update={
        "customer": event.order.customer.model_copy(update={"language": language})})})
    return [("realistic", event), ("every optional field null", sparse_event(event))]


def preview(channel: Channel, partner: Partner, event_type: str, language: str) -> Preview:
    """``partner``'s message on ``channel`` (its config there being the
    draft) for ``event_type`` in ``language``, and every problem the
    channel's checks find in the draft, for any event type and language."""
    registry = channel.context.registry
    config = partner.channels[channel.name]
    events = sample_events(registry, partner.id, event_type, language)
    shown = Preview(channel.name, event_type, language, tracking_url(registry, events[0][1], partner))
    shown.problems = problems_of(type(channel).check(registry, partner.id, config))
    for label, event in events:
        try:
            shown.samples.append(Sample(label, channel.preview_parts(event, partner)))
        except ConfigError as exc:
            shown.samples.append(Sample(label, error=str(exc)))
            # The checks stop at an event type's first problem; this sample's is shown too, at its line.
            field = next((p.field for p in shown.problems if event_type in p.field), f"templates.{event_type}")
            line = _LINE.search(str(exc))
            found = Problem(field, f"{language}: {exc}", language, int(line.group(1)) if line else None)
            if not any(p.message.endswith(str(exc)) for p in shown.problems):
                shown.problems.append(found)
    return shown
