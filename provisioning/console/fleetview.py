"""The fleet as the console sees it: each device's last verified state, and the deployment report.

A device's state comes from its retained, signed `state` message (online, or offline from its last will) with
whatever the node reports in it (fps, camera, shard in force, deployment window, effectiveness counters, vault
figures). The deployment report counts the console's own alerts and decisions per deployment and, for each device
audit log given with --audit, the figures of that log after it is verified (provisioning.reports): a log that does
not verify is refused, not reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.audit import AuditError
from edge.events.messages import AUDIT_CHECKPOINT, STATE
from provisioning.console.store import ConsoleError
from provisioning.fleet import Fleet, FleetError
from provisioning.reports import AuditSource, deployment_report

DEVICE_FIGURES = ("faces_seen", "alerts", "confirmed", "dismissed", "unreviewed")


class AuditReportError(ConsoleError):
    """A device audit log given with --audit cannot be read or does not verify (names the log)."""


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    online: bool | None  # None: nothing heard from it since the console started (no retained state either)
    last_seen: datetime | None  # when the console received its latest verified state
    state: Mapping[str, Any]  # the device's last verified state body as published (fps, camera, shard...)


@dataclass(frozen=True)
class AuditHead:
    """A device's latest signed audit checkpoint seen on the broker (the off-device copy of its log's head)."""

    seq: int
    head: str
    ts: str


class FleetView:
    """Devices' last state and checkpoints (fed by the ingest); thread-safe."""

    def __init__(self, fleet: Fleet, clock: Callable[[], datetime], audit_logs: Sequence[AuditSource] = ()):
        self.fleet = fleet
        self.clock = clock
        self.audit_logs = tuple(audit_logs)
        self._lock = threading.Lock()
        self._states: dict[str, tuple[datetime, dict[str, Any]]] = {}
        self._heads: dict[str, AuditHead] = {}

    def heard(self, device_id: str, kind: str, body: Mapping[str, Any]) -> None:
        """A verified state or audit checkpoint of a device."""
        with self._lock:
            if kind == STATE:
                self._states[device_id] = (self.clock(), dict(body))
            elif kind == AUDIT_CHECKPOINT:
                self._heads[device_id] = AuditHead(int(body["seq"]), str(body["head"]), str(body["ts"]))

    def devices(self) -> list[DeviceView]:
        """Every registered device and every device heard from, by id."""
        registered = {p.stem for p in (self.fleet.dir / "devices").glob("*.json")}
        with self._lock:
            states = dict(self._states)
        out = []
        for device_id in sorted(registered | set(states)):
            seen = states.get(device_id)
            if seen is None:
                out.append(DeviceView(device_id, None, None, {}))
            else:
                out.append(DeviceView(device_id, seen[1].get("status") == "online", seen[0], seen[1]))
        return out

    def audit_heads(self) -> dict[str, AuditHead]:
        with self._lock:
            return dict(self._heads)

    def report(self, console_counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
        """deployment -> the console's alerts/confirmed/dismissed/unreviewed, and with --audit logs the devices'
        verified figures as device_faces_seen, device_alerts, ... (the node's own record of the same)."""
        out: dict[str, dict[str, int]] = {d: dict(c) for d, c in console_counts.items()}
        if self.audit_logs:
            try:
                figures = deployment_report(self.fleet, self.audit_logs)
            except (AuditError, FleetError, OSError) as exc:
                logs = ", ".join(f"{s.device_id}={s.log}" for s in self.audit_logs)
                raise AuditReportError(f"deployment report from {logs}: refused ({type(exc).__name__}: {exc})") \
                    from None
            for dep, t in figures.items():
                row = out.setdefault(dep, {"alerts": 0, "confirmed": 0, "dismissed": 0, "unreviewed": 0})
                values = {**t.to_json(), "unreviewed": t.unreviewed}
                row.update({f"device_{k}": int(values[k]) for k in DEVICE_FIGURES})
        return dict(sorted(out.items()))
