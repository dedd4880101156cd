"""What the OpenAPI document says beyond what FastAPI finds itself, so a
client can be generated from it and a fuzzer can walk it.

* Request bodies a route reads and validates itself (with the marshmallow
  schema of a partners document or a channel's config, or by hand): the
  route's ``openapi_extra`` names, with :func:`request_body`, a function that
  describes the body from the rules that validate it, and :func:`complete`
  writes each description into the document when it is generated, against
  the running registry's catalog (its event types and channels).
* Links (:func:`links`) from the operation that creates something to those
  that use it, with the values they take from its answer.
* The shapes of answers (:func:`answer`), each one class of a generated client.
* Operation ids: each route's function name (``create_endpoint``), which a
  generated client names its functions after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.routing import APIRoute

from shipcast.app.api.access import ERROR, errors
from shipcast.model.catalog import Catalog
from shipcast.model.json_schemas import Describer, JsonSchema

#: The shapes of answers, by name: documented once each, as components.
_ANSWERS: dict[str, JsonSchema] = {}
#: The key an operation carries its body's description under until :func:`complete` writes it.
_MARK = "x-shipcast-body"
#: Each documented body by its key: described against the catalog when the document is generated.
_BODIES: dict[str, Body] = {}


@dataclass(frozen=True)
class Body:
    """How a route's request body is documented."""

    #: Describes the body, as JSON Schema, from the rules that validate it.
    schema: Callable[[Describer], JsonSchema]
    #: False when the route takes no body too.
    required: bool = True
    #: Media types besides JSON that the route reads the same document from.
    also: tuple[str, ...] = ()
    #: Named examples: each a body the route accepts.
    examples: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None


def request_body(schema: Callable[[Describer], JsonSchema], *, required: bool = True, also: tuple[str, ...] = (),
         examples: Mapping[str, Any] | None = None, description: str | None = None) -> dict[str, Any]:
    """A route's ``openapi_extra``: its body is described by ``schema``."""
    key = f"{schema.__module__}.{schema.__qualname__}"
    _BODIES[key] = Body(schema, required, also, examples or {}, description)
    return {_MARK: key}


def answer(name: str, schema: JsonSchema, *, many: bool = False, description: str = "OK") -> dict[str, Any]:
    """A response's OpenAPI description: ``schema`` (a list of them with
    ``many``), documented once as the component ``name``, so a generated client
    parses the answer into a class of that name. For a route declared with
    ``response_model=None``: its answer is not reshaped to fit."""
    _ANSWERS[name] = schema
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"description": description,
            "content": {"application/json": {"schema": {"type": "array", "items": ref} if many else ref}}}


def links(operations: Mapping[str, Mapping[str, str]], description: str | None = None) -> dict[str, Any]:
    """A response's OpenAPI ``links``: for each operation id, where each of
    its parameters comes from (``$response.body#/id``, ``$request.path.partner_id``)."""
    return {"links": {_camel(operation): {"operationId": operation, "parameters": dict(parameters),
                                          **({"description": description} if description else {})}
                      for operation, parameters in operations.items()}}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def operation_id(route: APIRoute) -> str:
    """Each route's operation id: its function's name."""
    return route.name


def complete(document: dict[str, Any], catalog: Catalog) -> None:
    """Write the request bodies routes describe themselves into ``document``,
    and the definitions they refer to into its components."""
    describer = Describer(catalog)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            key = operation.pop(_MARK, None) if isinstance(operation, dict) else None
            if key is None:
                continue
            documented = _BODIES[key]
            media: dict[str, Any] = {"schema": documented.schema(describer)}
            if documented.examples:
                media["examples"] = {name: {"value": value} for name, value in documented.examples.items()}
            operation["requestBody"] = {
                "required": documented.required,
                "content": {kind: media for kind in ("application/json", *documented.also)},
                **({"description": documented.description} if documented.description else {})}
    # Every body is bounded before it is read (the BodyLimit middleware), so
    # every operation that takes one may answer 413.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                for status, answer in errors(413).items():
                    operation.setdefault("responses", {}).setdefault(str(status), answer)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR
    components.update(_ANSWERS)
    # A body's description here is the more exact one: it replaces what FastAPI made of the same model.
    components.update(describer.definitions)
