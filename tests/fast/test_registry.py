"""The registry is built from settings and passed down: nothing is
process-wide, and two differently configured registries live side by side."""

from __future__ import annotations

import pytest

from shipcast import hookimpl
from shipcast.exceptions import ConfigError, InvalidEvent
from shipcast.model.envelope import parse_event
from shipcast.model.event_types import EventType
from shipcast.model.examples import example
from shipcast.model.partners import load_partners
from shipcast.plugin.registry import Registry
from shipcast.settings import Settings

pytestmark = pytest.mark.fast


class Pickup:
    @hookimpl
    def shipcast_event_types(self) -> list[EventType]:
        return [EventType("PICKED_UP", "Picked up from the merchant.", frozenset({"order", "rider"}),
                          frozenset({"otp"}))]


def test_two_registries_validate_against_their_own_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPCAST_PLUGINS", "archive")  # read into Settings(), never behind its back
    narrow = Registry(Settings(plugins="webhook"), plugins=[Pickup()])
    wide = Registry(Settings(plugins=""))
    assert sorted(narrow.channels) == ["webhook"]
    assert {"webhook", "sms", "email", "whatsapp", "archive", "tracking"} <= set(wide.channels)
    assert "PICKED_UP" in narrow.event_types and "PICKED_UP" not in wide.event_types

    event = example("PICKED_UP", narrow.event_types)
    assert parse_event(event.to_json(), narrow.event_types) == event
    with pytest.raises(InvalidEvent, match="unknown event type 'PICKED_UP'"):
        parse_event(event.to_json(), wide.event_types)

    doc = {"partners": [{"id": "acme", "name": "Acme", "channels": {
        "sms": {"sender": "ACMEIN", "events": ["OFD"]}}}]}
    [partner] = load_partners(doc, catalog=wide.catalog)
    assert partner.channels["sms"]["events"] == ["OFD"]
    with pytest.raises(ConfigError) as refused:
        load_partners(doc, "acme.yaml", catalog=narrow.catalog)
    assert refused.value.errors == {"partner 'acme': channels.sms": ["unknown channel; installed: webhook"]}

    hooked = {"partners": [{"id": "acme", "name": "Acme", "channels": {
        "webhook": {"endpoints": [{"id": "a", "url": "https://a.example", "events": ["PICKED_UP"]}]}}}]}
    assert load_partners(hooked, catalog=narrow.catalog)[0].channels["webhook"]["endpoints"][0]["events"] == [
        "PICKED_UP"]
    with pytest.raises(ConfigError) as unknown:
        load_partners(hooked, catalog=wide.catalog)
    assert "unknown event types ['PICKED_UP']" in str(unknown.value.errors)


def test_the_environment_is_read_once_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPCAST_PLUGINS", "webhook,archive")
    assert sorted(Registry(Settings()).channels) == ["archive", "webhook"]


def test_a_plugin_adds_its_own_hooks_when_registered() -> None:
    """The SMS channel declares ``shipcast_sms_providers`` itself: a provider
    plugin is refused, naming the hook, when the SMS channel is not loaded."""
    class Provider:
        @hookimpl
        def shipcast_sms_providers(self) -> list[type]:
            return []

    with_sms = Registry(Settings(plugins="sms"), plugins=[Provider()])
    assert "shipcast_sms_providers" in {spec for spec in dir(with_sms.hook) if spec.startswith("shipcast_")}
    with pytest.raises(ConfigError, match="shipcast_sms_providers"):
        Registry(Settings(plugins="webhook"), plugins=[Provider()])


def test_an_unknown_channel_is_named() -> None:
    registry = Registry(Settings(plugins="webhook"))
    with pytest.raises(ConfigError, match="unknown channel 'sms'; installed: webhook"):
        registry.channel("sms")
