"""What a partner writes is data, never code: templates, a template
directory and WhatsApp variables render in Jinja2's sandbox, bounded, and
apply refuses what reaches for code, naming the template and the line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shipcast.exceptions import ConfigError
from shipcast.messaging.templates import render
from shipcast.model.examples import example
from shipcast.model.partners import Partner, load_partners
from shipcast.plugins.whatsapp import WhatsAppChannel
from shipcast.settings import Settings
from shipcast.templating import unsafe
from tests.bound import REGISTRY, check_templates

pytestmark = pytest.mark.fast

SETTINGS = Settings(public_url="https://track.example.com", secret_key_file="/nonexistent/shipcast.key",
                    secret_key="ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM=")
LINK = " {{ tracking_url }}"
#: The way out of a plain Jinja2 environment: the process's secrets and a shell.
ESCAPE = ("Hi{% set x = cycler.__init__.__globals__.os %}\n{{ x.environ['SHIPCAST_PROBE'] }}"
          "{{ x.popen('touch MARKER').read() }}" + LINK)


def escape(marker: Path) -> str:
    return ESCAPE.replace("MARKER", str(marker))


def sms(templates: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    return {"events": ["OFD"], "sender": "ACMEIN", "provider": "twilio", "country": "IN",
            "templates": templates or {}, "dlt_template_ids": {}, **more}


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHIPCAST_PROBE", "the-secret-value")
    return tmp_path / "ran"


def test_a_template_reaching_for_the_process_is_refused_at_its_line(marker: Path) -> None:
    errors = check_templates(SETTINGS, "sms", "acme", "Acme", {}, sms({"OFD": escape(marker)}))
    assert list(errors) == ["templates.OFD"]
    assert any(message.startswith("line 1: '__init__' is not allowed") for message in errors["templates.OFD"])
    assert not marker.exists() and "the-secret-value" not in str(errors)


def test_each_language_and_the_template_directory_are_checked(marker: Path, tmp_path: Path) -> None:
    hostile = escape(marker)
    errors = check_templates(SETTINGS, "sms", "acme", "Acme", {},
                             sms({"OFD": {"en": "OTP {{ otp.code }}" + LINK, "hi": "\n\n" + hostile}}))
    assert list(errors) == ["templates.OFD"]
    assert "hi: line 3: '__init__' is not allowed" in " ".join(errors["templates.OFD"])
    (tmp_path / "sms").mkdir()
    (tmp_path / "sms" / "OFD.en.j2").write_text("OTP {{ otp.code }}\n" + hostile, encoding="utf-8")
    errors = check_templates(SETTINGS, "sms", "acme", "Acme", {}, sms(template_dir=str(tmp_path)))
    assert list(errors) == ["template_dir"]
    assert "OFD.en.j2: line 2: '__init__' is not allowed" in " ".join(errors["template_dir"])
    assert not marker.exists()


def test_a_template_stored_before_the_checks_is_refused_by_the_sandbox(marker: Path) -> None:
    """A config applied by an earlier shipcast never ran the checks: it is
    refused when it is compiled, before it runs, naming the line."""
    partner = Partner("acme", "Acme", {}, {})
    event = example("OFD", REGISTRY.event_types)
    with pytest.raises(ConfigError, match=r"sms template for OFD \(en\) refused: line 1: '__globals__' is not allowed"):
        render(REGISTRY, "sms", event, partner, {"OFD": "{{ cycler.__init__.__globals__ }}"}, "en")
    with pytest.raises(ConfigError, match="refused"):
        render(REGISTRY, "sms", event, partner, {"OFD": "{{ ''.__class__.__mro__ }}"}, "en")
    assert not marker.exists()


@pytest.mark.parametrize(("template", "words"), [
    ("{{ 'x' * 100000000 }}", "over 10000 items"),
    ("{% for i in range(1000000) %}{% endfor %}", "range over 1000 items"),
    ("{{ 2 ** 100000 }}", "power of over 4,096 bits"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ (((10**64)**64)**64)**64 }}", "power of over 4,096 bits"),
    ("{{ 'x'|center(10**8) }}", "over 10000 items"),
    ("{{ 'x'.center(10**8) }}", "over 10000 items"),
    ("{{ '%0100000000d'|format(1) }}", "over 10000 items"),
    ("{{ '{:>100000000}'.format(1) }}", "over 10000 items"),
    ("{{ '{:>{w}}'.format(1, w=10**8) }}", "over 10000 items"),
    ("{{ 'x\nx'|indent(10**8) }}", "over 10000 items"),
    ("{{ ('x' * 10000)|replace('x', 'x' * 10000) }}", "over 10000 items"),
    ("{{ lipsum(n=20000) }}", "'lipsum' is undefined"),
])
def test_what_a_template_may_build_is_bounded(template: str, words: str) -> None:
    partner = Partner("acme", "Acme", {}, {})
    with pytest.raises(ConfigError, match=words):
        render(REGISTRY, "sms", example("OFD", REGISTRY.event_types), partner, {"OFD": template}, "en")


@pytest.mark.parametrize(("template", "words"), [
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "line 1: a macro is not allowed"),
    ("{% for a in [1] %}\n{% for b in [2] %}{% endfor %}{% endfor %}", "line 2: a loop inside a loop"),
    ("{% include 'sms/OFD.en.j2' %}", "an include is not allowed"),
    ("{{ order['__class__'] }}", "'__class__' is not allowed"),
    ("{% set a = order.order_id %}\n{% set a = a ~ a %}{{ a }}", "line 2: a value built from itself"),
    ("{% set ns = namespace(v='x') %}{% for i in range(9) %}{% set ns.v = ns.v ~ 'y' %}{% endfor %}",
     "a value built from itself"),
])
def test_constructs_that_define_code_are_refused_before_rendering(template: str, words: str) -> None:
    assert any(words in found for found in unsafe(template)), unsafe(template)


def test_an_ordinary_template_passes() -> None:
    text = "{{ partner.name }}: {{ order.order_id }} is on its way{% if rider %} with {{ rider.name }}{% endif %}, " \
           "OTP {{ otp.code }}{% for i in range(2) %}.{% endfor %}" + LINK
    assert unsafe(text) == []
    assert check_templates(SETTINGS, "sms", "acme", "Acme", {}, sms({"OFD": text})) == {}


def test_a_template_text_is_bounded_in_size() -> None:
    doc = {"partners": [{"id": "acme", "name": "Acme", "channels": {"sms": {
        "sender": "ACMEIN", "templates": {"OFD": "x" * 40_000}}}}]}
    with pytest.raises(ConfigError) as refused:
        load_partners(doc, "acme.yaml", catalog=REGISTRY.catalog)
    assert refused.value.errors == {"partner 'acme': channels.sms.templates.OFD.value": [
        "a template text is at most 32768 characters; this one is 40000"]}


async def test_whatsapp_variables_are_checked_before_anything_else(marker: Path) -> None:
    config = {"events": ["OFD"], "sender": "+14155238886", "content_sids": {"OFD": "HX" + "0" * 32},
              "variables": {"OFD": ["{{ customer.name }}", escape(marker)]}}
    with pytest.raises(ConfigError) as refused:
        await WhatsAppChannel.prepare(REGISTRY, "acme", config, None)
    assert list(refused.value.errors or {}) == ["variables.OFD.1"]
    assert not marker.exists() and "the-secret-value" not in str(refused.value.errors)
    assert os.environ["SHIPCAST_PROBE"] == "the-secret-value"
