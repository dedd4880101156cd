"""Where a webhook may connect: the core's destination guard
(:mod:`shipcast.security.guard`, which the AMQP destinations share), and the
one exception webhooks have, the development receiver on shipcast's own
address."""

from __future__ import annotations

import re

import yarl

from shipcast.security.guard import (
    ALLOW_HINT,
    HTTPS_REQUIRED,
    IN_WORDS,
    IPV4_TRANSLATED,
    REFUSAL_ADVICE,
    REFUSED,
    Address,
    DestinationRefused,
    GuardedResolver,
    Network,
    Refusal,
    carried_ipv4,
    check_destination,
    find_refusal,
    judge,
    literal_refusal,
    refusal,
    refused_name,
    static_refusal,
)
from shipcast.settings import Settings

__all__ = [
    "ALLOW_HINT", "HTTPS_REQUIRED", "IN_WORDS", "IPV4_TRANSLATED", "LOOPBACK", "RECEIVER_PATH", "REFUSAL_ADVICE",
    "REFUSED", "Address", "DestinationRefused", "GuardedResolver", "Network", "Refusal", "carried_ipv4",
    "check_destination", "find_refusal", "is_receiver", "judge", "literal_refusal", "receiver_path", "refusal",
    "refused_name", "static_refusal",
]

#: The development webhook receiver's path (``receiver.py``), and the hosts it is reached at.
RECEIVER_PATH = re.compile(r"/dev/receiver/[a-z0-9_-]{1,64}/[a-z0-9_-]{1,64}")
LOOPBACK = ("127.0.0.1", "::1")


def is_receiver(url: yarl.URL, settings: Settings, partner_id: str, endpoint_id: str) -> bool:
    """Whether ``url`` is the development webhook receiver on shipcast's own address (an IP
    literal, the port shipcast serves on), in development mode, for this very
    endpoint (``/dev/receiver/<partner_id>/<endpoint_id>``: one partner's
    events never land in another's outbox): the one loopback destination
    webhooks may reach without ``SHIPCAST_WEBHOOK_ALLOWED_NETWORKS``."""
    return (settings.development and url.scheme == "http" and url.port == settings.port
            and (url.host in LOOPBACK or url.host == settings.host) and not url.query_string
            and bool(RECEIVER_PATH.fullmatch(url.path)) and url.path == receiver_path(partner_id, endpoint_id))


def receiver_path(partner_id: str, endpoint_id: str) -> str:
    """The development receiver's path for one endpoint."""
    return f"/dev/receiver/{partner_id}/{endpoint_id}"
