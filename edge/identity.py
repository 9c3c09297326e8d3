"""The device's own keys: X25519 to receive shard keys, Ed25519 to sign what it sends.

Born on the device, never leave it; `edge-node keygen` creates them once (mode 0600) and prints only
the public identity, which the fleet registers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge.trust.keys import KeyFileError, raw_public, read_ed25519, read_x25519, write_private

DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")


class IdentityError(Exception):
    """The device identity is missing, incomplete or invalid."""


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    encryption_key: X25519PrivateKey
    signing_key: Ed25519PrivateKey

    def storage_key(self, purpose: str) -> bytes:
        """A 32-byte key for encrypting this device's own files at rest (outbox, evidence), derived from
        its X25519 key with HKDF so sealing the identity (systemd-creds, TPM) seals these too."""
        raw = self.encryption_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return HKDF(hashes.SHA256(), 32, salt=b"edge-storage/v1", info=purpose.encode()).derive(raw)

    def public(self) -> dict[str, Any]:
        return {"device_id": self.device_id,
                "x25519": raw_public(self.encryption_key.public_key()).hex(),
                "ed25519": raw_public(self.signing_key.public_key()).hex()}


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id):
        raise IdentityError(
            f"device id {device_id!r}: 1-63 of a-z, 0-9 and '-', starting with a letter or digit")
    return device_id


def _paths(state_dir: Path) -> tuple[Path, Path, Path]:
    d = state_dir / "identity"
    return d / "device.json", d / "x25519.pem", d / "ed25519.pem"


def create_identity(state_dir: Path, device_id: str) -> DeviceIdentity:
    """Generate the keys; refuses if any identity file exists already (keys are never overwritten)."""
    check_device_id(device_id)
    meta, xpath, epath = _paths(state_dir)
    existing = [p for p in (meta, xpath, epath) if p.exists()]
    if existing:
        raise IdentityError(f"{existing[0]}: exists already; refusing to overwrite the device's keys")
    meta.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident = DeviceIdentity(device_id, X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
    write_private(xpath, ident.encryption_key)
    write_private(epath, ident.signing_key)
    fd = os.open(meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(ident.public(), f, indent=1)
        f.write("\n")
    return ident


def load_identity(state_dir: Path) -> DeviceIdentity:
    meta, xpath, epath = _paths(state_dir)
    try:
        doc = json.loads(meta.read_text())
        device_id = check_device_id(doc["device_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{meta}: no usable device identity ({exc}); run `edge-node keygen`") from None
    try:
        ident = DeviceIdentity(device_id, read_x25519(xpath), read_ed25519(epath))
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from None
    if ident.public() != doc:
        raise IdentityError(f"{meta}: public keys do not match the key files beside it")
    return ident
