"""Secrets at rest: endpoint secrets and signing keys are stored encrypted.

The key comes from ``SHIPCAST_SECRET_KEY``: one or more Fernet keys,
comma-separated, the first encrypting and every one decrypting, so the key
can be rotated. Unset, a key is generated once into ``SHIPCAST_SECRET_KEY_FILE``
(readable by its owner only), which serves a single machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shipcast.exceptions import ConfigError
from shipcast.settings import Settings

log = logging.getLogger(__name__)

#: Marks a stored value as ciphertext, so plaintext is never mistaken for it.
PREFIX = "enc:"


class SecretBox:
    """Encrypts and decrypts short secrets with the configured keys."""

    def __init__(self, keys: str) -> None:
        #: The first key, which encrypts; links and identifiers derive their keys from it.
        self.key = keys.split(",")[0].strip()
        #: Names the key without revealing it.
        self.key_id = hashlib.sha256(self.key.encode()).hexdigest()
        try:
            self._fernet = MultiFernet([Fernet(key.strip()) for key in keys.split(",") if key.strip()])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"SHIPCAST_SECRET_KEY: not a Fernet key (32 url-safe base64 bytes): {exc}") from None
        self.decrypt = lru_cache(maxsize=65536)(self._decrypt)

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def _decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise ConfigError("a stored secret is not encrypted; re-apply the partner to encrypt it")
        try:
            return self._fernet.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise ConfigError("a stored secret cannot be decrypted: SHIPCAST_SECRET_KEY is not the key "
                              "it was encrypted with (list the old key after the new one)") from None


def _key_from_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        pass
    else:
        if mode & 0o077:  # a key anyone else on the machine reads is no secret
            raise ConfigError(f"{path}: the secret key file is readable by other users "
                              f"(mode {mode & 0o777:o}); make it private with: chmod 600 {path}")
        return path.read_text().strip()
    key = Fernet.generate_key().decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning("SHIPCAST_SECRET_KEY is not set: generated a key into %s; keep it, or set the variable", path)
    return key


def secret_box(settings: Settings) -> SecretBox:
    """The box for these settings' key (one per key, shared by the process)."""
    return _box(settings.secret_key or _key_from_file(Path(settings.secret_key_file)))


@lru_cache(maxsize=8)
def _box(keys: str) -> SecretBox:
    return SecretBox(keys)
