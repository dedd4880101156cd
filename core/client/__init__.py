"""The OMS-side library: build events with the models the API validates
with, then write them to the outbox in the OMS's own transaction (the relay
publishes them) or post them to ``POST /v1/events``. See ``docs/relay-client.md``.

It uses the model only, never the broker, the store or the application, so an
OMS imports it without running any of shipcast::

    from shipcast.client import new_event, write_outbox
    from shipcast.model.envelope import Order, Otp, Rider
"""

from __future__ import annotations

from shipcast.client.envelopes import BUILTIN_TYPES, MAX_EVENT_BYTES, Draft, event_from, new_event
from shipcast.client.http import AsyncClient, Client, RetryPolicy
from shipcast.client.outbox import DEFAULT_TABLE, write_outbox, write_outbox_async

__all__ = ["BUILTIN_TYPES", "DEFAULT_TABLE", "MAX_EVENT_BYTES", "AsyncClient", "Client", "Draft", "RetryPolicy",
           "event_from", "new_event", "write_outbox", "write_outbox_async"]
