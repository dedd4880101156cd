"""What is shown or logged never carries a secret: secret-looking keys, and
the credentials of a URL wherever one appears."""

from __future__ import annotations

import pytest

from shipcast.security.redact import redact

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(("value", "shown"), [
    ("https://erp:s3cret@hooks.example.com/x", "https://…redacted…@hooks.example.com/x"),
    ("amqp://guest:guest@localhost:5672/", "amqp://…redacted…@localhost:5672/"),
    ("see http://u@h.example/ and https://a:b@c.example/d", "see http://…redacted…@h.example/ and "
                                                             "https://…redacted…@c.example/d"),
    ("priya@example.com", "priya@example.com"),  # an address, not a URL's credentials
    ("https://hooks.example.com/x?to=a@b.c", "https://hooks.example.com/x?to=a@b.c"),
])
def test_the_credentials_of_a_url_are_masked(value: str, shown: str) -> None:
    assert redact(value) == shown


def test_secret_keys_are_masked_at_any_depth() -> None:
    config = {"endpoints": [{"url": "https://u:p@x.example/", "secret": "whsec_x", "userinfo_secret": "enc:1",
                             "events": ["OFD"]}], "api_token": "", "name": "Acme"}
    assert redact(config) == {"endpoints": [{"url": "https://…redacted…@x.example/", "secret": "…redacted…",
                                             "userinfo_secret": "…redacted…", "events": ["OFD"]}],
                              "api_token": "", "name": "Acme"}


def test_values_stored_encrypted_are_masked_under_any_key() -> None:
    config = {"header_secrets": {"X-Api-Key": "enc:gAAAAB", "X-Plain": "v"}}
    assert redact(config) == {"header_secrets": {"X-Api-Key": "…redacted…", "X-Plain": "v"}}
