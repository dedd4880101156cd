"""The store's tables (SQLAlchemy Core), and bringing an older store up to date."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

events = sa.Table(
    "events", metadata,
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(32), nullable=False),
    sa.Column("order_id", sa.String(100), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("stored_at", UtcDateTime, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("ix_events_partner_stored", "partner_id", "stored_at"),
    sa.Index("ix_events_order", "partner_id", "order_id", "sequence"),
)

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(32)),
    sa.Column("order_id", sa.String(100)),
    sa.Column("sequence", sa.BigInteger),
    sa.Column("address", sa.String(2000), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # delivered | retrying | waiting | skipped | dead | sending
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    #: What the provider last reported after accepting it (an SMS's "delivered", "undelivered 30003").
    sa.Column("provider_status", sa.String(64)),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index("ix_deliveries_status", "status", "updated_at"),
    sa.Index("ix_deliveries_partner", "partner_id", "updated_at"),
    # Only the rows ordered delivery waits on: the index stays small and most upserts skip it.
    sa.Index("ix_deliveries_order", "channel", "partner_id", "target", "order_id",
             postgresql_where=sa.text("status IN ('retrying', 'waiting')"),
             sqlite_where=sa.text("status IN ('retrying', 'waiting')")),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(100), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("partner_id", sa.String(64)),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # delivered | retry | dead
    sa.Column("status", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("response", sa.Text),
    #: What was sent, for the partner to see: ``{"method", "url", "headers"}`` as JSON (no credentials).
    sa.Column("request", sa.Text),
    sa.Index("ix_attempts_delivery", "event_id", "channel", "target"),
    sa.Index("ix_attempts_target", "partner_id", "channel", "target", "at"),
)

partners = sa.Table(
    "partners", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

disabled_targets = sa.Table(
    "disabled_targets", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("disabled_at", UtcDateTime, nullable=False),
)

#: Targets failing without a success since ``failing_since`` (auto-disable counts from it).
endpoint_health = sa.Table(
    "endpoint_health", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(200), primary_key=True),
    sa.Column("failing_since", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
)

#: Operator events (endpoint failing, recovered, disabled): an outbox, sent as webhooks.
operator_events = sa.Table(
    "operator_events", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Index("ix_operator_events_unsent", "sent_at", "at"),
)

#: Partner-scoped API tokens, stored as SHA-256 hashes only.
partner_tokens = sa.Table(
    "partner_tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

#: Messages a provider accepted, by its id: status callbacks find their delivery here.
provider_messages = sa.Table(
    "provider_messages", metadata,
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(100), nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_provider_messages_delivery", "event_id", "channel", "target"),
)

#: Customers who opted out of a channel for a partner, by a hash of their address.
opt_outs = sa.Table(
    "opt_outs", metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("partner_id", sa.String(64), primary_key=True),
    sa.Column("address_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    #: The address as the delivery log masks it, for the merchant to tell opt-outs apart (none on older rows).
    sa.Column("address_mask", sa.String(64)),
    sa.Index("ix_opt_outs_partner", "partner_id", "at"),
)

#: Ed25519 keys for ``v1a`` signatures; the private half encrypted.
signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_key", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)


#: One-time sign-in links to the portal, by a hash of the token in the link.
portal_invitations = sa.Table(
    "portal_invitations", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False),
    #: ``None`` for an operator.
    sa.Column("partner_id", sa.String(64)),
    sa.Column("role", sa.String(16), nullable=False),  # admin | viewer | operator
    sa.Column("invited_by", sa.String(300), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime),
    sa.Index("ix_portal_invitations_partner", "partner_id", "created_at"),
)

#: Portal sessions, by a hash of the cookie's value; revoked ones are kept until pruned.
portal_sessions = sa.Table(
    "portal_sessions", metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    #: What the session is shown and revoked by (not the cookie, nor its hash).
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("partner_id", sa.String(64)),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_seen", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Index("ix_portal_sessions_partner", "partner_id", "email"),
)

#: Who changed what, when, through the portal or the API: before and after, secrets left out.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(300), nullable=False),
    sa.Column("via", sa.String(16), nullable=False),  # portal | api | cli
    #: The partner the change is about (``None``: shipcast as a whole).
    sa.Column("partner_id", sa.String(64)),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(300)),
    sa.Column("before", sa.Text),
    sa.Column("after", sa.Text),
    sa.Index("ix_audit_partner", "partner_id", "id"),
)

#: The development outbox: customer messages kept, rendered as sent, when no
#: provider is configured (no Twilio credentials, no SMTP server), and what
#: the development webhook receiver received. Full addresses: development only.
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),  # sms | whatsapp | email | webhook-receiver | ...
    sa.Column("partner_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(100)),
    sa.Column("event_type", sa.String(32)),
    sa.Column("order_id", sa.String(100)),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(1000)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("html", sa.Text),
    sa.Column("content_sid", sa.String(64)),
    #: A WhatsApp content template's variables, as Twilio would have been sent them (JSON).
    sa.Column("variables", sa.Text),
    #: The webhook receiver's verdict on the signature (``None``: not a webhook).
    sa.Column("verified", sa.Boolean),
    #: What to know at a glance: an SMS's segments and encoding, why a signature failed.
    sa.Column("detail", sa.String(500)),
    sa.Index("ix_outbox_partner", "partner_id", "id"),
    sa.Index("ix_outbox_at", "at"),
)
