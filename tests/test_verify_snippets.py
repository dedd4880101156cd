"""The verification programs in docs/partners.md, run for real: each one, in
every language whose runtime this machine has, accepts what shipcast.signing
signs (also during a secret rotation) and refuses a tampered body, a wrong
secret, a replayed request and an Ed25519 key outside the JWKS."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipcast.security.signing import generate_secret, jwk, sign, sign_ed25519

DOCS = Path(__file__).parents[1] / "docs" / "partners.md"
SECTION = "## Verify the signature"

#: Fence tag -> (runtime looked up with shutil.which, file name to save the program as).
LANGUAGES: dict[str, tuple[str, str]] = {
    "python": ("python", "verify.py"),
    "js": ("node", "verify.js"),
    "go": ("go", "verify.go"),
    "php": ("php", "verify.php"),
    "java": ("java", "Verify.java"),
}
#: The languages whose program also checks v1a (Ed25519) signatures.
ED25519_LANGUAGES = {"python", "js"}

OLD, NEW, UNKNOWN = generate_secret(), generate_secret(), generate_secret()
KEY, OTHER_KEY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
MSG_ID = "msg_2b1cvzTE8cDhgRUfK0yZ4kPNDXv"
# Raw UTF-8, quotes, backslashes, a newline and a character outside the BMP:
# the programs must sign the bytes, not a re-encoding of them.
BODY = json.dumps({"type": "order.delivered", "data": {
    "order_id": "A-1042", "note": 'café ₹1,299 "fragile" \\ 📦\nsecond line'}}, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Case:
    """One request as a partner receives it, and whether it must verify."""

    valid: bool
    secret: str  # the secret the partner verifies with
    v1: tuple[str, ...] = (OLD,)  # the secrets shipcast signs with
    v1a: tuple[Ed25519PrivateKey, ...] = ()  # the keys shipcast signs with
    jwks: tuple[Ed25519PrivateKey, ...] | None = None  # the keys the partner trusts
    age: int = 0  # seconds between signing and verifying (negative: signed in the future)
    tamper: bool = False  # the body changed after signing
    extra: str = ""  # signatures of other versions, prepended to the header

    def document(self) -> dict[str, Any]:
        """The JSON file a program's main reads."""
        timestamp = int(time.time()) - self.age
        signatures = [self.extra] if self.extra else []
        signatures += [sign(self.v1, MSG_ID, timestamp, BODY)] if self.v1 else []
        signatures += [sign_ed25519(key, MSG_ID, timestamp, BODY) for key in self.v1a]
        body = BODY.replace(b"A-1042", b"A-1043") if self.tamper else BODY
        return {
            "secret": self.secret,
            "headers": {"webhook-id": MSG_ID, "webhook-timestamp": str(timestamp),
                        "webhook-signature": " ".join(signatures)},
            "body": body.decode(),
            "jwks": None if self.jwks is None else {"keys": [jwk(key) for key in self.jwks]},
        }

    @property
    def needs_ed25519(self) -> bool:
        return self.jwks is not None


CASES: dict[str, Case] = {
    "one-signature": Case(True, OLD),
    "rotation-old-secret": Case(True, OLD, v1=(OLD, NEW)),
    "rotation-new-secret": Case(True, NEW, v1=(OLD, NEW)),
    # No JWKS given: a v1a signature is as unknown to the verifier as v2 is.
    "unknown-versions-ignored": Case(True, OLD, v1a=(KEY,), extra="v2,AAAA v1b,c2lnbmF0dXJl"),
    "tampered-body": Case(False, OLD, tamper=True),
    "wrong-secret": Case(False, UNKNOWN),
    "ten-minutes-old": Case(False, OLD, age=600),
    "ten-minutes-ahead": Case(False, OLD, age=-600),
    "v1a-key-in-jwks": Case(True, OLD, v1=(UNKNOWN,), v1a=(KEY,), jwks=(OTHER_KEY, KEY)),
    "v1a-key-not-in-jwks": Case(False, OLD, v1=(UNKNOWN,), v1a=(OTHER_KEY,), jwks=(KEY,)),
}


def code_blocks(markdown: str) -> dict[str, list[str]]:
    """The fenced blocks of the '## Verify the signature' section, by language
    tag. The section ends at the next '#' or '##' heading outside a block."""
    blocks: dict[str, list[str]] = {}
    lines: list[str] = []
    in_section, tag = False, ""
    for line in markdown.splitlines(keepends=True):
        if tag:
            if line.rstrip() == "```":
                if in_section:
                    blocks.setdefault(tag, []).append("".join(lines))
                tag = ""
            else:
                lines.append(line)
        elif line.startswith("```"):
            tag, lines = line[3:].strip() or "text", []
        elif re.match(r"#{1,2} ", line):
            in_section = line.rstrip() == SECTION
    return blocks


@pytest.fixture(scope="module")
def blocks() -> dict[str, list[str]]:
    return code_blocks(DOCS.read_text(encoding="utf-8"))


def save(language: str, code: str, directory: Path) -> list[str]:
    """Save a language's program in `directory` (building it, for Go) and give
    the command that runs it, without the case file; skip if its runtime is missing."""
    runtime, filename = LANGUAGES[language]
    executable = sys.executable if language == "python" else shutil.which(runtime)
    if executable is None:
        pytest.skip(f"{runtime} is not installed (shutil.which({runtime!r}) found nothing): "
                    f"the {language} program of {DOCS.name} is not run here")
    source = directory / filename
    source.write_text(code, encoding="utf-8")
    if language == "java":
        # Launched as documented (`java Verify.java`); the C1 compiler alone
        # makes these short runs faster.
        return [executable, "-XX:TieredStopAtLevel=1", str(source)]
    if language != "go":
        return [executable, str(source)]
    binary = directory / "verify"
    built = subprocess.run([executable, "build", "-o", str(binary), str(source)],
                           capture_output=True, text=True, timeout=300, cwd=directory)
    assert built.returncode == 0, f"go build failed:\n{built.stderr}"
    return [str(binary)]


@pytest.fixture(scope="module")
def programs(blocks: dict[str, list[str]],
             tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[str]]:
    """A language's command, saved and built on first use, once per module."""
    commands: dict[str, list[str]] = {}

    def command(language: str) -> list[str]:
        if language not in commands:
            commands[language] = save(language, blocks[language][0], tmp_path_factory.mktemp(language))
        return commands[language]

    return command


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_docs_have_one_program_per_language(blocks: dict[str, list[str]], language: str) -> None:
    """Python, Node.js, Go, PHP and Java: one program each, under the section's heading."""
    assert len(blocks.get(language, [])) == 1, (
        f"the '{SECTION}' section of {DOCS} should have exactly one ```{language} block")


@pytest.mark.slow
@pytest.mark.parametrize(("language", "name"), [
    (language, name) for language in LANGUAGES for name, case in CASES.items()
    if language in ED25519_LANGUAGES or not case.needs_ed25519])
def test_the_program_verifies_as_shipcast_signs(programs: Callable[[str], list[str]], tmp_path: Path,
                                                language: str, name: str) -> None:
    """The program exits 0 and prints 'valid' for a request it must accept, 1
    and 'invalid' for one it must refuse."""
    case = CASES[name]
    command = programs(language)
    path = tmp_path / "case.json"
    path.write_text(json.dumps(case.document()), encoding="utf-8")
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    expected = (0, "valid") if case.valid else (1, "invalid")
    assert (result.returncode, result.stdout.strip()) == expected, (
        f"{language} program on '{name}':\nstdout: {result.stdout}\nstderr: {result.stderr}")
