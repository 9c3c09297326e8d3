"""When and where the node may match: only inside the signed deployment window, only for the cameras the
deployment lists, only while the shard is unexpired. Outside, frames are dropped before detection. And what
each deployment achieved: faces seen, alerts, confirmed, dismissed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
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


Record = Callable[[str, dict[str, Any]], None]  # (audit kind, data): the node's audit log


class DeploymentUse:
    """The start and end of each use of a deployment on the record (G8), written where matching starts and
    stops (the inference thread, under the gate) so a deployment's `deployment-start` is durable before any
    alert under it. Thread-safe; a second end, or a start of the deployment already in use, writes nothing."""

    def __init__(self, record: Record, camera_id: str):
        self._record = record
        self.camera_id = camera_id
        self._lock = threading.Lock()
        self._in_use: str | None = None

    @property
    def in_use(self) -> str | None:
        with self._lock:
            return self._in_use

    def begin(self, shard: AcceptedShard) -> None:
        """Matching is about to start under this shard (a different deployment ends the current use)."""
        m = shard.manifest
        with self._lock:
            if self._in_use == m.deployment.id:
                return
            if self._in_use is not None:
                self._record("deployment-end", {"deployment_id": self._in_use, "reason": "shard replaced"})
            self._record("deployment-start", {"deployment_id": m.deployment.id, "camera_id": self.camera_id,
                                              "shard": {"id": m.shard_id, "version": m.version},
                                              "threshold": m.deployment.threshold})
            self._in_use = m.deployment.id

    def end(self, reason: str) -> None:
        """Matching has stopped: a refusal's code, or `node stopping`."""
        with self._lock:
            if self._in_use is None:
                return
            self._record("deployment-end", {"deployment_id": self._in_use, "reason": reason})
            self._in_use = None


UNCLEAN_STOP = "unclean-stop"  # the reason of a deployment-end written at start for a session that was killed


@dataclass(frozen=True)
class OpenUse:
    """A deployment-start with no deployment-end after it: the last session stopped without closing it."""

    deployment_id: str
    started_seq: int
    last_seq: int  # the last record of the log when it was found: the latest the use is known to have lasted
    last_ts: datetime

    def closing_record(self) -> dict[str, Any]:
        """The deployment-end that closes it, saying it was not closed cleanly."""
        return {"deployment_id": self.deployment_id, "reason": UNCLEAN_STOP, "started_seq": self.started_seq,
                "last_seq": self.last_seq, "last_ts": format_time(self.last_ts)}


def open_use(entries: Iterable[AuditEntry]) -> OpenUse | None:
    """The deployment use the log leaves open, if any."""
    start: AuditEntry | None = None
    last: AuditEntry | None = None
    for e in entries:
        last = e
        if e.kind == "deployment-start":
            start = e
        elif e.kind == "deployment-end":
            start = None
    if start is None or last is None:
        return None
    return OpenUse(str(start.data["deployment_id"]), start.seq, last.seq, last.ts)


class UnknownAlertError(Exception):
    """A review names an event this node never alerted on (names the event id)."""


@dataclass(frozen=True)
class RaisedAlert:
    """What a review of an alert is judged by: the deployment it was raised under and the distinct reviewers
    that deployment required then (None: its record predates the figure)."""

    deployment_id: str
    reviewers_required: int | None


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
    faces counted since then. A second review of the same alert replaces the first. Each alert also keeps the
    reviewers its deployment required when it was raised (in its `alert` record), so a later shard of that
    deployment, or a pruned `shard-accepted` record, does not change how its review is judged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faces: dict[str, int] = {}
        self._alerts: dict[str, str] = {}  # event id -> deployment id
        self._required: dict[str, int] = {}  # event id -> reviewers required when it was raised
        self._outcomes: dict[str, str] = {}  # event id -> confirmed | dismissed

    def seen(self, deployment_id: str, faces: int) -> None:
        if faces:
            with self._lock:
                self._faces[deployment_id] = self._faces.get(deployment_id, 0) + faces

    def alert(self, deployment_id: str, event_id: str, reviewers_required: int | None = None) -> None:
        with self._lock:
            self._alerts[event_id] = deployment_id
            if reviewers_required is not None:
                self._required[event_id] = reviewers_required

    def alerted(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._alerts

    def deployment_of(self, event_id: str) -> str:
        """The deployment an alert was raised under (UnknownAlertError if this node raised no such alert)."""
        return self.raised(event_id).deployment_id

    def raised(self, event_id: str) -> RaisedAlert:
        """The deployment an alert was raised under and what it required (UnknownAlertError if this node
        raised no such alert)."""
        with self._lock:
            deployment_id = self._alerts.get(event_id)
            required = self._required.get(event_id)
        if deployment_id is None:
            raise UnknownAlertError(f"event {event_id}: this node raised no alert with that id")
        return RaisedAlert(deployment_id, required)

    def review(self, event_id: str, outcome: str) -> str:
        """Record an outcome; returns the alert's deployment id."""
        deployment_id = self.deployment_of(event_id)
        with self._lock:
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
                required = e.data.get("reviewers_required")  # absent in a record from before the field
                self.alert(str(e.data["deployment_id"]), str(e.data["event_id"]),
                           None if required is None else int(required))
            elif e.kind == "review" and e.data.get("event_id") in self._alerts:
                self.review(str(e.data["event_id"]), str(e.data["outcome"]))
            elif e.kind == "effectiveness":
                with self._lock:
                    for d in e.data.get("deployments", []):
                        self._faces[str(d["deployment_id"])] = int(d["faces_seen"])
