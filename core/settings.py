"""Settings from ``SHIPCAST_*`` environment variables; defaults serve one machine."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"


class Settings(BaseSettings):
    """Every setting the core and several channels share; secrets are left out
    of the repr, so a logged or printed Settings never shows them.

    A channel's own settings (the email channel's SMTP server, say) live with
    the channel, read from their own ``SHIPCAST_*`` variables; values given
    here by name (``Settings(smtp_host=...)``) are kept as extras for the
    channel to take, and never shown.
    """

    model_config = SettingsConfigDict(env_prefix="SHIPCAST_", extra="allow", frozen=True)

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    database_url: str = "sqlite+aiosqlite:///shipcast.db"
    host: str = "127.0.0.1"
    port: int = 8000
    #: Log lines: JSON when stderr is not a terminal (``auto``), or always ``json`` or ``text``.
    log_format: Literal["auto", "json", "text"] = "auto"
    #: A process without the API (``shipcast worker``) serves ``/healthz``,
    #: ``/readyz`` and ``/metrics`` on this port when it is set.
    health_port: int | None = None
    #: Processes ``shipcast run`` starts, each with the API and every channel
    #: worker (0: one per CPU): they share the port and compete on the queues.
    processes: int = Field(0, ge=0, le=256)
    api_token: str | None = Field(None, repr=False)
    management_url: str = "http://guest:guest@localhost:15672"
    retry_schedule: str = DEFAULT_RETRY_SCHEDULE
    webhook_allowed_networks: str = ""
    webhook_timeout: float = Field(15.0, gt=0)
    config: str = "shipcast.yaml"
    #: Which plugins load (comma-separated names, e.g. ``webhook,archive,my-sms``); empty: all.
    plugins: str = ""
    publish_timeout: float = Field(10.0, gt=0)
    max_batch: int = Field(1000, ge=1)
    #: Largest event accepted at ingest, as JSON bytes.
    max_event_bytes: int = Field(256 * 1024, ge=1024)
    #: Largest request body read by any route but ingest (whose bound is
    #: ``max_batch`` events of ``max_event_bytes``), in bytes.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    #: Days kept (0: for ever): the attempt log, the response excerpts in it, the
    #: archived events (with their deliveries). OTPs leave the archive as soon as
    #: their order is delivered or returned, or they expire.
    retain_attempts_days: float = Field(30.0, ge=0)
    retain_responses_days: float = Field(7.0, ge=0)
    retain_events_days: float = Field(90.0, ge=0)
    #: Seconds between background pruning passes, in each process that runs workers.
    prune_interval: float = Field(600.0, gt=0)
    #: Messages a partner may have sent again (test sends, resends, recovers)
    #: through the partner API per hour, per API process (``shipcast run``
    #: divides it among its processes).
    partner_resend_quota: int = Field(10_000, ge=1)
    #: Fernet keys (comma-separated; the first encrypts, all decrypt) for secrets at rest.
    #: Unset: a key is generated once into ``secret_key_file``.
    secret_key: str | None = Field(None, repr=False)
    secret_key_file: str = "shipcast.key"
    webhook_require_https: bool = False
    #: Seconds a rotated-out endpoint secret still signs (default 24 h).
    webhook_secret_overlap: float = Field(86400.0, ge=0)
    #: Per endpoint, per worker process (``shipcast run`` divides them among its
    #: processes): deliveries in flight at once, and per second (0: no limit).
    endpoint_concurrency: int = Field(256, ge=1)
    endpoint_rate_limit: float = Field(0.0, ge=0)
    #: The circuit breaker opens when at least ``breaker_min_requests`` of the last
    #: ``breaker_window`` requests ran and ``breaker_failure_ratio`` of them failed.
    breaker_window: int = Field(20, ge=1)
    breaker_min_requests: int = Field(10, ge=1)
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1)
    #: Seconds an open circuit waits before one probe may try the endpoint.
    breaker_cooldown: float = Field(30.0, gt=0)
    #: Seconds of continuous failure after which an endpoint is disabled (default 5 days).
    endpoint_disable_after: float = Field(5 * 86400.0, gt=0)
    #: The address customers reach shipcast at: tracking links in messages start with it.
    public_url: str = "http://127.0.0.1:8000"
    #: Twilio credentials (never in the partners file) and API base (a local stand-in in tests).
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = Field(None, repr=False)
    twilio_api_url: str = "https://api.twilio.com"
    #: Twilio's Content API, where WhatsApp templates' approval and category are read.
    twilio_content_url: str = "https://content.twilio.com"
    #: The partner portal (``/portal/``): its name and logo in every page's header,
    #: how long an invitation link works, and how long a session lasts idle and at most.
    portal_name: str = Field("shipcast", min_length=1, max_length=80)
    portal_logo_url: str | None = Field(None, max_length=2000)
    portal_invite_ttl: float = Field(86400.0, gt=0)
    portal_session_idle: float = Field(8 * 3600.0, gt=0)
    portal_session_max: float = Field(7 * 86400.0, gt=0)
    #: Where operator events (endpoint failing, recovered, disabled) are posted, signed.
    operator_webhook_url: str | None = None
    operator_webhook_secret: str | None = Field(None, repr=False)
    #: Development mode (``make run`` sets it): ``shipcast run`` prints an
    #: operator's sign-in link, and shipcast serves a webhook receiver at
    #: ``/dev/receiver/{partner}/{endpoint}`` that its webhooks may reach on loopback.
    development: bool = False
    #: Customer messages with no provider to go to (no Twilio credentials, no
    #: SMTP server) are kept in the development outbox: in development mode
    #: (``auto``), always (``on``), or never, failing as in production (``off``).
    dev_outbox: Literal["auto", "on", "off"] = "auto"
    #: The outbox relay (``shipcast relay``): the OMS's database it reads
    #: (``postgresql+asyncpg://…`` or ``mysql+aiomysql://…``; unset: no relay,
    #: and no Relay page in the portal), its outbox table, rows per batch, and
    #: seconds between polls (PostgreSQL is woken at once by NOTIFY besides).
    relay_database_url: str | None = Field(None, repr=False)
    relay_table: str = Field("shipcast_outbox", pattern=r"^[a-z_][a-z0-9_]{0,50}$")
    relay_batch_size: int = Field(100, ge=1, le=10_000)
    relay_poll_interval: float = Field(1.0, gt=0)

    def __repr_args__(self) -> Any:
        extras = self.model_extra or {}
        return [(name, value) for name, value in super().__repr_args__() if name not in extras]

    def given(self, prefix: str) -> dict[str, Any]:
        """The extras whose names start with ``prefix``, without it: what a
        channel's own settings were given here (``given("smtp_")``)."""
        return {name.removeprefix(prefix): value for name, value in (self.model_extra or {}).items()
                if name.startswith(prefix)}

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"SHIPCAST_RETRY_SCHEDULE must be comma-separated seconds, got {value!r}") from None
        if any(delay <= 0 for delay in delays):
            raise ValueError("SHIPCAST_RETRY_SCHEDULE delays must be positive")
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"SHIPCAST_WEBHOOK_ALLOWED_NETWORKS: {exc}") from None
        return value

    @model_validator(mode="after")
    def _twilio_pair(self) -> Settings:
        """Twilio's account SID and auth token go together: one alone is a
        mistake, refused at start, never taken for "no credentials" (which
        would keep the messages in the development outbox)."""
        given = {"SHIPCAST_TWILIO_ACCOUNT_SID": self.twilio_account_sid,
                 "SHIPCAST_TWILIO_AUTH_TOKEN": self.twilio_auth_token}
        missing = [name for name, value in given.items() if not value]
        if len(missing) == 1:
            [other] = set(given) - set(missing)
            raise ValueError(f"{missing[0]} is not set, but {other} is: set both, or neither")
        return self

    @cached_property
    def retry_delays(self) -> tuple[int, ...]:
        """Seconds to wait before each retry, in order; empty means never retry."""
        return tuple(int(part) for part in self.retry_schedule.split(",") if part.strip())

    @cached_property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.webhook_allowed_networks.split(",")
            if part.strip()
        )

    @cached_property
    def allowed_plugins(self) -> frozenset[str] | None:
        """The plugin names ``SHIPCAST_PLUGINS`` allows, or ``None`` for all."""
        names = frozenset(name.strip() for name in self.plugins.split(",") if name.strip())
        return names or None

    @cached_property
    def vhost(self) -> str:
        """The RabbitMQ virtual host named by the AMQP URL (``/`` by default)."""
        path = urlsplit(self.amqp_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"
