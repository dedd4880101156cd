"""The SMS channel's own hook, added by the SMS plugin when it is registered
(``shipcast_addhooks``): other plugins register SMS providers through it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipcast.plugin.markers import hookspec

if TYPE_CHECKING:
    from shipcast.plugins.sms.providers import SmsProvider


@hookspec
def shipcast_sms_providers() -> list[type[SmsProvider]]:
    """Register SMS providers for the SMS channel: each a subclass of
    :class:`shipcast.plugins.sms.providers.SmsProvider` with a unique ``name``,
    chosen per partner with ``channels.sms.provider``.

    :return: a list of provider classes (not instances).
    """
    raise NotImplementedError
