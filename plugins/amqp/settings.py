"""The AMQP destinations' own settings (``SHIPCAST_AMQP_DESTINATION_*``): how
long a partner's broker may take, and how many connections a worker keeps."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipcast.settings import Settings


class DestinationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPCAST_AMQP_DESTINATION_", extra="ignore", frozen=True)

    #: Seconds to resolve, connect, log in and open a channel on a partner's broker.
    connect_timeout: float = Field(10.0, gt=0)
    #: Seconds a publish waits for the broker's confirm.
    publish_timeout: float = Field(10.0, gt=0)
    #: Seconds a connection unused is kept open.
    idle: float = Field(300.0, gt=0)
    #: Connections to partners' brokers one worker process keeps at most.
    max_connections: int = Field(200, ge=1)

    @classmethod
    def of(cls, settings: Settings) -> DestinationSettings:
        """From the environment, with what ``settings`` was given by name (``amqp_destination_idle=…``) first."""
        return cls(**settings.given("amqp_destination_"))
