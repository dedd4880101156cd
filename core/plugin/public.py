"""What people see of a partner's config, wherever it is shown: the partner
API's ``/config`` and the answers to its changes, the operator's
``/v1/partners``, ``shipcast partners list``, the audit log. Its name and
branding, and each channel's section as the channel shows it
(:meth:`~shipcast.plugin.channel.Channel.shown`): the fields its schema
declares, every secret masked, never what the channel stores beside them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipcast.model.partners import BRANDING, Partner, plain
from shipcast.plugin.channel import Channel
from shipcast.security.redact import redact

__all__ = ["public_partner", "public_section"]


def public_section(channels: Mapping[str, type[Channel]], section: str, value: Any) -> Any:
    """One section (``branding``, or a channel's name) as people see it;
    ``None`` stays ``None``. A channel this process has not loaded shows
    what every channel declares (its ``events``)."""
    if value is None:
        return None
    if section == BRANDING:
        return redact(plain(value))
    return channels.get(section, Channel).shown(plain(value))


def public_partner(channels: Mapping[str, type[Channel]], partner: Partner) -> dict[str, Any]:
    """A partner's whole config as people see it: each section through :func:`public_section`."""
    shown = partner.to_dict()
    shown["branding"] = public_section(channels, BRANDING, partner.branding)
    shown["channels"] = {name: public_section(channels, name, config) for name, config in partner.channels.items()}
    return shown
