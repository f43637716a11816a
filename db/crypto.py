"""Encryption at rest and keyed lookup hashes.

Fernet via MultiFernet: the first key encrypts, every key decrypts, so keys rotate without
downtime (``voxmem keys rotate`` re-encrypts under the first key). Lookup hashes (API tokens,
caller numbers) use HMAC-SHA256 under a separate lookup key that is never rotated with the
Fernet keys, because a hash cannot be recomputed without the original value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from db.settings import Settings, split_csv


class CryptoNotConfiguredError(RuntimeError):
    pass


@dataclass(frozen=True)
class Keyring:
    fernet: MultiFernet
    primary: Fernet
    key_count: int
    lookup_key: bytes

    def encrypt(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        return self.fernet.decrypt(token.encode("ascii")).decode("utf-8")

    def encrypt_bytes(self, data: bytes) -> bytes:
        return self.fernet.encrypt(data)

    def decrypt_bytes(self, token: bytes) -> bytes:
        return self.fernet.decrypt(token)

    def rotate(self, token: str) -> str:
        """Re-encrypt under the primary key (no-op in meaning, new ciphertext)."""
        return self.fernet.rotate(token.encode("ascii")).decode("ascii")

    def is_primary(self, token: str) -> bool:
        try:
            self.primary.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def lookup_hash(self, value: str) -> str:
        return hmac.new(self.lookup_key, value.encode("utf-8"), hashlib.sha256).hexdigest()


_keyring: Keyring | None = None


def _write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not overwrite each other's fresh key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content + "\n")


def ensure_key_files(settings: Settings) -> list[Path]:
    """Create the Fernet key file and the lookup key file when no key is configured.

    Returns the files created. Called by ``voxmem migrate``.
    """
    created: list[Path] = []
    if not settings.encryption_key_list and not settings.key_file.exists():
        try:
            _write_secret_file(settings.key_file, Fernet.generate_key().decode("ascii"))
            created.append(settings.key_file)
        except FileExistsError:
            pass
    if not settings.lookup_key and not settings.lookup_key_file.exists():
        try:
            _write_secret_file(settings.lookup_key_file, secrets.token_urlsafe(32))
            created.append(settings.lookup_key_file)
        except FileExistsError:
            pass
    return created


def load_keyring(settings: Settings) -> Keyring:
    keys = settings.encryption_key_list
    if not keys:
        if not settings.key_file.exists():
            raise CryptoNotConfiguredError(
                f"no VOXMEM_ENCRYPTION_KEYS and no key file at {settings.key_file}; "
                "run `voxmem migrate` first"
            )
        keys = split_csv(settings.key_file.read_text().strip())
    lookup = settings.lookup_key
    if not lookup:
        if not settings.lookup_key_file.exists():
            raise CryptoNotConfiguredError(
                f"no VOXMEM_LOOKUP_KEY and no key file at {settings.lookup_key_file}; "
                "run `voxmem migrate` first"
            )
        lookup = settings.lookup_key_file.read_text().strip()
    fernets = [Fernet(k.encode("ascii")) for k in keys]
    return Keyring(
        fernet=MultiFernet(fernets),
        primary=fernets[0],
        key_count=len(fernets),
        lookup_key=lookup.encode("utf-8"),
    )


def configure(keyring: Keyring) -> None:
    """Install the process-wide keyring used by the encrypted column types."""
    global _keyring
    _keyring = keyring


def keyring() -> Keyring:
    if _keyring is None:
        raise CryptoNotConfiguredError("encryption keyring not configured in this process")
    return _keyring


class EncryptedText(TypeDecorator[str]):
    """A text column stored as Fernet ciphertext.

    The ORM sees plaintext; the database file only ever holds ciphertext. The type is global
    (not per-engine) because SQLAlchemy types cannot carry per-session state; the keyring is
    installed once per process by ``configure``.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return keyring().encrypt(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return keyring().decrypt(str(value))


# Marks a compressed plaintext. A JSON body never starts with NUL, so rows written before
# compression (Fernet over the JSON itself) still read back unchanged.
_DEFLATED = b"\x00z"


class CompressedEncryptedText(EncryptedText):
    """``EncryptedText`` whose plaintext is deflated first: for large, repetitive JSON (the
    webhook bodies the queue keeps).

    A 12.6 KB post-call body becomes a 4.4 KB token instead of 16.9 KB: the intake writes
    ~7 database pages per event instead of ~11 (five overflow pages of payload become one),
    the checkpoint copies a quarter of the bytes into the database, and the queue table takes
    a quarter of the disk. Level 1 costs ~44 µs and saves ~36 µs of Fernet on the smaller
    input. Compressing before encrypting lets the token's length depend on the body's
    redundancy; a reader of the file learns no more than the body's compressibility, which
    the caller controls only for their own call.
    """

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        packed = _DEFLATED + zlib.compress(str(value).encode("utf-8"), 1)
        return keyring().encrypt_bytes(packed).decode("ascii")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        plain = keyring().decrypt_bytes(str(value).encode("ascii"))
        if plain.startswith(_DEFLATED):
            plain = zlib.decompress(plain[len(_DEFLATED) :])
        return plain.decode("utf-8")
