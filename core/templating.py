"""The Jinja2 environment for every message and page template.

Templates ship as package data in ``shipcast.templates`` (one folder per
channel). HTML files are autoescaped; text templates (``.j2`` files and
partners' overrides, which are strings) are not, so ``O'Brien & Co`` reaches
an SMS as written. A missing variable is an error, and so is printing a null
(``{{ rider.phone }}`` when the OMS sent none): never a blank or a "None" in a
customer's message. Guard optional values with ``{% if %}`` or ``or``.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import jinja2


class NullPrinted(jinja2.TemplateError):
    """A template printed a value the event left null."""


def _no_nulls(value: Any) -> Any:
    if value is None:
        raise NullPrinted("a value printed here is null for this event: guard it with {% if %} or 'or'")
    return value


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("shipcast.templates"))),
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        finalize=_no_nulls,
        auto_reload=False,  # package data: no stat of the file on every render
        enable_async=False,
    )
