"""Operators (the console officers who review alerts) and admins: their keys and broker certificates.

    F/operators/NAME.pem    the operator's X25519 evidence key (encrypted PKCS#8): opens sealed crops
    F/operators/NAME.json   its public half, which nodes are configured with
    F/clients/CN.key/.crt   TLS client key (encrypted) and certificate for the broker (CN = kind.NAME)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.events.link import BrokerSettings
from edge.fsutil import write_atomic
from edge.tls import key_pem, new_tls_key
from edge.trust.keys import KeyFileError, key_id, raw_public, read_x25519, write_private
from provisioning.ca import FleetCA, client_cn
from provisioning.fleet import Fleet, FleetError


@dataclass(frozen=True)
class Operator:
    name: str
    x25519: str
    key_id: str


def client_paths(fleet: Fleet, cn: str) -> tuple[Path, Path]:
    d = fleet.dir / "clients"
    return d / f"{cn}.key", d / f"{cn}.crt"


def issue_person(fleet: Fleet, ca: FleetCA, kind: str, name: str, passphrase: bytes) -> Path:
    """A TLS client key (encrypted with the fleet passphrase) and certificate for an admin or operator."""
    cn = client_cn(kind, name)
    key_path, crt_path = client_paths(fleet, cn)
    if key_path.exists():
        raise FleetError(f"{key_path}: exists already")
    key = new_tls_key()
    write_atomic(key_path, key_pem(key, passphrase), 0o600)
    ca.issue_client(kind, name, key.public_key(), crt_path)
    return crt_path


def add_operator(fleet: Fleet, ca: FleetCA, name: str, passphrase: bytes) -> Operator:
    path = fleet.dir / "operators" / f"{name}.pem"
    client_cn("operator", name)
    if path.exists():
        raise FleetError(f"{path}: operator {name!r} exists already")
    key = X25519PrivateKey.generate()
    write_private(path, key, passphrase)
    op = Operator(name, raw_public(key.public_key()).hex(), key_id(key.public_key()))
    write_atomic(path.with_suffix(".json"), json.dumps(op.__dict__, indent=1).encode() + b"\n", 0o644)
    issue_person(fleet, ca, "operator", name, passphrase)
    return op


def operator_key(path: Path, passphrase: bytes) -> X25519PrivateKey:
    try:
        return read_x25519(path, passphrase)
    except KeyFileError as exc:
        raise FleetError(str(exc)) from None


def people(fleet: Fleet, kind: str) -> list[str]:
    """Names of the admins or operators that have broker certificates."""
    prefix = f"{kind}."
    return sorted(p.stem[len(prefix):] for p in (fleet.dir / "clients").glob(f"{prefix}*.crt"))


def fleet_settings(fleet: Fleet, broker_url: str, kind: str, name: str | None, passphrase: bytes) -> BrokerSettings:
    """Connection settings for a fleet tool acting as one admin or operator."""
    names = people(fleet, kind)
    if name is None:
        if len(names) != 1:
            raise FleetError(f"{len(names)} {kind}s have certificates ({', '.join(names) or 'none'}); "
                             f"say which with --{kind}")
        name = names[0]
    cn = client_cn(kind, name)
    key_path, crt_path = client_paths(fleet, cn)
    if not crt_path.exists():
        raise FleetError(f"{crt_path}: no certificate for {cn} (run `edge-fleet cert issue {kind} {name}`)")
    host, port = BrokerSettings.parse_url(broker_url)
    return BrokerSettings(host, port, FleetCA(fleet.dir, passphrase).cert_path, crt_path, key_path,
                          key_password=passphrase.decode())
