"""An endpoint's own headers and authentication (HTTP basic or bearer),
sent with each delivery beside the signature.

Validated when applied (names are HTTP tokens, values one line of printable
ASCII, shipcast's own headers reserved), stored encrypted like the endpoint's
secret, and shown masked as :data:`MASK` wherever an endpoint is shown. A
value given back as :data:`MASK`, or a password or token left out of an
``auth`` that keeps its type, keeps the value stored.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shipcast.exceptions import ConfigError
from shipcast.model.json_schemas import Describer, JsonSchema
from shipcast.security.crypto import SecretBox

#: How a stored header value, password or token is shown; given back, it keeps the stored one.
MASK = "••••"
MAX_HEADERS = 20
MAX_NAME = 100
MAX_VALUE = 4096
MAX_USERNAME = 256
MAX_PASSWORD = 1024

# Matched whole (fullmatch): ``$`` would also match before a final line break.
#: An HTTP field name (RFC 9110 ``token``).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A bearer token (RFC 6750 ``b64token``).
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Headers shipcast sends itself, or that govern the HTTP exchange: never an endpoint's own.
RESERVED = frozenset({"host", "content-type", "content-length", "content-encoding", "transfer-encoding",
                      "connection", "keep-alive", "te", "trailer", "upgrade", "expect", "user-agent",
                      "traceparent", "tracestate"})
RESERVED_PREFIXES = ("webhook-", "proxy-")
AUTHORIZATION = "authorization"


def _any_case(text: str) -> str:
    """``text`` as a pattern that ignores case (JSON Schema's patterns have no flag for it)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)  # letters, digits and -


def _reserved(name: str) -> str | None:
    lowered = name.lower()
    if lowered.startswith("webhook-"):
        return "reserved: shipcast sends the webhook-* headers itself (the signature)"
    if lowered in RESERVED or lowered.startswith(RESERVED_PREFIXES):
        return "reserved: shipcast sets it itself"
    return None


def _value_problem(value: str, limit: int) -> str | None:
    if "\r" in value or "\n" in value:
        return "must not hold a line break (CR or LF)"
    if len(value) > limit:
        return f"longer than {limit} characters"
    if not value:
        return "must not be empty"
    if not _PRINTABLE.fullmatch(value):
        return "must be printable ASCII (letters, digits, punctuation and spaces)"
    if value != value.strip():
        return "must not start or end with a space"
    return None


class HeadersField(fields.Dict):
    """``headers:``, a mapping of header name to value (:data:`MASK` keeps the stored value)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {"description": f"Sent with each delivery, at most {MAX_HEADERS}; stored "
                                                      f"encrypted, shown as {MASK}, which given back keeps a value"})
        super().__init__(keys=fields.String(), values=fields.String(), **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        """The checks of :meth:`_deserialize`, but the one across names (no
        name twice, ignoring case), which its description says in words."""
        reserved = "|".join([*(_any_case(prefix) + ".*" for prefix in RESERVED_PREFIXES),
                             *(_any_case(name) for name in sorted(RESERVED))])
        return {"type": "object", "maxProperties": MAX_HEADERS,
                "description": f"Sent with each delivery, at most {MAX_HEADERS}, each name once (ignoring case); "
                               f"stored encrypted, shown as {MASK}, which given back keeps a value",
                "propertyNames": {"pattern": f"^{_TOKEN.pattern}$", "maxLength": MAX_NAME,
                                  "not": {"pattern": f"^({reserved})$"}},
                "additionalProperties": {"type": "string", "maxLength": MAX_VALUE,
                                         "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"}}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValidationError("must be a mapping of header name to value")
        if len(value) > MAX_HEADERS:
            raise ValidationError(f"at most {MAX_HEADERS} headers")
        errors: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for name, given in value.items():
            where = str(name)
            if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > MAX_NAME:
                errors[where] = [f"not a header name: letters, digits and !#$%&'*+-.^_`|~, at most {MAX_NAME}"]
                continue
            refused = _reserved(name)
            if refused:
                errors[where] = [refused]
            elif name.lower() in seen:
                errors[where] = [f"given twice (as {seen[name.lower()]!r} too): header names ignore case"]
            elif not isinstance(given, str):
                errors[where] = ["the value must be text"]
            elif given != MASK and (problem := _value_problem(given, MAX_VALUE)):
                errors[where] = [problem]
            seen[name.lower()] = name
        if errors:
            raise ValidationError(errors)
        return dict(value)


def _secret_text(limit: int) -> list[Any]:
    def no_control(value: str) -> None:
        if value != MASK and _CONTROL.search(value):
            raise ValidationError("must not hold control characters (a line break, a tab)")
    return [validate.Length(min=1, max=limit), no_control]


def _token(value: str) -> None:
    if value != MASK and not _B64TOKEN.fullmatch(value):
        raise ValidationError("not a bearer token: letters, digits and -._~+/, then any =")


class AuthSchema(Schema):
    """``auth:``, HTTP authentication sent as ``Authorization``, beside the signature."""

    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(["basic", "bearer"]))
    #: basic: the user name (no ``:``).
    username = fields.String(validate=_secret_text(MAX_USERNAME))
    #: basic: the password; left out (or given as the mask) keeps the stored one.
    password = fields.String(validate=_secret_text(MAX_PASSWORD))
    #: bearer: the token; left out (or given as the mask) keeps the stored one.
    token = fields.String(validate=[validate.Length(min=1, max=MAX_VALUE), _token])

    @validates_schema
    def _fits_its_type(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        if data.get("type") == "basic":
            if "username" not in data:
                errors["username"] = ["required for basic authentication"]
            elif ":" in data["username"]:
                errors["username"] = ["must not hold ':' (it separates the user name from the password)"]
            if "token" in data:
                errors["token"] = ["only for bearer authentication"]
        elif data.get("type") == "bearer":
            errors.update({key: ["only for basic authentication"] for key in ("username", "password") if key in data})
        if errors:
            raise ValidationError(errors)


class AuthField(fields.Nested):
    """``auth:``, loaded whole even within an update: an ``auth`` given
    replaces the stored one, so its ``type`` is required in a ``PATCH`` too
    (marshmallow would pass the update's partial loading on to it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(AuthSchema, **kwargs)

    def json_schema(self, describer: Describer) -> JsonSchema:
        """:class:`AuthSchema`'s fields and the checks that tie them to its ``type``."""
        text = {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f]*$"}
        username = {**text, "maxLength": MAX_USERNAME, "pattern": r"^[^\x00-\x1f\x7f:]*$"}
        password = {**text, "maxLength": MAX_PASSWORD}
        token = {"type": "string", "minLength": 1, "maxLength": MAX_VALUE, "pattern": f"^{_B64TOKEN.pattern}$"}
        return describer.define("Auth", {
            "description": "HTTP authentication sent as Authorization, beside the signature; a password or "
                           f"token left out, or given as {MASK}, keeps the one stored (so one is required "
                           "where none is)",
            "oneOf": [
                {"type": "object", "required": ["type", "username"], "additionalProperties": False,
                 "properties": {"type": {"const": "basic"}, "username": username, "password": password}},
                {"type": "object", "required": ["type"], "additionalProperties": False,
                 "properties": {"type": {"const": "bearer"}, "token": token}}]})

    def _deserialize(self, value: Any, attr: str | None, data: Any, partial: Any = None, **kwargs: Any) -> Any:
        return super()._deserialize(value, attr, data, partial=False, **kwargs)


# -- stored encrypted, kept when masked ---------------------------------------------

def _stored_auth(auth: Mapping[str, Any]) -> bool:
    return "password_secret" in auth or "token_secret" in auth


def _sealed(box: SecretBox, plaintext: str, stored: str | None) -> str:
    """``plaintext`` encrypted; the ciphertext stored already when it holds the
    same (applying the same file twice changes nothing)."""
    if stored is not None:
        try:
            if box.decrypt(stored) == plaintext:
                return stored
        except ConfigError:  # stored under another key: encrypt it anew
            pass
    return box.encrypt(plaintext)


#: Why a value stored for the URL's old origin is not kept.
MOVED = "give it again: the URL's host changed"


def with_headers(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None,
                 *, moved: bool = False) -> dict[str, Any]:
    """``endpoint`` with the ``headers`` it gives stored encrypted as
    ``header_secrets``; a value given as :data:`MASK` keeps the one stored
    under that name. Without ``headers``, those it carries stay. When the
    URL ``moved`` to another origin, no stored value is kept: they were
    given for the old one.

    :raises ConfigError: a masked value with none stored under its name (or moved).
    """
    endpoint = dict(endpoint)
    given = endpoint.pop("headers", None)
    if given is None:
        if moved:
            endpoint.pop("header_secrets", None)
        return endpoint
    stored = {name.lower(): value for name, value in ((old or {}).get("header_secrets") or {}).items()}
    kept: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for name, value in given.items():
        if value != MASK:
            kept[name] = _sealed(box, value, None if moved else stored.get(name.lower()))
        elif name.lower() in stored and moved:
            errors[f"headers.{name}"] = [MOVED]
        elif name.lower() in stored:
            kept[name] = stored[name.lower()]
        else:
            errors[f"headers.{name}"] = ["no value is stored to keep: give the value"]
    if errors:
        raise ConfigError("refused", errors)
    endpoint.pop("header_secrets", None)
    if kept:
        endpoint["header_secrets"] = kept
    return endpoint


def with_auth(box: SecretBox, endpoint: Mapping[str, Any], old: Mapping[str, Any] | None,
              *, url_credentials: bool, moved: bool = False) -> dict[str, Any]:
    """``endpoint`` with the ``auth`` it gives stored, its password or token
    encrypted (left out or masked: the one stored for the same type, unless
    the URL ``moved`` to another origin). Given ``auth`` replaces
    credentials the URL gave before; credentials the URL gives now
    (``url_credentials``), or a URL moved, drop a stored ``auth``.

    :raises ConfigError: both given at once, or a password or token missing.
    """
    endpoint = dict(endpoint)
    auth = endpoint.get("auth")
    if auth is None or _stored_auth(auth):
        if url_credentials or moved:
            endpoint.pop("auth", None)
        return endpoint
    if url_credentials:
        raise ConfigError("refused", {"auth": ["the URL carries credentials too: give them in one place"]})
    previous = (old or {}).get("auth") or {}
    kind = auth.get("type")
    if kind not in ("basic", "bearer"):  # the schema requires it; said by name should a caller skip it
        raise ConfigError("refused", {"auth.type": ["required: basic or bearer"]})
    secret, stored_as = ("password", "password_secret") if kind == "basic" else ("token", "token_secret")
    given = auth.get(secret)
    same = previous.get(stored_as) if previous.get("type") == kind else None
    if given is not None and given != MASK:
        sealed = _sealed(box, given, None if moved else same)
    elif same and moved:
        raise ConfigError("refused", {f"auth.{secret}": [MOVED]})
    elif same:
        sealed = same
    else:
        raise ConfigError("refused", {f"auth.{secret}": [f"required: no {secret} is stored to keep"]})
    endpoint["auth"] = {"type": kind, **({"username": auth["username"]} if kind == "basic" else {}),
                        stored_as: sealed}
    endpoint.pop("userinfo_secret", None)
    return endpoint


def authorization_conflicts(endpoint: Mapping[str, Any]) -> dict[str, list[str]]:
    """An ``Authorization`` header among the endpoint's own, where ``auth`` or
    the URL's credentials send one: by where it is."""
    for name in endpoint.get("header_secrets") or {}:
        if name.lower() == AUTHORIZATION:
            if endpoint.get("auth"):
                return {f"headers.{name}": ["reserved while auth is set: auth sends it"]}
            if endpoint.get("userinfo_secret"):
                return {f"headers.{name}": ["reserved while the URL carries credentials: they send it"]}
    return {}


# -- shown and sent ----------------------------------------------------------------

def shown_headers(endpoint: Mapping[str, Any]) -> dict[str, str]:
    """The endpoint's own headers as shown: their names, each value masked."""
    return {name: MASK for name in endpoint.get("header_secrets") or {}}


def shown_auth(endpoint: Mapping[str, Any]) -> dict[str, str] | None:
    """The endpoint's authentication as shown: its type and user name, the password or token masked."""
    auth = endpoint.get("auth")
    if not auth:
        return None
    if auth["type"] == "basic":
        return {"type": "basic", "username": auth["username"], "password": MASK}
    return {"type": "bearer", "token": MASK}


def request_headers(box: SecretBox, endpoint: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The headers a delivery adds (the endpoint's own, and ``Authorization``
    for its ``auth``), and the same as the attempt log shows them, masked."""
    sent = {name: box.decrypt(value) for name, value in (endpoint.get("header_secrets") or {}).items()}
    shown = {name: MASK for name in sent}
    auth = endpoint.get("auth")
    if auth:
        if auth["type"] == "basic":
            pair = f"{auth['username']}:{box.decrypt(auth['password_secret'])}".encode()
            sent["authorization"] = "Basic " + base64.b64encode(pair).decode()
            shown["authorization"] = f"Basic {MASK}"
        else:
            sent["authorization"] = "Bearer " + box.decrypt(auth["token_secret"])
            shown["authorization"] = f"Bearer {MASK}"
    return sent, shown
