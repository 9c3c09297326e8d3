"""The fleet directory: offline root keys, online signing keys, the signed roots, registered devices.

    F/fleet.json          fleet name, next shard version, current root version
    F/root/root.N.json    every signed root version (devices need the chain to rotate)
    F/keys/root-K.pem     one file per root-key custodian (encrypted PKCS#8)
    F/keys/shard-K.pem    online shard-signing key(s); F/keys/command-K.pem likewise
    F/keys/review-K.pem   the keys that sign review commands and nothing else (the officer's console holds one)
    F/devices/ID.json     a device's public identity and status
    F/deployments/ID.json what the latest shard of a deployment says (provisioning.deployments)
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fsutil import write_atomic
from edge.identity import check_device_id
from edge.trust.keys import KeyFileError, key_id, read_ed25519, write_private, x25519_public
from edge.trust.root import ROLES, Role, Root, TrustedRoot, sign_document
from edge.trust.times import now

PASSPHRASE_ENV = "EDGE_FLEET_PASSPHRASE"
ROOT_LIFETIME = timedelta(days=365 * 2)


class FleetError(Exception):
    """A fleet operation cannot proceed; the message names the file, key or device at fault."""


def passphrase(what: str) -> bytes:
    """From $EDGE_FLEET_PASSPHRASE, else a prompt on the terminal."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise FleetError(f"a passphrase is needed for {what}: set {PASSPHRASE_ENV} or run on a terminal")
    return getpass.getpass(f"Passphrase for {what}: ").encode()


@dataclass(frozen=True)
class Device:
    device_id: str
    x25519: str
    ed25519: str
    status: str  # "active" | "revoked"


class Fleet:
    """One fleet directory and the operations on it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.meta_path = directory / "fleet.json"

    # -- metadata --
    def meta(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.meta_path.read_text())
            return doc
        except FileNotFoundError:
            raise FleetError(f"{self.meta_path}: not a fleet directory (run `edge-fleet init`)") from None
        except (OSError, ValueError) as exc:
            raise FleetError(f"{self.meta_path}: unreadable ({exc})") from None

    def _save_meta(self, doc: dict[str, Any]) -> None:
        write_atomic(self.meta_path, json.dumps(doc, indent=1).encode() + b"\n", 0o644)

    @property
    def name(self) -> str:
        return str(self.meta()["fleet"])

    # -- keys and roots --
    def _new_key(self, role: str) -> tuple[Path, Ed25519PrivateKey]:
        keys = self.dir / "keys"
        n = 1
        while (keys / f"{role}-{n}.pem").exists():
            n += 1
        path = keys / f"{role}-{n}.pem"
        key = Ed25519PrivateKey.generate()
        write_private(path, key, passphrase(str(path)))
        return path, key

    def read_key(self, path: Path) -> Ed25519PrivateKey:
        try:
            return read_ed25519(path, passphrase(str(path)))
        except KeyFileError as exc:
            raise FleetError(str(exc)) from None

    def root_path(self, version: int) -> Path:
        return self.dir / "root" / f"root.{version}.json"

    def root_bytes(self, version: int | None = None) -> bytes:
        v = version or int(self.meta()["root_version"])
        try:
            return self.root_path(v).read_bytes()
        except FileNotFoundError:
            raise FleetError(f"{self.root_path(v)}: missing") from None

    def root(self, version: int | None = None) -> Root:
        """The fleet's current root (or an earlier version, e.g. the one a device still trusts), verified along
        the chain from version 1."""
        current = int(self.meta()["root_version"])
        last = current if version is None else version
        if not 1 <= last <= current:
            raise FleetError(f"root version {last}: this fleet has roots v1..v{current}")
        trusted = TrustedRoot.bootstrap(self.root_bytes(1))
        for v in range(2, last + 1):
            trusted.update(self.root_bytes(v))
        return trusted.root

    def key_files(self, role: str) -> list[Path]:
        """This fleet's key files of a role that the current root still lists (none for a role it lacks)."""
        root = self.root()
        if not root.has_role(role):
            return []
        out = []
        for path in sorted((self.dir / "keys").glob(f"{role}-*.pem")):
            key = self.read_key(path)
            if key_id(key.public_key()) in root.roles[role].keyids:
                out.append(path)
        return out

    def init(self, fleet: str, root_keys: int = 3, root_threshold: int = 2) -> Root:
        if self.meta_path.exists():
            raise FleetError(f"{self.meta_path}: a fleet exists here already")
        if not 1 <= root_threshold <= root_keys:
            raise FleetError(f"root threshold {root_threshold} must be between 1 and {root_keys}")
        self.dir.mkdir(parents=True, exist_ok=True)
        roots = [self._new_key("root")[1] for _ in range(root_keys)]
        shard = self._new_key("shard")[1]
        command = self._new_key("command")[1]
        review = self._new_key("review")[1]
        keys = {key_id(k.public_key()): k.public_key() for k in [*roots, shard, command, review]}
        roles = {"root": Role(tuple(key_id(k.public_key()) for k in roots), root_threshold),
                 "shard": Role((key_id(shard.public_key()),), 1),
                 "command": Role((key_id(command.public_key()),), 1),
                 "review": Role((key_id(review.public_key()),), 1)}
        root = Root(fleet, 1, now() + ROOT_LIFETIME, keys, roles)
        write_atomic(self.root_path(1), sign_document(root.to_body(), roots), 0o644)
        self._save_meta({"fleet": fleet, "root_version": 1, "next_shard_version": 1})
        return root

    def _publish_root(self, new: Root, signers: Sequence[Ed25519PrivateKey]) -> Root:
        data = sign_document(new.to_body(), signers)
        current = TrustedRoot.bootstrap(self.root_bytes(1))
        for v in range(2, new.version):
            current.update(self.root_bytes(v))
        current.update(data)  # the same checks a device will make, before anything is written
        write_atomic(self.root_path(new.version), data, 0o644)
        meta = self.meta()
        meta["root_version"] = new.version
        self._save_meta(meta)
        return new

    def _root_signers(self, root: Root, files: Sequence[Path] | None) -> list[Ed25519PrivateKey]:
        paths = list(files) if files else sorted((self.dir / "keys").glob("root-*.pem"))
        keys = [k for k in (self.read_key(p) for p in paths)
                if key_id(k.public_key()) in root.roles["root"].keyids]
        if len(keys) < root.roles["root"].threshold:
            raise FleetError(f"{len(keys)} root key(s) at hand, root v{root.version} needs "
                             f"{root.roles['root'].threshold}")
        return keys

    def add_key(self, role: str, root_key_files: Sequence[Path] | None = None) -> tuple[Path, Root]:
        """A new online key for a role (shard, command or review), published in root v+1. The first review key
        of a fleet made before the review role creates the role (threshold 1): from then on only review keys
        sign reviews (docs/trust.md)."""
        if role not in ROLES or role == "root":
            raise FleetError(f"role {role!r}: expected one of {', '.join(r for r in ROLES if r != 'root')}")
        root = self.root()
        signers = self._root_signers(root, root_key_files)
        path, key = self._new_key(role)
        kid = key_id(key.public_key())
        r = root.roles.get(role, Role((), 1))
        roles = {**root.roles, role: Role((*r.keyids, kid), r.threshold)}
        new = Root(root.fleet, root.version + 1, now() + ROOT_LIFETIME,
                   {**root.keys, kid: key.public_key()}, roles)
        return path, self._publish_root(new, signers)

    def set_threshold(self, role: str, threshold: int, root_key_files: Sequence[Path] | None = None) -> Root:
        """How many of a role's keys must sign (shard, command or review), published in root v+1."""
        if role not in ROLES or role == "root":
            raise FleetError(f"role {role!r}: expected one of {', '.join(r for r in ROLES if r != 'root')} (root "
                             "keys and their threshold change with `edge-fleet root rotate`)")
        root = self.root()
        if not root.has_role(role):
            raise FleetError(f"root v{root.version} has no {role} role; add a {role} key first")
        r = root.roles[role]
        if not 1 <= threshold <= len(r.keyids):
            raise FleetError(f"{role} threshold {threshold} must be between 1 and the role's {len(r.keyids)} key(s); "
                             f"add {role} keys first")
        new = Root(root.fleet, root.version + 1, now() + ROOT_LIFETIME, root.keys,
                   {**root.roles, role: Role(r.keyids, threshold)})
        return self._publish_root(new, self._root_signers(root, root_key_files))

    def revoke_key(self, kid_prefix: str, root_key_files: Sequence[Path] | None = None) -> Root:
        """Remove an online key from its role in root v+1 (TUF revocation)."""
        root = self.root()
        matches = [k for k in root.keys if k.startswith(kid_prefix)]
        if len(matches) != 1:
            raise FleetError(f"key id {kid_prefix!r} matches {len(matches)} keys of root v{root.version}")
        kid = matches[0]
        roles = dict(root.roles)
        for name, r in root.roles.items():
            if kid in r.keyids:
                if name == "root":
                    raise FleetError("root keys are replaced with `edge-fleet root rotate`, not revoked")
                if len(r.keyids) - 1 < r.threshold:
                    raise FleetError(f"revoking {kid[:16]}... would leave role {name} below its threshold; "
                                     f"add a new {name} key first")
                roles[name] = Role(tuple(k for k in r.keyids if k != kid), r.threshold)
        used = {k for r in roles.values() for k in r.keyids}
        new = Root(root.fleet, root.version + 1, now() + ROOT_LIFETIME,
                   {k: v for k, v in root.keys.items() if k in used}, roles)
        return self._publish_root(new, self._root_signers(root, root_key_files))

    def rotate_root(self, new_keys: int, threshold: int,
                    root_key_files: Sequence[Path] | None = None) -> Root:
        """Replace the root keys: root v+1 signed by the old threshold and by the new keys."""
        root = self.root()
        old = self._root_signers(root, root_key_files)
        fresh = [self._new_key("root")[1] for _ in range(new_keys)]
        if not 1 <= threshold <= new_keys:
            raise FleetError(f"root threshold {threshold} must be between 1 and {new_keys}")
        roles = {**root.roles, "root": Role(tuple(key_id(k.public_key()) for k in fresh), threshold)}
        used = {k for r in roles.values() for k in r.keyids}
        keys = {**{k: v for k, v in root.keys.items() if k in used},
                **{key_id(k.public_key()): k.public_key() for k in fresh}}
        new = Root(root.fleet, root.version + 1, now() + ROOT_LIFETIME, keys, roles)
        return self._publish_root(new, [*old, *fresh])

    def next_shard_version(self) -> int:
        """Shard versions are fleet-wide and only go up, so a node's single floor stops every rollback."""
        meta = self.meta()
        v = int(meta["next_shard_version"])
        meta["next_shard_version"] = v + 1
        self._save_meta(meta)
        return v

    # -- devices --
    def device_path(self, device_id: str) -> Path:
        return self.dir / "devices" / f"{check_device_id(device_id)}.json"

    def add_device(self, device_id: str, public: dict[str, Any], source: Path) -> Device:
        if public.get("device_id") != device_id:
            raise FleetError(f"{source}: device_id {public.get('device_id')!r} is not {device_id!r}")
        for field in ("x25519", "ed25519"):
            value = public.get(field)
            if not isinstance(value, str) or len(value) != 64:
                raise FleetError(f"{source}: {field}: expected 64 hex digits")
        try:
            x25519_public(public["x25519"])
            bytes.fromhex(public["ed25519"])
        except ValueError as exc:
            raise FleetError(f"{source}: bad public key ({exc})") from None
        path = self.device_path(device_id)
        if path.exists():
            raise FleetError(f"{path}: device {device_id} is registered already")
        device = Device(device_id, public["x25519"], public["ed25519"], "active")
        write_atomic(path, json.dumps(device.__dict__, indent=1).encode() + b"\n", 0o644)
        return device

    def device(self, device_id: str) -> Device:
        path = self.device_path(device_id)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"device {device_id!r} is not registered ({path})") from None
        return Device(**doc)

    def revoke_device(self, device_id: str) -> Device:
        d = self.device(device_id)
        revoked = Device(d.device_id, d.x25519, d.ed25519, "revoked")
        write_atomic(self.device_path(device_id),
                     json.dumps(revoked.__dict__, indent=1).encode() + b"\n", 0o644)
        return revoked
