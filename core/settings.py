"""Settings from ``SHIPCAST_*`` environment variables; defaults serve one machine."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000,36000"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPCAST_", extra="ignore", frozen=True)

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    database_url: str = "sqlite+aiosqlite:///shipcast.db"
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = None
    management_url: str = "http://guest:guest@localhost:15672"
    retry_schedule: str = DEFAULT_RETRY_SCHEDULE
    webhook_allowed_networks: str = ""
    webhook_timeout: float = Field(15.0, gt=0)
    config: str = "shipcast.yaml"
    publish_timeout: float = Field(10.0, gt=0)
    max_batch: int = Field(1000, ge=1)

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
    def vhost(self) -> str:
        """The RabbitMQ virtual host named by the AMQP URL (``/`` by default)."""
        path = urlsplit(self.amqp_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"
