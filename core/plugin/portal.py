"""What a plugin adds to the partner portal's navigation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PortalSection:
    """A page in the portal's navigation: shown as ``label``, at
    ``/portal/p/{partner_id}/{path}``, sorted by ``order`` among the core's
    (overview 0, deliveries 20, catalog 60, tokens 70, audit 80)."""

    label: str
    path: str
    order: int = 50

