"""A partner's config, changed one section at a time by its own people (the
partner API's ``/config`` routes and the portal's settings pages), and how
that lives beside the operator's partners document.

The document wins for what it says. Each field a document entry sets is
marked as its own (:func:`~shipcast.model.partners.fields_set`); the API and
the portal may change every other field, and such changes are kept when the
document is applied again. A field the document owns is refused there,
naming it. A field the document stops setting goes (it was the document's);
a channel it stops listing is turned off.

Every change is validated as a partners document is (the same schemas, the
same channel ``prepare``, errors keyed by the same paths), stored, announced
to the workers, its queue bindings reconciled, and written to the audit log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
from marshmallow import Schema

from shipcast.app.audit import Actor, record
from shipcast.app.reconcile import reconcile_bindings
from shipcast.app.services import Services
from shipcast.exceptions import ConfigError, ShipcastError
from shipcast.messaging.preview import Preview, preview, problems_of, sample_events
from shipcast.messaging.rules import mask
from shipcast.messaging.templates import LANGUAGES
from shipcast.model.json_schemas import Describer, JsonSchema, class_name
from shipcast.model.partners import BRANDING, BrandingSchema, Partner, load_section, plain
from shipcast.plugin.public import public_partner, public_section
from shipcast.plugin.registry import Registry
from shipcast.security.redact import without_redacted

#: The largest section one request may set, as JSON: a channel's templates, in every language, fit easily.
MAX_SECTION = 256 * 1024
#: Fields a partner's people never set: a directory on the server is the operator's.
SERVER_ONLY = frozenset({"template_dir"})
#: Said of a field the partners document owns.
OWNED = "set by the operator's partners file: ask them to change it there"


class UnknownPartner(ShipcastError):
    """No such partner, or no such section for it."""


def editable(registry: Registry) -> list[str]:
    """The channels whose section a partner's people change themselves."""
    return list(registry.catalog.editable)


def describe(registry: Registry, partner: Partner) -> dict[str, Any]:
    """A partner's config as its people see it: every section
    (:func:`~shipcast.plugin.public.public_partner`), which fields the
    partners document owns, and which sections they may change."""
    shown = public_partner(registry.channels, partner)
    shown["file_fields"] = sorted(partner.owned())
    shown["editable"] = [BRANDING, *editable(registry)]
    return shown


def _as_shown(registry: Registry, section: str, stored: Any) -> Any:
    """A stored section as a change starts from it: as people see it, less
    what is masked there (a change leaves that as stored)."""
    return without_redacted(public_section(registry.channels, section, stored))


def _owned_changes(owned: frozenset[str], where: str, before: Mapping[str, Any] | None,
                   after: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Fields the document owns that this change would change: a section
    the document lists cannot be turned off here, and its keys the document
    sets keep their values."""
    if where in owned and after is None:
        return {where: [OWNED]}
    prefix = f"{where}."
    return {path: [OWNED] for path in sorted(owned) if path.startswith(prefix)
            and plain((before or {}).get(path.removeprefix(prefix))) != plain((after or {}).get(
                path.removeprefix(prefix)))}


def branding_schema(describer: Describer) -> JsonSchema:
    """What ``PUT …/config/branding`` takes: the partners document's ``branding``."""
    return describer.ref(BrandingSchema)


def branding_patch_schema(describer: Describer) -> JsonSchema:
    """What ``PATCH …/config/branding`` takes: any branding fields, ``null`` removing one."""
    return describer.define("BrandingPatch", _patch(describer, BrandingSchema))


def channel_schema(describer: Describer) -> JsonSchema:
    """What ``PUT …/config/channels/{channel}`` takes: the config of the channel the path names."""
    return {"anyOf": [describer.define(f"{class_name(name)}Settings", describer.schema(schema, exclude=SERVER_ONLY))
                      for name, schema in _editable(describer)],
            "description": "The config of the channel the path names, as its section of the partners file "
                           "(but for a directory on the server); every template must compile and render"}


def channel_patch_schema(describer: Describer) -> JsonSchema:
    """What ``PATCH …/config/channels/{channel}`` takes: a merge patch of that channel's config."""
    return {"anyOf": [describer.define(f"{class_name(name)}SettingsPatch", _patch(describer, schema))
                      for name, schema in _editable(describer)],
            "description": "Fields of the config of the channel the path names (JSON merge patch: null "
                           "removes one); the config they make must be valid"}


def _editable(describer: Describer) -> list[tuple[str, type[Schema]]]:
    catalog = describer.catalog
    return [(name, catalog.channel_schemas[name]) for name in catalog.editable]


def _patch(describer: Describer, schema: type[Schema]) -> JsonSchema:
    names = [field.data_key or name for name, field in schema().load_fields.items()]
    return describer.schema(schema, partial=True, exclude=SERVER_ONLY, nullable=names)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: ``patch``'s keys replace ``target``'s, ``null`` removes one,
    and a mapping is merged into a mapping."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def change_section(services: Services, partner_id: str, section: str, value: Mapping[str, Any] | None,
                         actor: Actor, *, patch: bool = False) -> Partner:
    """Set one section of a partner's config (``branding``, or a channel's
    name; ``None`` turns a channel off), or with ``patch`` merge ``value``
    into it (RFC 7396), and make it take effect.

    :raises UnknownPartner: no such partner, or a section its people do not change.
    :raises ConfigError: naming each field wrong, or owned by the partners document.
    """
    registry = services.registry
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise UnknownPartner(f"no partner {partner_id!r}")
    if section != BRANDING and section not in editable(registry):
        raise UnknownPartner(f"no section {section!r}; a partner's people change: "
                             f"{', '.join([BRANDING, *editable(registry)])}")
    where = BRANDING if section == BRANDING else f"channels.{section}"
    stored = partner.branding if section == BRANDING else partner.channels.get(section)
    # What the change is made to and compared with: the section as shown, never what the channel
    # stores beside its fields (an encrypted secret, a fingerprint), which its prepare keeps.
    before = _as_shown(registry, section, stored)
    if value is not None:
        value = without_redacted(value)  # a secret sent back as shown keeps the stored one
    if patch and value is not None:
        value = merge_patch(before or {}, value)
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # an integer past 64 bits: no store holds it
        raise ConfigError("invalid config", {where: [f"not a config shipcast can store: {exc}"]}) from None
    if size > MAX_SECTION:
        raise ConfigError("invalid config", {where: [f"at most {MAX_SECTION // 1024} KiB as JSON"]})
    if value is None and section == BRANDING:
        value = {}
    loaded = load_section(registry.catalog, section, value) if value is not None else None
    refused = _owned_changes(partner.owned(), where, before, loaded)
    for key in SERVER_ONLY:
        if loaded is not None and plain(loaded.get(key)) != plain((before or {}).get(key)):
            refused[f"{where}.{key}"] = ["a directory on shipcast's server: only the operator's partners file sets it"]
    if refused:
        raise ConfigError("refused", refused)
    channels = dict(partner.channels)
    branding = partner.branding
    if section == BRANDING:
        branding = loaded or {}
    elif loaded is None:
        channels.pop(section, None)
    else:
        try:
            channels[section] = await registry.channels[section].prepare(
                registry, partner_id, loaded, partner.channels.get(section))
        except ConfigError as exc:
            raise ConfigError("refused", {f"{where}.{at}": messages
                                          for at, messages in exc.errors.items()}) from exc
    # A config stored before fields were marked is the file's as it stood: marked so now, what the
    # partner adds here stays theirs when the file is applied again.
    changed = dataclasses.replace(partner, branding=branding, channels=channels, file_fields=partner.owned())
    if plain(changed.to_dict()) == plain(partner.to_dict()):
        return partner
    await services.store.put_partners([changed], reenable=False)
    await services.announce_change()
    services.partners.invalidate()
    await reconcile_bindings(services)
    await record(services, actor, "partner.config", partner_id=partner_id, subject=where,
                 before=public_section(registry.channels, section, stored),
                 after=public_section(registry.channels, section,
                                      changed.branding if section == BRANDING else channels.get(section)))
    return changed


def draft(services: Services, partner: Partner, channel: str, value: Any) -> Partner:
    """``partner`` with ``value`` as its (unsaved) config for ``channel``.

    :raises ConfigError: ``value`` is not a valid section, naming each field.
    """
    if channel not in editable(services.registry):
        raise UnknownPartner(f"no customer channel {channel!r}; there are: {', '.join(editable(services.registry))}")
    saved = partner.channels.get(channel) or {}
    if isinstance(value, Mapping):  # a draft reads no directory of the server but the one the file set
        value = {**{k: v for k, v in value.items() if k not in SERVER_ONLY},
                 **{k: saved[k] for k in SERVER_ONLY if k in saved}}
    return dataclasses.replace(partner, channels={**partner.channels,
                                                  channel: load_section(services.registry.catalog, channel, value)})


async def preview_section(services: Services, partner_id: str, channel: str, value: Any | None,
                          event_type: str, language: str) -> Preview:
    """The message ``channel`` sends for ``event_type`` in ``language``,
    with ``value`` as its config (the saved one when ``None``), and what is
    wrong with that config (:func:`shipcast.messaging.preview.preview`).

    :raises UnknownPartner: no such partner, channel or event type; the
        channel unused and no draft given.
    """
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise UnknownPartner(f"no partner {partner_id!r}")
    if event_type not in services.registry.event_types:
        raise ConfigError("unknown event type", {"event_type": [
            f"unknown; known: {', '.join(services.registry.event_types)}"]})
    if language not in LANGUAGES:
        raise ConfigError("unknown language", {"language": [f"one of {', '.join(LANGUAGES)}"]})
    if value is not None:
        try:
            partner = draft(services, partner, channel, value)
        except ConfigError as exc:
            prefix = f"channels.{channel}."  # by the channel's own fields, as its checks name them
            return Preview(channel, event_type, language, "", problems=problems_of(
                {where.removeprefix(prefix): messages for where, messages in exc.errors.items()}))
    elif channel not in partner.channels or channel not in editable(services.registry):
        raise UnknownPartner(f"partner {partner_id!r} does not use {channel!r}")
    return preview(services.registry.channels[channel](services), partner, event_type, language)


async def send_test(services: Services, partner_id: str, channel: str, to: str, event_type: str,
                    language: str, actor: Actor) -> dict[str, Any]:
    """Send the sample ``event_type`` message of ``channel``, as the partner's
    saved config makes it, to ``to`` (the merchant's own number or address),
    through the channel's provider; written to the audit log (``to`` masked).

    :raises UnknownPartner: no such partner, or it does not use ``channel``.
    :raises ConfigError: ``to`` is not an address the channel sends to, naming it.
    :raises DeliveryError: the provider refused the message.
    """
    partner = await services.store.get_partner(partner_id)
    if partner is None:
        raise UnknownPartner(f"no partner {partner_id!r}")
    if channel not in partner.channels or channel not in editable(services.registry):
        raise UnknownPartner(f"partner {partner_id!r} does not use {channel!r}")
    if not isinstance(to, str) or not to.strip() or len(to) > 254:
        raise ConfigError("invalid address", {"to": ["give a phone number or an email address of your own"]})
    if event_type not in services.registry.event_types:
        raise ConfigError("unknown event type", {"event_type": [
            f"unknown; known: {', '.join(services.registry.event_types)}"]})
    _, event = sample_events(services.registry, partner_id, event_type, language)[0]
    customer = event.order.customer.model_copy(update={"phone": to.strip()} if "@" not in to else {"email": to.strip()})
    event = event.model_copy(update={"order": event.order.model_copy(update={"customer": customer})})
    sender = services.registry.channels[channel](services)
    await sender.start()
    try:
        sent = await sender.send_test(event, partner, to.strip())
    finally:
        await sender.close()
    await record(services, actor, "channel.test", partner_id=partner_id, subject=f"channels.{channel}",
                 after={"event_type": event_type, "language": language, "to": mask(to)})
    return {"channel": channel, "event_type": event_type, "event_id": event.event_id, "to": mask(to),
            "status": sent.status, "response": sent.response}
