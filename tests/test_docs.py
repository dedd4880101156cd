"""docs/plugins.md keeps up with the code: one section per hook, no section for
a hook that is gone, every Channel attribute and method explained, and the
example channel is the one tests/test_third_party_plugin.py installs. Every
picture the README and docs/ show is in git, and every screenshot kept for
docs/portal.md is shown there."""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

import pytest

from shipcast.plugin import hookspecs
from shipcast.plugin.channel import Channel
from shipcast.plugins.sms import hookspecs as sms_hookspecs

pytestmark = pytest.mark.fast

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs" / "plugins.md"
EXAMPLE = Path(__file__).parent / "fixtures" / "shipcast-echo" / "shipcast_echo.py"
PORTAL_EXAMPLE = EXAMPLE.with_name("shipcast_echo_portal.py")

#: What the guide promised to cover when it was written; the tests below find
#: the real attributes and methods, so a new one must be documented too.
KNOWN_ATTRIBUTES = {"name", "description", "prefetch", "queue_arguments", "static_bindings",
                    "records_deliveries", "config_schema"}
KNOWN_METHODS = {"prepare", "bindings", "start", "close", "target", "targets", "preview", "deliver"}


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text(encoding="utf-8")


#: The core's hooks, and those a built-in plugin adds itself.
SPECS = (hookspecs, sms_hookspecs)


def hooks() -> set[str]:
    return {name for specs in SPECS for name, _ in inspect.getmembers(specs, inspect.isfunction)
            if name.startswith("shipcast_")}


def documented_hooks(text: str) -> list[str]:
    return re.findall(r"^## (shipcast_\w+)[ \t]*$", text, flags=re.MULTILINE)


def channel_attributes() -> set[str]:
    """Public class-level settings of Channel: ClassVar annotations (``name``
    has no value) and any other public attribute that is not a method."""
    found = set()
    for cls in Channel.__mro__[:-1]:  # not object
        for attr, annotation in inspect.get_annotations(cls).items():
            if not attr.startswith("_") and str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                found.add(attr)
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            if inspect.isfunction(value) or isinstance(value, classmethod | staticmethod | property):
                continue
            found.add(attr)
    return found


def channel_methods() -> set[str]:
    return {attr for cls in Channel.__mro__[:-1] for attr, value in vars(cls).items()
            if not attr.startswith("_")
            and (inspect.isfunction(value) or isinstance(value, classmethod | staticmethod))}


def test_there_are_hooks_to_document() -> None:
    assert {"shipcast_channels", "shipcast_event_types", "shipcast_routers"} <= hooks()


def test_every_hook_has_a_section(docs: str) -> None:
    missing = sorted(hooks() - set(documented_hooks(docs)))
    assert not missing, f"{DOCS} has no '## <hook>' section for {missing}"


def test_every_hook_section_is_a_hook_that_exists(docs: str) -> None:
    stale = sorted(set(documented_hooks(docs)) - hooks())
    assert not stale, f"{DOCS} documents hooks that no hookspecs module declares: {stale}"


def test_each_hook_is_documented_once(docs: str) -> None:
    sections = documented_hooks(docs)
    assert len(sections) == len(set(sections)), sections


def test_the_attribute_discovery_finds_the_known_attributes() -> None:
    assert KNOWN_ATTRIBUTES <= channel_attributes()
    assert KNOWN_METHODS <= channel_methods()


@pytest.mark.parametrize("attribute", sorted(channel_attributes()))
def test_every_channel_attribute_is_documented(docs: str, attribute: str) -> None:
    assert f"`{attribute}`" in docs, f"Channel.{attribute} is not explained in {DOCS}"


@pytest.mark.parametrize("method", sorted(channel_methods()))
def test_every_channel_method_is_documented(docs: str, method: str) -> None:
    assert re.search(rf"`(async )?{method}\(", docs), f"Channel.{method}() is not explained in {DOCS}"


def test_the_example_channel_is_the_one_the_tests_install(docs: str) -> None:
    assert f"```python\n{EXAMPLE.read_text(encoding='utf-8')}```" in docs, (
        f"the example module in {DOCS} differs from {EXAMPLE}; keep them identical")


def test_the_portal_page_example_is_the_one_installed(docs: str) -> None:
    assert f"```python\n{PORTAL_EXAMPLE.read_text(encoding='utf-8')}```" in docs, (
        f"the portal page example in {DOCS} differs from {PORTAL_EXAMPLE}; keep them identical")


def test_every_python_example_compiles(docs: str) -> None:
    for number, block in enumerate(re.findall(r"^```python\n(.*?)^```", docs, flags=re.MULTILINE | re.DOTALL)):
        compile(block, f"{DOCS.name} python block {number}", "exec")


def shown_images() -> list[tuple[Path, Path]]:
    """Each picture a Markdown file of the README or docs/ shows: (the file, the picture)."""
    found = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"!\[[^\]]*\]\(<?([^)\s>]+)", document.read_text(encoding="utf-8")):
            if "://" not in target:
                found.append((document, (document.parent / target).resolve()))
    return found


def in_git() -> set[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--", "README.md", "docs"], cwd=ROOT, capture_output=True,
                            check=False)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    return {(ROOT / name).resolve() for name in listed.stdout.decode().split("\0") if name}


def test_every_picture_the_docs_show_is_in_git() -> None:
    shown = shown_images()
    assert (ROOT / "docs" / "portal.md", (ROOT / "docs" / "portal" / "14-merchant-outbox.png").resolve()) in shown
    tracked = in_git()
    missing = [f"{document.relative_to(ROOT)} shows {image.relative_to(ROOT)}" for document, image in shown
               if image not in tracked or not image.is_file()]
    assert not missing, f"pictures not in git (copy them from build/test-artifacts/ and add them): {missing}"


def test_every_portal_screenshot_kept_is_shown() -> None:
    shown = {image for _, image in shown_images()}
    unused = sorted(path.name for path in (ROOT / "docs" / "portal").glob("*.png") if path.resolve() not in shown)
    assert not unused, f"docs/portal/ keeps screenshots docs/portal.md does not show: {unused}"
