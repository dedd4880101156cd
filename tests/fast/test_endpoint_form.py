"""The portal's endpoint form, without services: the filter typed is read as
JSON or YAML and nothing else (no explicit tag, no alias; whatever the
parser raises is said as "not JSON or YAML"), and a form shown again after
an error gives back no password, token or header value that was typed."""

from __future__ import annotations

from typing import Any

import pytest

from shipcast.plugins.webhook.headers import MASK
from shipcast.plugins.webhook.portal import NEW_ENDPOINT, _filter_of, _typed_again

pytestmark = pytest.mark.fast

#: Filters typed in the form, and words of the error each gives.
UNREADABLE = [
    ("a: !!bool foo", "tags (!!name) are not taken here"),
    ("a: !!timestamp x", "tags (!!name) are not taken here"),
    ("a: !!timestamp 99999-01-01", "tags (!!name) are not taken here"),
    ("a: !!float abc", "tags (!!name) are not taken here"),
    ("a: !!int 0b" + "1" * 20000, "tags (!!name) are not taken here"),
    ("a: !!python/object:os.system x", "tags (!!name) are not taken here"),
    ("a: !!binary AAAA", "tags (!!name) are not taken here"),
    ("a: !!set {x}", "tags (!!name) are not taken here"),
    ("a: !!str 1", "tags (!!name) are not taken here"),  # even one that would load
    ("a: !local x", "tags (!!name) are not taken here"),
    ("!!map {a: 1}", "tags (!!name) are not taken here"),
    ("a: ! 1", "tags (!!name) are not taken here"),
    ("a: &x [1]\nb: *x", "aliases (*name) are not taken here"),
    ("a: 2024-02-30", "not JSON or YAML"),  # a date YAML reads, out of range
    ("a: " + "9" * 5000, "not JSON or YAML"),  # past Python's digits for a whole number
    ("{unclosed", "not JSON or YAML (line 1, column 10)"),
]


@pytest.mark.parametrize(("text", "words"), UNREADABLE, ids=[text[:30] for text, _ in UNREADABLE])
def test_what_is_not_plain_json_or_yaml_is_refused_in_words(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        _filter_of(text)
    assert words in str(caught.value)
    assert str(caught.value).startswith("not JSON or YAML")


@pytest.mark.parametrize(("text", "read"), [
    ('{"order.payment.method": "cod"}', {"order.payment.method": "cod"}),
    ("order.address.city: [Bengaluru, Mysuru]", {"order.address.city": ["Bengaluru", "Mysuru"]}),
    ("order.item_count: {gte: 3}\notp: null", {"order.item_count": {"gte": 3}, "otp": None}),
    ("event_type: 'RET'", {"event_type": "RET"}),
])
def test_plain_json_and_yaml_are_read(text: str, read: Any) -> None:
    assert _filter_of(text) == read


def typed(**fields: Any) -> dict[str, Any]:
    return {**NEW_ENDPOINT, "url": "https://hooks.example/x", **fields}


def test_a_form_shown_again_gives_back_no_value_typed() -> None:
    again, notes = _typed_again(typed(headers="X-Api-Key: k-typed-1\nX-Kept: ••••\nbroken k-typed-2\n\nX-Empty:",
                                      auth_type="bearer", auth_secret="t-typed-3", filter="otp: null"))
    assert "k-typed" not in str(again) and "t-typed" not in str(again)
    assert again["headers"] == f"X-Api-Key: \nX-Kept: {MASK}\n\n\nX-Empty:"
    assert again["auth_secret"] == ""
    assert (again["url"], again["auth_type"], again["filter"]) == ("https://hooks.example/x", "bearer", "otp: null")
    assert notes == {"headers": ["values typed are not shown again: type them again"],
                     "auth_secret": ["not shown again: type it again"]}


def test_masked_values_come_back_masked_and_nothing_is_said_of_them() -> None:
    again, notes = _typed_again(typed(headers=f"X-Api-Key: {MASK}", auth_type="basic", auth_username="erp",
                                      auth_secret=MASK))
    assert (again["headers"], again["auth_secret"], again["auth_username"]) == (f"X-Api-Key: {MASK}", MASK, "erp")
    assert notes == {}
    assert _typed_again(typed()) == (typed(), {})
