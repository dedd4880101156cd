"""The store: events, deliveries and attempts, partners, customers' claims
and opt-outs, tokens and keys, the development outbox (SQLAlchemy async
Core), one module for each, composed into one :class:`Store`.
"""

from __future__ import annotations

from shipcast.store.cache import PartnerCache
from shipcast.store.customers import CustomerStore
from shipcast.store.deliveries import DeliveryStore
from shipcast.store.events import EventStore
from shipcast.store.keys import KeyStore
from shipcast.store.outbox import OutboxMessage, OutboxStore
from shipcast.store.partners import PartnerStore
from shipcast.store.portal import PortalStore
from shipcast.store.privacy import Forgotten, PrivacyStore
from shipcast.store.records import Attempt, attempt_stats
from shipcast.store.tables import metadata

__all__ = ["Attempt", "Forgotten", "OutboxMessage", "PartnerCache", "Store", "attempt_stats", "metadata"]


class Store(PartnerStore, EventStore, DeliveryStore, CustomerStore, KeyStore, PrivacyStore, PortalStore,
            OutboxStore):
    """Async access to the database named by ``SHIPCAST_DATABASE_URL``."""
