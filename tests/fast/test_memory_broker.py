"""The in-memory broker routes topic keys the way RabbitMQ does. The same
table is checked against the real RabbitMQ in tests/test_memory_broker_parity.py."""

from __future__ import annotations

import pytest

from shipcast.amqp.memory import topic_matches

pytestmark = pytest.mark.fast

#: (binding pattern, routing key, whether RabbitMQ's topic exchange routes it)
ROUTES = [
    ("acme.OFD", "acme.OFD", True),
    ("acme.OFD", "acme.DEL", False),
    ("acme.*", "acme.OFD", True),
    ("acme.*", "globex.OFD", False),
    ("acme.*", "acme", False),             # * is exactly one word
    ("acme.*", "acme.OFD.extra", False),
    ("*.OFD", "acme.OFD", True),
    ("#", "acme.OFD", True),
    ("#", "acme", True),
    ("acme.#", "acme", True),              # # is zero or more words
    ("acme.#", "acme.OFD.x.y", True),
    ("#.OFD", "acme.OFD", True),
    ("#.OFD", "OFD", True),
    ("#.OFD", "acme.DEL", False),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False),
    ("*.*", "acme.OFD", True),
    ("*.*", "acme", False),
    ("my-shop_2.RESCHEDULE_REQUESTED", "my-shop_2.RESCHEDULE_REQUESTED", True),
]


@pytest.mark.parametrize(("pattern", "key", "routed"), ROUTES)
def test_topic_routing(pattern: str, key: str, routed: bool) -> None:
    assert topic_matches(pattern, key) is routed
