"""When and where the node may match: only inside the signed deployment window, only for the cameras the
deployment lists, only while the shard is unexpired. Outside, frames are dropped before detection. And what
each deployment achieved: faces seen, alerts, confirmed, dismissed."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.audit import AuditEntry
from edge.trust.times import format_time
from edge.watchlist.loader import AcceptedShard
from edge.watchlist.store import ActiveWatchList


@dataclass(frozen=True)
class Admission:
    """Matching is allowed for this frame, against this shard, at this threshold."""

    shard: AcceptedShard
    threshold: float


@dataclass(frozen=True)
class Refusal:
    """Matching is not allowed; `reason` is what the state topic and STATUS say."""

    code: str  # no-shard | before-window | after-window | camera-not-listed
    reason: str


class DeploymentGate:
    """Asks the watch list in force whether this camera may match now."""

    def __init__(self, watchlist: ActiveWatchList, camera_id: str):
        self.watchlist = watchlist
        self.camera_id = camera_id

    def admit(self, now: datetime) -> Admission | Refusal:
        shard = self.watchlist.current(now)  # an expired shard is wiped here (fail closed)
        if shard is None:
            return Refusal("no-shard", "no watch list in force (none loaded, or it expired)")
        dep = shard.manifest.deployment
        if now < dep.start:
            return Refusal("before-window", f"deployment {dep.id} starts {format_time(dep.start)}")
        if now >= dep.end:
            return Refusal("after-window", f"deployment {dep.id} ended {format_time(dep.end)}")
        if self.camera_id not in dep.cameras:
            return Refusal("camera-not-listed", f"camera {self.camera_id!r} is not one of deployment {dep.id}'s "
                                                f"cameras ({', '.join(dep.cameras)})")
        # the loader refused any shard whose threshold is below the model's floor
        return Admission(shard, dep.threshold)


class UnknownAlertError(Exception):
    """A review names an event this node never alerted on (names the event id)."""


@dataclass(frozen=True)
class Tally:
    """One deployment's effectiveness figures (GOVERNANCE G11): counts only, never a face."""

    faces_seen: int = 0
    alerts: int = 0
    confirmed: int = 0
    dismissed: int = 0

    @property
    def unreviewed(self) -> int:
        return self.alerts - self.confirmed - self.dismissed

    def to_json(self) -> dict[str, int]:
        return {"faces_seen": self.faces_seen, "alerts": self.alerts, "confirmed": self.confirmed,
                "dismissed": self.dismissed}


class Effectiveness:
    """Faces seen, alerts, confirmed and dismissed per deployment, for the state topic and the audit log.

    Alerts and reviews are rebuilt exactly from the audit log at start (each has its own record); faces
    seen from the last `effectiveness` record, written with every checkpoint, so a crash loses at most the
    faces counted since then. A second review of the same alert replaces the first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faces: dict[str, int] = {}
        self._alerts: dict[str, str] = {}  # event id -> deployment id
        self._outcomes: dict[str, str] = {}  # event id -> confirmed | dismissed

    def seen(self, deployment_id: str, faces: int) -> None:
        if faces:
            with self._lock:
                self._faces[deployment_id] = self._faces.get(deployment_id, 0) + faces

    def alert(self, deployment_id: str, event_id: str) -> None:
        with self._lock:
            self._alerts[event_id] = deployment_id

    def alerted(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._alerts

    def review(self, event_id: str, outcome: str) -> str:
        """Record an outcome; returns the alert's deployment id."""
        with self._lock:
            deployment_id = self._alerts.get(event_id)
            if deployment_id is None:
                raise UnknownAlertError(f"event {event_id}: this node raised no alert with that id")
            self._outcomes[event_id] = outcome
            return deployment_id

    def snapshot(self) -> dict[str, Tally]:
        with self._lock:
            deployments = set(self._faces) | set(self._alerts.values())
            alerts: dict[str, int] = {}
            outcomes: dict[tuple[str, str], int] = {}
            for event_id, dep in self._alerts.items():
                alerts[dep] = alerts.get(dep, 0) + 1
                outcome = self._outcomes.get(event_id)
                if outcome is not None:
                    outcomes[dep, outcome] = outcomes.get((dep, outcome), 0) + 1
            return {d: Tally(self._faces.get(d, 0), alerts.get(d, 0), outcomes.get((d, "confirmed"), 0),
                             outcomes.get((d, "dismissed"), 0)) for d in sorted(deployments)}

    def record(self) -> dict[str, Any]:
        """The audit record of the current figures."""
        return {"deployments": [{"deployment_id": d, **t.to_json()} for d, t in self.snapshot().items()]}

    def restore(self, entries: Iterable[AuditEntry]) -> None:
        for e in entries:
            if e.kind == "alert":
                self.alert(str(e.data["deployment_id"]), str(e.data["event_id"]))
            elif e.kind == "review" and e.data.get("event_id") in self._alerts:
                self.review(str(e.data["event_id"]), str(e.data["outcome"]))
            elif e.kind == "effectiveness":
                with self._lock:
                    for d in e.data.get("deployments", []):
                        self._faces[str(d["deployment_id"])] = int(d["faces_seen"])
