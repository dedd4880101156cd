"""An email's words and its HTML part: the subject and text from the
partner's template (or the shipped one), set in ``templates/email/layout.html``
with the partner's branding. The channel composes its messages with it, and
the portal's branding page its preview."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipcast.messaging.templates import context, render
from shipcast.model.envelope import Event
from shipcast.model.partners import Partner
from shipcast.plugin.context import Registered
from shipcast.templating import environment


def written(registry: Registered, event: Event, partner: Partner, config: Mapping[str, Any],
            language: str) -> tuple[str, str]:
    """An email's subject and text, from the partner's template or the shipped one.

    :raises ConfigError: the template fails, or there is none for the event type.
    """
    # Order data on one line: a line break in it must not end the subject early.
    subject, _, text = render(registry, "email", event, partner, config.get("templates"), language,
                              config.get("template_dir"), single_lines=True).partition("\n")
    return subject, text.strip()


def html_part(registry: Registered, event: Event, partner: Partner | None, subject: str, text: str,
              language: str, unsubscribe_url: str | None) -> str:
    """The HTML part: the text's paragraphs, autoescaped, in the layout with the partner's branding."""
    return environment().get_template("email/layout.html").render(
        context(registry, event, partner), subject=subject, language=language,
        paragraphs=[p.strip() for p in text.split("\n\n") if p.strip()], unsubscribe_url=unsubscribe_url)
