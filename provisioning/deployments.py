"""The fleet's record of each deployment it issued a shard for: F/deployments/<deployment id>.json.

`shard issue` writes it (the latest shard of a deployment wins); the officer's console reads it for what a
deployment's alerts are judged under (reviewers required, evidence retention) without opening a shard. The
record repeats what the signed shard says: the node enforces the shard, the record only informs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.fsutil import write_atomic
from edge.trust.times import TimeFormatError, format_time, parse_time
from edge.watchlist.shard import (
    DEFAULT_REVIEWERS_REQUIRED,
    MAX_RETENTION_DAYS,
    MAX_REVIEWERS_REQUIRED,
    MIN_RETENTION_DAYS,
    ShardManifest,
)
from provisioning.fleet import Fleet, FleetError

RECORD_SCHEMA = 1
# a deployment id names its record's file: letters, digits, '.', '_' and '-', not starting with '.' or '-'
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_FIELDS = {"schema", "deployment_id", "authorisation", "start", "end", "cameras", "threshold", "retention_days",
           "reviewers_required", "watchlist", "shard_id", "shard_version", "issued", "expires"}


class DeploymentRecordError(FleetError):
    """A deployment record is missing or malformed (names the file and the field)."""


class UnknownDeploymentError(DeploymentRecordError):
    """The fleet has issued no shard for this deployment (no record)."""


@dataclass(frozen=True)
class DeploymentRecord:
    """What the fleet issued for a deployment, as of its latest shard."""

    deployment_id: str
    authorisation: str
    start: datetime
    end: datetime
    cameras: tuple[str, ...]
    threshold: float
    retention_days: int
    reviewers_required: int
    watchlist: str  # the watch list's name in the fleet (F/watchlists/<name>)
    shard_id: str
    shard_version: int
    issued: datetime
    expires: datetime  # the shard's expiry

    @classmethod
    def of_shard(cls, manifest: ShardManifest, watchlist: str) -> DeploymentRecord:
        d = manifest.deployment
        return cls(d.id, d.authorisation, d.start, d.end, d.cameras, d.threshold, d.retention_days,
                   d.reviewers_required, watchlist, manifest.shard_id, manifest.version, manifest.issued,
                   manifest.expires)

    def to_json(self) -> dict[str, Any]:
        return {"schema": RECORD_SCHEMA, "deployment_id": self.deployment_id, "authorisation": self.authorisation,
                "start": format_time(self.start), "end": format_time(self.end), "cameras": list(self.cameras),
                "threshold": self.threshold, "retention_days": self.retention_days,
                "reviewers_required": self.reviewers_required, "watchlist": self.watchlist,
                "shard_id": self.shard_id, "shard_version": self.shard_version, "issued": format_time(self.issued),
                "expires": format_time(self.expires)}


def check_deployment_id(deployment_id: str) -> str:
    """A deployment id that can name its record's file (raises DeploymentRecordError otherwise)."""
    if not DEPLOYMENT_ID.fullmatch(deployment_id):
        raise DeploymentRecordError(f"deployment id {deployment_id!r}: expected 1-128 of A-Z a-z 0-9 . _ - "
                                    "(not starting with '.' or '-'); it names F/deployments/<id>.json")
    return deployment_id


def record_path(fleet: Fleet, deployment_id: str) -> Path:
    return fleet.dir / "deployments" / f"{check_deployment_id(deployment_id)}.json"


def write_deployment_record(fleet: Fleet, record: DeploymentRecord) -> Path:
    path = record_path(fleet, record.deployment_id)
    write_atomic(path, json.dumps(record.to_json(), indent=1).encode() + b"\n", 0o644)
    return path


def read_deployment_record(fleet: Fleet, deployment_id: str) -> DeploymentRecord:
    """The record `shard issue` wrote for this deployment; every error names the file (and the field)."""
    path = record_path(fleet, deployment_id)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownDeploymentError(f"{path}: no record of deployment {deployment_id!r} (the fleet issued no "
                                     "shard for it)") from None
    except (OSError, ValueError) as exc:
        raise DeploymentRecordError(f"{path}: unreadable ({exc})") from None
    record = _parse(doc, path)
    if record.deployment_id != deployment_id:
        raise DeploymentRecordError(f"{path}: deployment_id {record.deployment_id!r} is not the file's name")
    return record


def deployment_records(fleet: Fleet) -> list[DeploymentRecord]:
    """Every deployment record of the fleet, by deployment id. Only files a deployment id can name are
    records (`shard issue` writes no other): a stray file such as an editor's `.x.json` is not read. A
    damaged record is an error naming it, as in read_deployment_record."""
    folder = fleet.dir / "deployments"
    return [read_deployment_record(fleet, p.stem) for p in sorted(folder.glob("*.json"))
            if DEPLOYMENT_ID.fullmatch(p.stem)]


def _parse(doc: object, path: Path) -> DeploymentRecord:
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DeploymentRecordError(f"{path}: fields must be exactly {sorted(_FIELDS)}, got {got}")
    if doc["schema"] != RECORD_SCHEMA:
        raise DeploymentRecordError(f"{path}: schema {doc['schema']!r} is not {RECORD_SCHEMA}")

    def text(key: str) -> str:
        v = doc[key]
        if not isinstance(v, str) or not v:
            raise DeploymentRecordError(f"{path}: {key}: expected a non-empty string")
        return v

    def whole(key: str, low: int, high: int) -> int:
        v = doc[key]
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise DeploymentRecordError(f"{path}: {key}: expected an integer {low}..{high}")
        return v

    def when(key: str) -> datetime:
        try:
            return parse_time(doc[key])
        except TimeFormatError as exc:
            raise DeploymentRecordError(f"{path}: {key}: {exc}") from None

    cameras = doc["cameras"]
    if not isinstance(cameras, list) or not cameras or not all(isinstance(c, str) and c for c in cameras):
        raise DeploymentRecordError(f"{path}: cameras: expected a non-empty list of camera names")
    threshold = doc["threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise DeploymentRecordError(f"{path}: threshold: expected a number in (0, 1]")
    return DeploymentRecord(
        text("deployment_id"), text("authorisation"), when("start"), when("end"), tuple(cameras), float(threshold),
        whole("retention_days", MIN_RETENTION_DAYS, MAX_RETENTION_DAYS),
        whole("reviewers_required", DEFAULT_REVIEWERS_REQUIRED, MAX_REVIEWERS_REQUIRED),
        text("watchlist"), text("shard_id"), whole("shard_version", 1, 2**63 - 1), when("issued"), when("expires"))
