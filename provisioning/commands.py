"""The fleet side of commands: sign with the fleet's command key(s), publish to devices, collect results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.events.commands import command_body, signing_role
from edge.trust.keys import key_id
from edge.trust.root import sign_document
from edge.trust.times import now
from provisioning.fleet import Fleet, FleetError

DEFAULT_COMMAND_LIFETIME = timedelta(days=1)


def sign_command(fleet: Fleet, device_id: str, verb: str, args: Mapping[str, Any],
                 lifetime: timedelta = DEFAULT_COMMAND_LIFETIME,
                 issued: datetime | None = None,
                 keys: Sequence[Ed25519PrivateKey] | None = None,
                 root_version: int | None = None) -> tuple[str, bytes]:
    """(command_id, signed envelope) for one device, issued now (or at `issued`, for a device whose clock a
    test fixes); the device must be registered and active. Signed by the keys of the verb's role
    (`signing_role`: a review by the review keys): those in F/keys, or `keys` (the console's review key).

    `root_version`: the root the device trusts (its state topic reports it, detail.root.version), when it
    may be behind the fleet's. The role and threshold are then those of that root, so a device still on a
    root made before the review role gets a review signed by the command keys; only keys that both that root
    and the fleet's current one list sign (a key revoked since is never used). Without it, the fleet's
    current root decides, and a device behind it refuses a review whose role differs (docs/trust.md)."""
    device = fleet.device(device_id)
    if device.status != "active":
        raise FleetError(f"device {device_id!r} is {device.status}; no commands for it")
    current = fleet.root()
    root = current if root_version is None else fleet.root(root_version)
    role = signing_role(verb, root)
    if keys is None:
        keys = [fleet.read_key(p) for p in fleet.key_files(role)]
    keys = [k for k in keys if key_id(k.public_key()) in root.roles[role].keyids
            and key_id(k.public_key()) in current.roles[role].keyids]
    if len(keys) < root.roles[role].threshold:
        raise FleetError(f"{len(keys)} {role} key(s) at hand, root v{root.version} needs "
                         f"{root.roles[role].threshold} to sign a {verb} command")
    body = command_body(fleet.name, device_id, verb, args, issued or now(), lifetime)
    return str(body["command_id"]), sign_document(body, keys)
