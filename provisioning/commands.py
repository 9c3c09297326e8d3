"""The fleet side of commands: sign with the fleet's command key(s), publish to devices, collect results."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from edge.events.commands import command_body
from edge.trust.root import sign_document
from edge.trust.times import now
from provisioning.fleet import Fleet, FleetError

DEFAULT_COMMAND_LIFETIME = timedelta(days=1)


def sign_command(fleet: Fleet, device_id: str, verb: str, args: Mapping[str, Any],
                 lifetime: timedelta = DEFAULT_COMMAND_LIFETIME,
                 issued: datetime | None = None) -> tuple[str, bytes]:
    """(command_id, signed envelope) for one device, issued now (or at `issued`, for a device whose clock a
    test fixes); the device must be registered and active."""
    device = fleet.device(device_id)
    if device.status != "active":
        raise FleetError(f"device {device_id!r} is {device.status}; no commands for it")
    keys = [fleet.read_key(p) for p in fleet.key_files("command")]
    root = fleet.root()
    if len(keys) < root.roles["command"].threshold:
        raise FleetError(f"{len(keys)} command key(s) at hand, root v{root.version} needs "
                         f"{root.roles['command'].threshold}")
    body = command_body(fleet.name, device_id, verb, args, issued or now(), lifetime)
    return str(body["command_id"]), sign_document(body, keys)
