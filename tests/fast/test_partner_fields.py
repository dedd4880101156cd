"""Fields of the partners file matched whole: a value with a line break after
it (Python's ``$`` matches before a final newline) is refused, naming the
field, rather than stored and failing later at a provider or in a page."""

from __future__ import annotations

from typing import Any

import pytest

from shipcast.exceptions import ConfigError
from shipcast.model.partners import load_partners
from tests.bound import REGISTRY

pytestmark = pytest.mark.fast


def _partner(**entry: Any) -> dict[str, Any]:
    return {"partners": [{"id": "acme", "name": "Acme", **entry}]}


@pytest.mark.parametrize(("entry", "field"), [
    ({"branding": {"primary_color": "#0a7cff\n"}}, "branding.primary_color"),
    ({"branding": {"support_phone": "+919876543210\n"}}, "branding.support_phone"),
    ({"channels": {"sms": {"sender": "ACMEIN", "country": "IN\n"}}}, "channels.sms.country"),
    ({"channels": {"whatsapp": {"sender": "+14155238886\n"}}}, "channels.whatsapp.sender"),
])
def test_a_value_with_a_line_break_after_it_is_refused(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_partners(_partner(**entry), "acme.yaml", catalog=REGISTRY.catalog)
    assert any(key.endswith(field) for key in refused.value.errors or {}), refused.value.errors
    stripped = {key: {k: v.strip() if isinstance(v, str) else v for k, v in value.items()}
                for key, value in entry.items()}
    if "channels" not in entry:  # the same value without the line break is taken
        load_partners(_partner(**stripped), "acme.yaml", catalog=REGISTRY.catalog)
