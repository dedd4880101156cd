"""What deploy/ ships holds no credentials anyone else knows: no default
passwords or fixed password hashes, every secret required from the operator,
ports published on loopback only, and the broker's definitions rendered at
deploy time by ``shipcast topology`` from the operator's password, which it
refuses to go without."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bound import channels
from shipcast.settings import Settings
from shipcast.amqp.topology import definitions

DEPLOY = Path(__file__).parents[1] / "deploy"
SHIPCAST = str(Path(sys.executable).with_name("shipcast"))

#: Credentials every copy of shipcast (or of an image it runs on) would share.
KNOWN_DEFAULTS = {
    "change-me": re.compile(r"change-?me", re.IGNORECASE),
    "shipcast:shipcast": re.compile(r"shipcast:shipcast\b"),
    "a password_hash fixed in a file": re.compile(r'"password_hash"\s*:\s*"[^"]'),
}
#: Where RabbitMQ's guest user would be configured into a deployment.
GUEST = re.compile(r"guest:guest|guest@|RABBITMQ_DEFAULT_(USER|PASS)", re.IGNORECASE)
#: A value the operator must give: compose stops with this message when it is unset.
REQUIRED = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]+\}")
SECRET_NAME = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|_KEY$")
USERINFO = re.compile(r"://[^/:@\s]+:(\$\{[^}]*\}|[^@\s]+)@")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]


def verifies(password_hash: str, password: str) -> bool:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` check, written from its
    definition: base64(salt, 4 bytes + SHA-256(salt + password))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return len(raw) == 36 and hashlib.sha256(salt + password.encode()).digest() == digest


def env_without_password(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "SHIPCAST_RABBITMQ_PASSWORD"}, **extra}


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY) for p in DEPLOY.rglob("*") if p.is_file()),
                         ids=str)
def test_no_file_under_deploy_holds_a_default_credential(path: Path) -> None:
    text = (DEPLOY / path).read_text()
    found = [name for name, pattern in KNOWN_DEFAULTS.items() if pattern.search(text)]
    assert not found, f"deploy/{path}: {', '.join(found)}"


def test_the_compose_file_and_the_manifests_configure_no_guest_user() -> None:
    for path in [DEPLOY / "docker-compose.yml", DEPLOY / "Dockerfile", *sorted((DEPLOY / "k8s").glob("*"))]:
        match = GUEST.search(path.read_text())
        assert match is None, f"{path.relative_to(DEPLOY)}: {match and match.group()}"


def test_every_secret_in_compose_is_required_from_the_operator() -> None:
    """No secret has a default: compose refuses to start (``${VAR:?message}``)
    until the operator sets it, and a password in a URL is one of them."""
    checked = 0
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert REQUIRED.fullmatch(value), f"{name}: {key}={value} is not required from the operator"
                checked += 1
            for password in USERINFO.findall(value):
                assert REQUIRED.fullmatch(password), f"{name}: {key} carries the password {password!r}"
                checked += 1
    assert checked >= 6  # the broker's, PostgreSQL's, the secret key, the API token, ...


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports") or []:
            loopback = port.get("host_ip") == "127.0.0.1" if isinstance(port, dict) else \
                str(port).startswith("127.0.0.1:")
            assert loopback, f"{name} publishes {port} beyond this machine"
            published.append(port)
    assert published  # the API, the management UI, ...
    assert not compose()["services"]["postgres"].get("ports"), "PostgreSQL is for the containers only"


def test_the_manifests_open_no_node_port_and_require_the_broker_url() -> None:
    for doc in manifests():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert not pod.get("hostNetwork"), doc["metadata"]["name"]
        for container in pod["containers"]:
            assert all("hostPort" not in port for port in container.get("ports", []))
            # Required, not optional: without it the pod does not start.
            [amqp] = [e for e in container.get("env", []) if e["name"] == "SHIPCAST_AMQP_URL"]
            reference = amqp["valueFrom"]["secretKeyRef"]
            assert reference["key"] == "SHIPCAST_AMQP_URL" and not reference.get("optional"), doc["metadata"]["name"]


def test_compose_renders_the_broker_definitions_from_the_operator_password(tmp_path: Path) -> None:
    """The step compose runs before RabbitMQ, run here as it is written: it
    writes definitions whose user has the hash of SHIPCAST_RABBITMQ_PASSWORD,
    into the file RabbitMQ loads at boot; without the password it fails, and
    RabbitMQ, which waits for it to succeed, does not start."""
    services = compose()["services"]
    render, rabbitmq = services["rabbitmq-definitions"], services["rabbitmq"]
    assert REQUIRED.fullmatch(render["environment"]["SHIPCAST_RABBITMQ_PASSWORD"])
    assert rabbitmq["depends_on"]["rabbitmq-definitions"] == {"condition": "service_completed_successfully"}
    [written] = [v.split(":")[1] for v in render["volumes"] if v.startswith("definitions:")]
    [read] = [v.split(":")[1] for v in rabbitmq["volumes"] if v.startswith("definitions:")]
    loaded = shlex.split(rabbitmq["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"])
    assert loaded[:2] == ["-rabbit", "load_definitions"] and loaded[2] == f"{read}/definitions.json"

    sh, dash_c, script = render["entrypoint"]
    assert (sh, dash_c) == ("sh", "-c")
    script = script.replace(f"{written}/", f"{tmp_path}/")
    env = env_without_password(PATH=f"{Path(SHIPCAST).parent}{os.pathsep}{os.environ['PATH']}")
    failed = subprocess.run([sh, dash_c, script], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "SHIPCAST_RABBITMQ_PASSWORD" in failed.stderr
    assert not (tmp_path / "definitions.json").exists()

    done = subprocess.run([sh, dash_c, script], env={**env, "SHIPCAST_RABBITMQ_PASSWORD": "0f1e2d3c4b5a"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [user] = json.loads((tmp_path / "definitions.json").read_text())["users"]
    assert user["name"] == "shipcast" and verifies(user["password_hash"], "0f1e2d3c4b5a")


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
