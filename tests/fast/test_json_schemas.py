"""marshmallow schemas described as JSON Schema (shipcast.model.json_schemas):
each field, validator and option as a keyword, and, for a webhook endpoint and
a partners document, the description agreeing with the schema on the values
that sit on either side of a rule."""

from __future__ import annotations

import base64
from typing import Any

import hypothesis
import jsonschema
import pytest
from hypothesis import strategies as st
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from shipcast.messaging.fields import TemplateText
from shipcast.model.catalog import Catalog, validating
from shipcast.model.event_types import BUILTIN, EventTypeRegistry
from shipcast.model.json_schemas import Describer, JsonSchema, json_pattern
from shipcast.model.partners import PartnerSchema, document_schema
from shipcast.plugins.webhook import EndpointSchema, WebhookConfig
from shipcast.security.signing import SECRET_PATTERN, secret_key

CATALOG = Catalog(EventTypeRegistry(BUILTIN), {"webhook": WebhookConfig})


class Own(fields.Field):  # type: ignore[type-arg]
    def json_schema(self, describer: Describer) -> JsonSchema:
        return {"type": "string", "const": "mine"}


class Inner(Schema):
    """An inner thing.

    More words that are not its description."""

    name = fields.String(required=True)


class Outer(Schema):
    text = fields.String(required=True, validate=[validate.Length(min=1, max=5), validate.Regexp(r"[a-z]+")])
    anchored_ = fields.String(data_key="anchored", validate=validate.Regexp(r"^x$"))
    url = fields.Url(schemes={"https"})
    email = fields.Email()
    count = fields.Integer(load_default=3, validate=validate.Range(1, 10))
    ratio = fields.Float(validate=validate.Range(0, 1, min_inclusive=False))
    flag = fields.Boolean(load_default=False)
    kind = fields.String(validate=validate.OneOf(["a", "b"]))
    tags = fields.List(fields.String(), load_default=list, validate=validate.Length(max=3))
    labels = fields.Dict(keys=fields.String(validate=validate.Length(max=8)), values=fields.Integer())
    inner = fields.Nested(Inner)
    inners = fields.Nested(Inner, many=True)
    maybe = fields.String(allow_none=True)
    own = Own()
    said = fields.String(metadata={"description": "In words", "json_schema": {"pattern": "^s"}})
    anything = fields.Raw()
    computed = fields.String(dump_only=True)


@pytest.fixture
def described() -> tuple[JsonSchema, dict[str, JsonSchema]]:
    describer = Describer(CATALOG)
    return describer.schema(Outer), describer.definitions


def test_each_field_is_described_by_its_type_validators_and_options(
        described: tuple[JsonSchema, dict[str, JsonSchema]]) -> None:
    schema, definitions = described
    properties = schema["properties"]
    assert schema["required"] == ["text"] and schema["additionalProperties"] is False
    assert properties["text"] == {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^(?:[a-z]+)"}
    assert properties["anchored"] == {"type": "string", "pattern": "^x$"} and "anchored_" not in properties
    assert properties["url"] == {"type": "string", "format": "uri", "pattern": "^(https)://"}
    assert properties["email"] == {"type": "string", "format": "email"}
    assert properties["count"] == {"type": "integer", "minimum": 1, "maximum": 10, "default": 3}
    assert properties["ratio"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert properties["flag"] == {"type": "boolean", "default": False}
    assert properties["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert properties["tags"] == {"type": "array", "items": {"type": "string"}, "maxItems": 3, "default": []}
    assert properties["labels"] == {"type": "object", "additionalProperties": {"type": "integer"},
                                    "propertyNames": {"maxLength": 8}}
    assert properties["inner"] == {"$ref": "#/components/schemas/Inner"}
    assert properties["inners"] == {"type": "array", "items": {"$ref": "#/components/schemas/Inner"}}
    assert definitions == {"Inner": {"type": "object", "properties": {"name": {"type": "string"}},
                                     "required": ["name"], "additionalProperties": False,
                                     "description": "An inner thing."}}
    assert properties["maybe"] == {"type": ["string", "null"]}
    assert properties["own"] == {"type": "string", "const": "mine"}
    assert properties["said"] == {"type": "string", "description": "In words", "pattern": "^s"}
    assert properties["anything"] == {} and "computed" not in properties


def test_an_update_requires_nothing_defaults_nothing_and_may_clear_what_it_names() -> None:
    schema = Describer(CATALOG).schema(Outer, partial=True, exclude=("text", "url"), nullable=("count", "inner"))
    assert "required" not in schema and not {"text", "url"} & set(schema["properties"])
    assert schema["properties"]["count"] == {"type": ["integer", "null"], "minimum": 1, "maximum": 10}
    assert schema["properties"]["flag"] == {"type": "boolean"}
    assert schema["properties"]["inner"] == {"anyOf": [{"$ref": "#/components/schemas/Inner"}, {"type": "null"}]}


def test_a_schema_that_takes_unknown_keys_says_so() -> None:
    class Lenient(Schema):
        class Meta:
            unknown = EXCLUDE

        name = fields.String()

    assert "additionalProperties" not in Describer(CATALOG).schema(Lenient)


def test_a_pattern_marshmallow_matches_from_the_start_is_anchored_and_ends_at_the_end() -> None:
    assert json_pattern("[a-z]+") == "^(?:[a-z]+)" and json_pattern("^[a-z]+$") == "^[a-z]+$"
    assert json_pattern(r"[a-z]{1,64}\Z") == "^(?:[a-z]{1,64}$)" and json_pattern(r"^a\\Z$") == r"^a\\Z$"


def validator(schema: JsonSchema, definitions: dict[str, JsonSchema]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": {"schemas": definitions}},
                                           format_checker=jsonschema.FormatChecker())


def loads(schema: type[Schema], value: Any) -> bool:
    try:
        with validating(CATALOG):
            schema().load(value)
    except ValidationError:
        return False
    return True


SECRET = "whsec_" + base64.b64encode(bytes(32)).decode()
#: Endpoints on either side of each rule, and whether shipcast takes them.
ENDPOINTS = [
    ({"id": "orders", "url": "https://hooks.acme.example.com/x"}, True),
    ({"id": "orders", "url": "http://127.0.0.1:8080/x", "events": ["*"], "secret": SECRET, "ordered": True,
      "asymmetric": False, "rate_limit": 0.1, "max_concurrency": 256, "description": "x" * 500}, True),
    ({"id": "orders", "url": "https://h.example.com/", "events": ["OFD", "DEL", "OFD"]}, True),
    ({"id": "orders", "url": "https://h.example.com/", "events": ["*", "OFD"]}, False),
    ({"id": "orders", "url": "https://h.example.com/", "events": []}, False),
    ({"id": "orders", "url": "https://h.example.com/", "events": ["NOPE"]}, False),
    ({"id": "Orders", "url": "https://h.example.com/"}, False),
    ({"id": "o" * 65, "url": "https://h.example.com/"}, False),
    ({"id": "orders", "url": "ftp://h.example.com/"}, False),
    ({"id": "orders", "url": "https://h.example.com/" + "x" * 2000}, False),
    ({"id": "orders", "url": "https://h.example.com/", "secret": "whsec_" + "A" * 33}, False),
    ({"id": "orders", "url": "https://h.example.com/", "rate_limit": 0.05}, False),
    ({"id": "orders", "url": "https://h.example.com/", "max_concurrency": 257}, False),
    ({"id": "orders", "url": "https://h.example.com/", "description": "x" * 501}, False),
    ({"id": "orders", "url": "https://h.example.com/", "colour": "red"}, False),
    ({"url": "https://h.example.com/"}, False),
]


@pytest.mark.parametrize(("endpoint", "taken"), ENDPOINTS)
def test_an_endpoints_description_agrees_with_its_schema(endpoint: dict[str, Any], taken: bool) -> None:
    describer = Describer(CATALOG)
    described = validator(describer.ref(EndpointSchema), describer.definitions)
    assert loads(EndpointSchema, endpoint) is taken
    assert described.is_valid(endpoint) is taken


DOCUMENTS = [
    ({"partners": []}, True),
    ({"partners": [{"id": "acme", "name": "Acme", "branding": {"primary_color": "#0a7cff"}, "channels": {
        "webhook": {"endpoints": [{"id": "main", "url": "https://h.example.com/"}]}}}]}, True),
    ({"partners": [{"id": "acme", "name": "Acme", "channels": {"webhook": None}}]}, False),
    ({"partners": [{"id": "acme", "name": "Acme", "channels": {"fax": {}}}]}, False),
    ({"partners": [{"id": "acme", "name": ""}]}, False),
    ({"partners": [{"id": "acme", "name": "Acme", "branding": {"primary_color": "blue"}}]}, False),
    ({"partners": [{"id": "acme", "name": "Acme"}], "version": 2}, False),
]


@pytest.mark.parametrize(("document", "taken"), DOCUMENTS)
def test_a_partners_documents_description_agrees_with_its_schema(document: dict[str, Any], taken: bool) -> None:
    describer = Describer(CATALOG)
    described = validator(document_schema(describer), describer.definitions)
    assert described.is_valid(document) is taken
    assert all(loads(PartnerSchema, partner) for partner in document["partners"]) is taken or set(document) != {
        "partners"}


@hypothesis.settings(max_examples=300, database=None)
@hypothesis.given(st.from_regex(SECRET_PATTERN))
def test_every_secret_the_pattern_takes_is_a_key(secret: str) -> None:
    """A secret a partner may give signs: it is base64 of 24 to 68 bytes,
    not characters that only look like base64 (which failed every delivery)."""
    assert 24 <= len(secret_key(secret.strip())) <= 68


class Texts(Schema):
    text = TemplateText(required=True)


@pytest.mark.parametrize("text", ["Hi {{ order.order_id }}", " a ", "\ufeff", "\x1f", "\x85 ", " \t", "",
                                  {"en": "x"}, {"en": "\x1c"}, {}, "x" * (32 * 1024 + 1)])
def test_a_template_text_the_description_allows_loads(text: Any) -> None:
    """Blank is blank as Python's str.strip sees it: \\x1c-\\x1f and \\x85
    too, which no JSON Schema engine calls whitespace."""
    describer = Describer(CATALOG)
    allowed = validator(describer.schema(Texts), describer.definitions).is_valid({"text": text})
    assert allowed <= loads(Texts, {"text": text})
    assert allowed is (text in ("Hi {{ order.order_id }}", " a ", "\ufeff") or text == {"en": "x"})
