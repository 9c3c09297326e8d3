"""What deployments achieved (GOVERNANCE G11), read from devices' audit logs after each is verified."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.audit import verify_chain, verify_log
from edge.deployment import Effectiveness, Tally
from edge.trust.keys import ed25519_public
from provisioning.fleet import Fleet


@dataclass(frozen=True)
class AuditSource:
    device_id: str
    log: Path  # the device's audit.jsonl; checkpoints.jsonl beside it is checked when present


def device_tally(fleet: Fleet, source: AuditSource) -> dict[str, Tally]:
    """One device's figures per deployment, from a log verified against its signed checkpoints."""
    raw = source.log.read_bytes()
    cps_file = source.log.with_name("checkpoints.jsonl")
    checkpoints = [c for c in cps_file.read_bytes().split(b"\n") if c] if cps_file.exists() else []
    key = ed25519_public(fleet.device(source.device_id).ed25519)
    verify_log(raw, str(source.log), key, checkpoints)
    counts = Effectiveness()
    counts.restore(verify_chain(raw, str(source.log)))
    return counts.snapshot()


def deployment_report(fleet: Fleet, sources: Sequence[AuditSource]) -> dict[str, Tally]:
    """Figures per deployment summed over devices (each device's log is its own record)."""
    total: dict[str, Tally] = {}
    for source in sources:
        for dep, t in device_tally(fleet, source).items():
            s = total.get(dep, Tally())
            total[dep] = Tally(s.faces_seen + t.faces_seen, s.alerts + t.alerts, s.confirmed + t.confirmed,
                               s.dismissed + t.dismissed)
    return dict(sorted(total.items()))
