"""The broker's definitions are rendered at deploy time by ``shipcast
topology`` from the operator's password, which it refuses to go without."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bound import channels
from shipcast.settings import Settings
from shipcast.amqp.topology import definitions

SHIPCAST = str(Path(sys.executable).with_name("shipcast"))


def verifies(password_hash: str, password: str) -> bool:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` check, written from its
    definition: base64(salt, 4 bytes + SHA-256(salt + password))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return len(raw) == 36 and hashlib.sha256(salt + password.encode()).digest() == digest


def env_without_password(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "SHIPCAST_RABBITMQ_PASSWORD"}, **extra}


@pytest.mark.parametrize("env", [{}, {"SHIPCAST_RABBITMQ_PASSWORD": ""}], ids=["unset", "empty"])
def test_topology_refuses_to_print_definitions_without_a_password(env: dict[str, str]) -> None:
    result = subprocess.run([SHIPCAST, "topology"], env=env_without_password(**env), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "SHIPCAST_RABBITMQ_PASSWORD" in result.stderr and "--password" in result.stderr, result.stderr


@pytest.mark.parametrize("how", ["environment", "option"])
def test_topology_prints_the_definitions_with_a_salted_hash_of_the_given_password(how: str) -> None:
    password = "s3cret-\u00e9t\u00e9"  # not only ASCII: RabbitMQ hashes its UTF-8 bytes
    args, env = (([], {"SHIPCAST_RABBITMQ_PASSWORD": password}) if how == "environment"
                 else (["--password", password], {}))
    printed = []
    for _ in range(2):
        result = subprocess.run([SHIPCAST, "topology", *args], env=env_without_password(**env),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        printed.append(json.loads(result.stdout))
    hashes = [described["users"][0]["password_hash"] for described in printed]
    assert all(verifies(h, password) for h in hashes) and not verifies(hashes[0], "change-me")
    assert hashes[0] != hashes[1], "a random salt each time: equal passwords do not give equal hashes"
    # Everything else is the topology shipcast declares.
    delays = Settings().retry_delays
    expected = definitions([cls.topology(delays) for _, cls in sorted(channels().items())],
                           password_hash=hashes[0])
    assert printed[0] == json.loads(json.dumps(expected))
