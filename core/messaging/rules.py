"""The rules every customer channel keeps before it sends: opt-outs, stale
messages, quiet hours, and one claim per message so no two copies of an event
send it; and noting what a provider took, even when the handler is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from shipcast.exceptions import ClaimedElsewhere, DeferDelivery, SentBefore, SkipDelivery, StoreError
from shipcast.messaging.quiet import TERMINAL, _as_time, critical, quiet_for
from shipcast.model.envelope import Event
from shipcast.plugin.context import ChannelContext
from shipcast.security.identifiers import mask as mask  # where channels have always found it

log = logging.getLogger(__name__)


#: Seconds after which a claim to send a message, never settled, is taken over.
CLAIM_STALE_AFTER = 120.0


#: How an opt-out starts when the channel cannot reach the customer at all
#: (not on WhatsApp, blocked), rather than the customer asked.
UNREACHABLE = "unreachable: "

#: How the reasons :func:`keep_rules` gives start, by what a merchant reads in their customer message log.
OPTED_OUT, STALE, QUIET_HOURS = "the customer opted out of ", "stale: ", "quiet hours until "
CANNOT_REACH = " cannot reach the customer: "


def held_because(error: str | None) -> str | None:
    """Why the rules held a message back, in a word or two (``opted out``,
    ``unreachable``, ``stale``, ``quiet hours``), from its delivery's last
    error; ``None`` for any other error, or none."""
    if not error:
        return None
    if error.startswith(OPTED_OUT):
        return "opted out"
    channel, reach, _ = error.partition(CANNOT_REACH)
    if reach and channel.isidentifier():
        return "unreachable"
    if error.startswith(STALE):
        return "stale"
    if error.startswith(QUIET_HOURS):
        return "quiet hours"
    return None


def asked_by_customer(reason: str) -> bool:
    """An opt-out the customer asked for (replied STOP, unsubscribed), rather
    than one recorded because the channel cannot reach them."""
    return not reason.startswith(UNREACHABLE)


async def keep_rules(context: ChannelContext, channel: str, event: Event, address: str,
                     config: Mapping[str, Any], target: str = "customer", *,
                     unreachable_ok: bool = False) -> str | None:
    """Skip what must not be sent, hold back what must wait, and claim the
    message so no other copy of the event sends it too.

    Returns ``None``, or with ``unreachable_ok``, why the channel cannot reach
    this customer (the caller sends another way, under the claim it holds).

    :raises SkipDelivery: the customer opted out of this channel, the message
        is stale (the order's DEL or RET is already archived), or it was sent
        (:class:`SentBefore` when a copy cut off before it was logged sent it:
        the caller reports it delivered).
    :raises DeferDelivery: it is a non-critical message in the merchant's
        quiet hours (sent once they end, spending no attempt), or another copy
        is being sent now (:class:`ClaimedElsewhere`: tried again, to send it
        should that copy fail).
    """
    store = context.store
    unreachable = reason = None
    transactional = event.event_type in config.get("transactional", ())
    if unreachable_ok or not transactional:  # a transactional text never waits on an opt-out lookup
        reason = await store.opted_out(channel, event.partner_id, address)
    if reason is not None and reason.startswith(UNREACHABLE):
        if not unreachable_ok:
            raise SkipDelivery(f"{channel}{CANNOT_REACH}{reason.removeprefix(UNREACHABLE)}")
        unreachable = reason.removeprefix(UNREACHABLE)
    # An unsubscribe from marketing-like messages leaves the transactional ones (OTPs, failures) flowing.
    elif reason is not None and not transactional:
        raise SkipDelivery(f"{OPTED_OUT}{channel}: {reason}")
    if event.event_type not in TERMINAL:
        later = await store.later_event(event.partner_id, event.order.order_id, event.sequence, TERMINAL)
        if later is not None:
            raise SkipDelivery(f"{STALE}a later {'/'.join(TERMINAL)} of this order ({later}) was received first")
    if not critical(event, config):
        wait = quiet_for(config.get("quiet_hours"), datetime.now(UTC))
        if wait > 0:
            quiet = config["quiet_hours"]
            raise DeferDelivery(f"{QUIET_HOURS}{_as_time(quiet['end']):%H:%M} {quiet.get('timezone')}",
                                retry_after=wait)
    # A claim still "sending", fresh or stale, may belong to a copy cut off after
    # the provider took the message and noted its id (see send_noted).
    sent = await store.sent_message(event.event_id, channel, target)
    if sent is not None:
        raise SentBefore(sent)
    held = await store.claim(event.event_id, channel, target, event.partner_id, mask(address), CLAIM_STALE_AFTER)
    if held == "delivered":
        raise SkipDelivery("sent already: one message per event")
    if held is not None:
        raise ClaimedElsewhere("another copy of this event is being sent now")
    return unreachable


async def send_noted(context: ChannelContext, send: Callable[[], Awaitable[str]], provider: str, event: Event,
                     channel: str, target: str = "customer") -> str:
    """Hand a message to the provider and note the id it gives, to the end
    even when the handler is cancelled meanwhile (a worker stopping past its
    grace): a copy of the message redelivered before it was logged finds the
    id (:func:`keep_rules` raises :class:`SentBefore`) and sends nothing
    again. (A process killed between the two sends it twice.)"""
    async def sending() -> str:
        message_id = await send()
        # Noted or the message may go twice: a store that fails now gets a few more tries.
        for pause in NOTE_RETRIES:
            try:
                await context.store.add_provider_message(provider, message_id, event.event_id, channel, target)
                break
            except StoreError as exc:
                if pause is None:
                    log.warning("sent, but not recorded: %s", exc)
                else:
                    await asyncio.sleep(pause)
        return message_id

    task = asyncio.ensure_future(sending())
    _sending.add(task)  # held (and awaited by finish_sends) even when the handler is cancelled
    task.add_done_callback(_sending.discard)
    return await asyncio.shield(task)


#: Pauses between tries to note a sent message's id; None: the last try.
NOTE_RETRIES: tuple[float | None, ...] = (0.5, 2.0, 5.0, None)


_sending: set[asyncio.Future[str]] = set()


async def finish_sends(timeout: float = 30) -> None:
    """Wait for messages handed to a provider to be noted (before the
    provider's client and the store close)."""
    if _sending:
        await asyncio.wait(set(_sending), timeout=timeout)


async def settle_quietly(bookkeeping: Awaitable[Any]) -> None:
    """Bookkeeping after a message was sent: if the store fails now, log it
    rather than fail the delivery, which would send the message again."""
    try:
        await bookkeeping
    except StoreError as exc:
        log.warning("sent, but not recorded: %s", exc)
