"""The package list, found rather than written out. ``core/`` installs as
``shipcast`` and ``plugins/`` as ``shipcast.plugins`` (``package_dir`` in
setup.cfg), so a new layer of the core or a new built-in channel's folder
needs no line here. Everything else is in setup.cfg."""

from __future__ import annotations

from setuptools import find_packages, setup


def packages() -> list[str]:
    return ["shipcast", *(f"shipcast.{name}" for name in find_packages("core")),
            "shipcast.plugins", *(f"shipcast.plugins.{name}" for name in find_packages("plugins")),
            "shipcast.templates"]


if __name__ == "__main__":
    setup(packages=packages())
