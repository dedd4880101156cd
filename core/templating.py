"""The Jinja2 environments for every message and page template.

Templates ship as package data in ``shipcast.templates`` (one folder per
channel). HTML files are autoescaped; text templates (``.j2`` files and
partners' overrides, which are strings) are not, so ``O'Brien & Co`` reaches
an SMS as written. A missing variable is an error, and so is printing a null
(``{{ rider.phone }}`` when the OMS sent none): never a blank or a "None" in a
customer's message. Guard optional values with ``{% if %}`` or ``or``.

What a partner writes (template texts, a template directory, WhatsApp
variables) is data, not code: it renders in :func:`sandbox`, Jinja2's
immutable sandbox, bounded in what it may build, and :func:`unsafe` refuses
at apply what reaches for attributes, macros or nested loops, naming the line.
"""

from __future__ import annotations

import operator
import re
from functools import cache
from importlib.resources import files
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The longest text (or list) a partner's template may build with ``*`` or ``+``,
#: and the longest ``range`` it may loop over.
MAX_BUILT = 10_000
MAX_RANGE = 1_000


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


def _too_big(value: Any) -> bool:
    return isinstance(value, str | list | tuple) and len(value) > MAX_BUILT


def _refuse_big() -> SecurityError:
    return SecurityError(f"a text or list of over {MAX_BUILT} items is not built in a partner's template")


class PartnerSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with what a template may build bounded: no
    ``"x" * 10**9``, no ``10 ** 10**6``, no ``'{:>99999999}'.format(1)``, no
    filter that pads or repeats past :data:`MAX_BUILT`, no ``range`` past
    :data:`MAX_RANGE`."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**" and isinstance(left, int) and isinstance(right, int) and (
                abs(right) > 64 or max(abs(left), 2).bit_length() * abs(right) > 4096):
            raise SecurityError("a power of over 4,096 bits is not computed in a partner's template")
        if op == "*" and isinstance(left, int) and isinstance(right, str | list | tuple):
            left, right = right, left
        if op == "*" and isinstance(left, str | list | tuple) and isinstance(right, int) \
                and len(left) * right > MAX_BUILT:
            raise _refuse_big()
        result = {"*": operator.mul, "**": operator.pow, "+": operator.add}[op](left, right)
        if _too_big(result):
            raise _refuse_big()
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """A method called in a template (``'x'.center(n)``, ``'{:>n}'.format(v)``):
        its widths and its result bounded like the rest."""
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | list | tuple):
            if any(isinstance(value, int) and abs(value) > MAX_BUILT for value in (*args, *kwargs.values())):
                raise _refuse_big()
            if isinstance(owner, str) and getattr(__obj, "__name__", "") in ("format", "format_map"):
                _check_widths(owner)
        found = super().call(__context, __obj, *args, **kwargs)
        if _too_big(found):
            raise _refuse_big()
        return found


def _check_widths(fmt: str) -> None:
    """Refuse a format string whose widths or precisions would build past the bound."""
    if any(int(number) > MAX_BUILT for number in re.findall(r"\d+", fmt)):
        raise _refuse_big()


def _bounded_range(*args: int) -> range:
    found = range(*args)
    if len(found) > MAX_RANGE:
        raise SecurityError(f"range over {MAX_RANGE} items is not allowed in a partner's template")
    return found


def _bounded_filter(filter_function: Any) -> Any:
    """A filter whose result is refused past :data:`MAX_BUILT` (and whose width
    arguments are, before it builds anything)."""
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if filter_function.__name__ == "do_format" and args and isinstance(args[0], str):
            _check_widths(args[0])
        widths = [value for value in (*args[1:], *kwargs.values()) if isinstance(value, int)]
        if any(abs(width) > MAX_BUILT for width in widths):
            raise _refuse_big()
        found = filter_function(*args, **kwargs)
        if _too_big(found):
            raise _refuse_big()
        return found
    if hasattr(filter_function, "jinja_pass_arg"):  # keep how Jinja2 calls it (environment, context…)
        bounded.jinja_pass_arg = filter_function.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


#: Filters that pad, repeat, join or format: each bounded in the sandbox.
_BOUNDED_FILTERS = ("center", "indent", "format", "wordwrap", "replace", "join", "truncate", "list", "batch",
                    "slice", "filesizeformat", "urlize")


@cache
def sandbox() -> jinja2.Environment:
    """Where everything a partner supplies renders: the same rules as
    :func:`environment` (strict, no printed nulls, text not escaped), in the
    immutable sandbox."""
    env = PartnerSandbox(
        loader=jinja2.FileSystemLoader(str(files("shipcast.templates"))),
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        finalize=_no_nulls,
        auto_reload=False,
        enable_async=False,
    )
    env.globals["range"] = _bounded_range
    env.globals.pop("lipsum", None)  # text by the kilobyte, for no message's sake
    for name in _BOUNDED_FILTERS:
        if name in env.filters:
            env.filters[name] = _bounded_filter(env.filters[name])
    return env


#: Statements a partner's template may not use: they define code (macros, call
#: blocks) or reach other templates; a loop inside a loop multiplies the work.
_REFUSED: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Macro, "a macro"), (nodes.CallBlock, "a call block"), (nodes.Include, "an include"),
    (nodes.Import, "an import"), (nodes.FromImport, "an import"), (nodes.Extends, "extends"),
)


def unsafe(source: str) -> list[str]:
    """What is wrong with a partner's template before it is ever rendered,
    one message per finding, each naming its line: an
    attribute or key starting with ``_`` (the way out of a template, as in
    ``cycler.__init__.__globals__``), a statement that defines code or reaches
    another template, a loop inside a loop."""
    try:
        tree = sandbox().parse(source)
    except jinja2.TemplateSyntaxError:
        return []  # rendering it says so, with the line
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        key = node.arg if isinstance(node, nodes.Getitem) else None
        name = node.attr if isinstance(node, nodes.Getattr) else key.value if isinstance(key, nodes.Const) else None
        if isinstance(name, str) and name.startswith("_"):
            found.append(f"line {node.lineno}: '{name}' is not allowed: a template reads the event's "
                         "fields, never attributes starting with '_'")
    for kind, what in _REFUSED:
        found += [f"line {node.lineno}: {what} is not allowed in a partner's template"
                  for node in tree.find_all(kind)]
    for assign in tree.find_all(nodes.Assign):
        # A value built from itself (``{% set a = a ~ a %}``) doubles with every line or turn.
        names = {target.name for target in assign.find_all(nodes.Name) if target.ctx == "store"}
        if isinstance(assign.target, nodes.NSRef) or names & {
                name.name for name in assign.node.find_all(nodes.Name) if name.ctx == "load"}:
            found.append(f"line {assign.lineno}: a value built from itself is not allowed in a partner's template")
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            found.append(f"line {loop.lineno}: a recursive loop is not allowed in a partner's template")
        found += [f"line {inner.lineno}: a loop inside a loop is not allowed in a partner's template"
                  for inner in loop.find_all(nodes.For)]
    return sorted(set(found), key=lambda text: (int(text.split(":")[0].removeprefix("line ")), text))


def template_line(exc: BaseException) -> int | None:
    """The line of the template an error was raised at, if it was in one."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<template>") or tb.tb_frame.f_code.co_filename.endswith(".j2"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
