"""What a review of the portal found: odd input that made a 500 (or a 503
blaming the store), sign-in from another site, sessions left behind, and
quota spent on sends that never happened. Each test failed before its fix."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import orjson
import pytest

from shipcast.model.examples import example
from shipcast.store import Attempt

from .conftest import make_settings
from .helpers import ShipcastProcess
from .portal import Visitor, invitation, signed_in, two_partners

pytestmark = pytest.mark.broker


@pytest.fixture
async def portal(vhost: str, sqlite_url: str) -> AsyncIterator[ShipcastProcess]:
    async with two_partners(make_settings(vhost, sqlite_url)) as running:
        yield running


async def a_message(shipcast: ShipcastProcess) -> str:
    """An event of acme's, delivered once, as the workers would have logged it."""
    event = example("OFD", shipcast.services.registry.event_types, partner_id="acme")
    await shipcast.services.store.save_events([event])
    await shipcast.services.store.record([Attempt(event.event_id, "webhook", "main", "acme",
                                                  "https://acme.example.com/hooks", "delivered", 1, 12.0,
                                                  status=200, response="ok")])
    return event.event_id


async def test_digits_that_are_not_ascii_are_no_500(portal: ShipcastProcess) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: the ``watch`` and ``before`` parameters."""
    event_id = await a_message(portal)
    async with await signed_in(portal, "dev@acme.example.com", "acme", "viewer") as viewer:
        page = await viewer.get(f"/portal/p/acme/messages/{event_id}?watch=%C2%B2")
        assert page.status_code == 200 and "data-final" in page.text  # as if no watch was asked
        live = await viewer.get(f"/portal/p/acme/messages/{event_id}/attempts?watch=%C2%B2")
        assert live.status_code == 200 and "data-final" in live.text
        audit = await viewer.get("/portal/p/acme/audit?before=%C2%B2")
        assert audit.status_code == 422 and "link is damaged" in audit.text


async def test_an_operator_audit_cursor_beyond_any_id_is_no_500(portal: ShipcastProcess) -> None:
    async with await signed_in(portal, "op@example.com", None) as operator:
        found = await operator.get("/portal/operator/audit?before=99999999999999999999999999")
        assert found.status_code == 422 and "before" in found.text
        assert (await operator.get("/portal/operator/audit?before=9223372036854775807")).status_code == 200
