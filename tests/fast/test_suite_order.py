"""The suite's own order in several processes: the slow tests open each
process's share of the collection, the longest first, and every test is
still there once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ..conftest import slow_first

pytestmark = pytest.mark.fast


@dataclass
class Item:
    name: str
    markers: dict[str, Any] = field(default_factory=dict)

    def get_closest_marker(self, name: str) -> Any:
        return self.markers.get(name)


def item(name: str, timeout: float | None = None, slow: bool = False) -> Item:
    markers: dict[str, Any] = {}
    if slow:
        markers["slow"] = pytest.mark.slow.mark
    if timeout is not None:
        markers["timeout"] = pytest.mark.timeout(timeout).mark
    return Item(name, markers)


def shares(order: list[Any], workers: int) -> list[list[str]]:
    """How xdist's worksteal first splits ``order``: each process in turn takes ``len(left) // processes left``."""
    left, out = list(order), []
    for k in range(workers):
        size = len(left) // (workers - k)
        out.append([i.name for i in left[:size]])
        del left[:size]
    return out


def test_the_slow_tests_open_each_share_longest_first() -> None:
    items = [item(f"t{n}") for n in range(20)]
    items[3] = item("scenario", 300, slow=True)
    items[9] = item("longest", 900, slow=True)
    items[12] = item("subprocess", slow=True)
    items[17] = item("another", 300, slow=True)
    items[18] = item("fifth", slow=True)
    order = slow_first(items, 4)  # type: ignore[arg-type]
    assert sorted(i.name for i in order) == sorted(i.name for i in items)
    first = shares(order, 4)
    assert [share[0] for share in first] == ["longest", "scenario", "another", "subprocess"]
    assert first[0][1] == "fifth"
    assert [len(share) for share in first] == [5, 5, 5, 5]


def test_more_processes_than_slow_tests_and_an_uneven_split() -> None:
    items = [item(f"t{n}") for n in range(7)] + [item("slow", 300, slow=True)]
    order = slow_first(items, 3)  # type: ignore[arg-type]
    assert [i.name for i in order][0] == "slow"
    assert sorted(i.name for i in order) == sorted(i.name for i in items)
    assert [len(share) for share in shares(order, 3)] == [2, 3, 3]


def test_when_every_test_is_slow_each_share_still_opens_with_one_of_the_longest() -> None:
    items = [item(f"s{n}", timeout=100 * (n + 1), slow=True) for n in range(11)]  # s10 the longest
    order = slow_first(items, 4)  # type: ignore[arg-type]
    assert sorted(i.name for i in order) == sorted(i.name for i in items)
    first = shares(order, 4)
    assert [len(share) for share in first] == [2, 3, 3, 3]
    assert [share[0] for share in first] == ["s10", "s9", "s8", "s7"]
