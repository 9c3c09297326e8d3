"""The fleet as the console sees it: each device's last verified state, and the deployment report.

A device's state comes from its retained, signed `state` message (online, or offline from its last will) with
whatever the node reports in it (fps, camera, shard in force, deployment window, effectiveness counters, vault
figures). The deployment report counts the console's own alerts and decisions per deployment and, for each device
audit log given with --audit, the figures of that log after it is verified (provisioning.reports): a log that does
not verify is refused, not reported.

A signature says who sent a message, not that its fields are well formed: a state or checkpoint whose body is not
as its schema says (edge/events/schemas) is refused with MessageFormatError naming the field, and the ingest drops it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.audit import AuditError
from edge.events.messages import AUDIT_CHECKPOINT, STATE, MessageFormatError
from edge.trust.times import TimeFormatError, parse_time
from provisioning.console.store import ConsoleError
from provisioning.fleet import Fleet, FleetError
from provisioning.reports import AuditSource, deployment_report

DEVICE_FIGURES = ("faces_seen", "alerts", "confirmed", "dismissed", "unreviewed")
STATE_FIELDS = frozenset({"type", "schema", "device_id", "status", "ts", "boot_id", "detail"})
CHECKPOINT_FIELDS = frozenset({"type", "schema", "device_id", "seq", "head", "ts"})
EFFECTIVENESS_FIGURES = ("faces_seen", "alerts", "confirmed", "dismissed")
DETAIL_OBJECTS = ("vault", "outbox")  # objects when present, as the state schema says (the fleet page reads them)


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

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AuditHead:
        """A verified checkpoint body, its fields checked (MessageFormatError naming the field)."""
        _exact(body, CHECKPOINT_FIELDS, "audit checkpoint")
        seq, head = body["seq"], body["head"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise MessageFormatError("audit checkpoint: seq: expected an integer >= 0")
        if not isinstance(head, str) or len(head) != 64 or any(ch not in "0123456789abcdef" for ch in head):
            raise MessageFormatError("audit checkpoint: head: expected 64 lowercase hex digits")
        return cls(seq, head, _time(body, "audit checkpoint"))


def _exact(body: Mapping[str, Any], fields: frozenset[str], what: str) -> None:
    if set(body) != fields:
        missing, extra = sorted(fields - set(body)), sorted(set(body) - fields)
        raise MessageFormatError(f"{what}: " + "; ".join([*(["missing " + ", ".join(missing)] if missing else []),
                                                         *(["unexpected " + ", ".join(extra)] if extra else [])]))


def _time(body: Mapping[str, Any], what: str) -> str:
    try:
        parse_time(body["ts"])
    except (TimeFormatError, TypeError, ValueError):
        raise MessageFormatError(f"{what}: ts: expected YYYY-MM-DDTHH:MM:SSZ") from None
    return str(body["ts"])


def check_state(body: Mapping[str, Any]) -> dict[str, Any]:
    """A verified state body, its fields checked as far as the console reads them (MessageFormatError naming the
    field): status online/offline, detail an object whose effectiveness, vault and outbox are objects (the rest of
    detail is an open set: shown as it came)."""
    _exact(body, STATE_FIELDS, "state")
    if body["status"] not in ("online", "offline"):
        raise MessageFormatError("state: status: expected online or offline")
    _time(body, "state")
    if not isinstance(body["boot_id"], str):
        raise MessageFormatError("state: boot_id: expected a string")
    detail = body["detail"]
    if not isinstance(detail, dict):
        raise MessageFormatError("state: detail: expected an object")
    for name in DETAIL_OBJECTS:
        if name in detail and not isinstance(detail[name], dict):
            raise MessageFormatError(f"state: detail.{name}: expected an object")
    eff = detail.get("effectiveness", {})
    if not isinstance(eff, dict) or not all(
            isinstance(figures, dict) and all(isinstance(figures.get(k), int) and not isinstance(figures.get(k), bool)
                                              for k in EFFECTIVENESS_FIGURES) for figures in eff.values()):
        raise MessageFormatError("state: detail.effectiveness: expected {deployment: {"
                                 f"{', '.join(EFFECTIVENESS_FIGURES)}: integers}}}}")
    return dict(body)


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
        """A verified state or audit checkpoint of a device (MessageFormatError: its body is not well formed,
        and nothing changes)."""
        if kind == STATE:
            state = check_state(body)
            with self._lock:
                self._states[device_id] = (self.clock(), state)
        elif kind == AUDIT_CHECKPOINT:
            head = AuditHead.from_body(body)
            with self._lock:
                self._heads[device_id] = head

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
