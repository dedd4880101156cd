"""The Jinja2 environment for every message and page template.

Templates ship as package data in ``shipcast.templates`` (one folder per
channel). HTML is autoescaped, and a missing variable is an error, never a
blank in a customer's message.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import jinja2


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("shipcast.templates"))),
        autoescape=jinja2.select_autoescape(["html", "xml"]),
        undefined=jinja2.StrictUndefined,
        enable_async=False,
    )
