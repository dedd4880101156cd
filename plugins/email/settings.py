"""The email channel's own settings: the SMTP server customer email goes
through (``SHIPCAST_SMTP_*``; the password only from the environment)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipcast.settings import Settings


class SmtpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPCAST_SMTP_", extra="ignore", frozen=True)

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = Field(None, repr=False)
    starttls: bool = False
    #: Who the portal's invitations come from (customers' email comes from each partner's ``from_address``).
    from_address: str = "shipcast <noreply@localhost>"

    @property
    def configured(self) -> bool:
        """Whether an SMTP server was named (``SHIPCAST_SMTP_HOST``), or
        credentials for one given: only then are people emailed. Credentials
        with no host go to ``localhost`` (and fail there, in the delivery
        log), never to the development outbox."""
        return bool({"host", "username", "password"} & self.model_fields_set)

    @classmethod
    def of(cls, settings: Settings) -> SmtpSettings:
        """From the environment, with what ``settings`` was given by name (``smtp_port=…``) first."""
        return cls(**settings.given("smtp_"))
