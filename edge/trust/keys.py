"""Ed25519 and X25519 key files and key ids.

Private keys are PKCS#8 PEM: encrypted with a passphrase for fleet keys, plain (mode 0600) on devices.
A key id is the sha256 of the raw public key, in hex, as in TUF.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


class KeyFileError(Exception):
    """A key file is missing, unreadable, of the wrong type, or the passphrase does not open it."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | X25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def ed25519_public(hex_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


def x25519_public(hex_key: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


def write_private(path: Path, key: Ed25519PrivateKey | X25519PrivateKey,
                  passphrase: bytes | None = None) -> None:
    """Write a new private key file, mode 0600; an existing file is never overwritten."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(path, "exists already; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def _read_private(path: Path, passphrase: bytes | None) -> object:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        raise KeyFileError(path, "is encrypted: a passphrase is needed" if passphrase is None
                           else "is not encrypted, but a passphrase was given") from None
    except ValueError:
        raise KeyFileError(path, "wrong passphrase, or not a PEM private key") from None


def read_ed25519(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    key = _read_private(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "is not an Ed25519 private key")
    return key


def read_x25519(path: Path, passphrase: bytes | None = None) -> X25519PrivateKey:
    key = _read_private(path, passphrase)
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(path, "is not an X25519 private key")
    return key
