"""The partner API's quota on messages sent again: its home is
:mod:`shipcast.app.messages`, beside the resends that draw on it (the portal
draws on it too)."""

from __future__ import annotations

from shipcast.app.messages import Quota, resend_quota

__all__ = ["Quota", "resend_quota"]
