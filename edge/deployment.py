"""When and where the node may match: only inside the signed deployment window, only for the cameras the
deployment lists, only while the shard is unexpired. Outside, frames are dropped before detection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
