"""Issuing a shard: a deployment (TOML) + a built watch list + recipient devices -> one signed file."""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.fsutil import write_atomic
from edge.trust.keys import key_id, x25519_public
from edge.trust.root import sign_document
from edge.trust.times import now
from edge.vault import DEFAULT_RETENTION_DAYS
from edge.vision.manifest import ModelSpec
from edge.watchlist.shard import (
    DEFAULT_REVIEWERS_REQUIRED,
    HPKE_SUITE,
    MAX_REVIEWERS_REQUIRED,
    NONCE_BYTES,
    SHARD_TYPE,
    Deployment,
    Recipient,
    ShardManifest,
    associated_data,
    encode_payload,
    encode_shard,
    wrap_info,
)
from provisioning.accuracy.calibration import check_policy
from provisioning.deployments import (
    DeploymentRecord,
    DeploymentRecordError,
    check_deployment_id,
    write_deployment_record,
)
from provisioning.fleet import Fleet, FleetError
from provisioning.watchlist import load_watchlist

DEPLOYMENT_KEYS = {"id", "authorisation", "start", "end", "cameras", "threshold", "retention_days", "watchlist",
                   "reviewers_required"}
SHARD_KEYS = {"shard_id", "expires"}


@dataclass(frozen=True)
class DeploymentFile:
    deployment: Deployment
    watchlist: str
    shard_id: str
    expires: datetime


def load_deployment(path: Path) -> DeploymentFile:
    """Parse DEPLOY.toml strictly; every error names the file and the key."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FleetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FleetError(f"{path}: not TOML ({exc})") from None
    unknown = set(doc) - {"deployment", "shard"}
    if unknown:
        raise FleetError(f"{path}: unknown table(s) {sorted(unknown)}")
    d = doc.get("deployment")
    if not isinstance(d, dict):
        raise FleetError(f"{path}: [deployment] table missing")
    s = doc.get("shard", {})
    for table, allowed, name in ((d, DEPLOYMENT_KEYS, "deployment"), (s, SHARD_KEYS, "shard")):
        extra = set(table) - allowed
        if extra:
            raise FleetError(f"{path}: [{name}] unknown key(s) {sorted(extra)}")

    def get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
            default: Any = None) -> Any:
        v = table.get(key, default)
        if v is None:
            raise FleetError(f"{path}: [{where}] {key} is missing")
        if not isinstance(v, kind) or isinstance(v, bool):
            raise FleetError(f"{path}: [{where}] {key} = {v!r} is not a {getattr(kind, '__name__', kind)}")
        return v

    def when(table: dict[str, Any], key: str, where: str, default: Any = None) -> datetime:
        v: datetime = get(table, key, datetime, where, default)
        if v.tzinfo is None:
            raise FleetError(f"{path}: [{where}] {key} needs a time zone (e.g. 2026-12-01T10:00:00Z)")
        return v.replace(microsecond=0)

    cameras = get(d, "cameras", list, "deployment")
    if not cameras or not all(isinstance(c, str) and c for c in cameras) or len(set(cameras)) != len(cameras):
        raise FleetError(f"{path}: [deployment] cameras must list unique camera names")
    threshold = float(get(d, "threshold", (int, float), "deployment"))
    retention = get(d, "retention_days", int, "deployment", DEFAULT_RETENTION_DAYS)
    if not 0 < threshold <= 1:
        raise FleetError(f"{path}: [deployment] threshold = {threshold} must be in (0, 1]")
    if not 1 <= retention <= 366:
        raise FleetError(f"{path}: [deployment] retention_days = {retention} must be 1..366")
    reviewers = get(d, "reviewers_required", int, "deployment", DEFAULT_REVIEWERS_REQUIRED)
    if not DEFAULT_REVIEWERS_REQUIRED <= reviewers <= MAX_REVIEWERS_REQUIRED:
        raise FleetError(f"{path}: [deployment] reviewers_required = {reviewers} must be "
                         f"{DEFAULT_REVIEWERS_REQUIRED}..{MAX_REVIEWERS_REQUIRED}")
    try:
        deployment_id = check_deployment_id(get(d, "id", str, "deployment"))
    except DeploymentRecordError as exc:
        raise FleetError(f"{path}: [deployment] id: {exc}") from None
    start, end = when(d, "start", "deployment"), when(d, "end", "deployment")
    if end <= start:
        raise FleetError(f"{path}: [deployment] end must be after start")
    dep = Deployment(deployment_id, get(d, "authorisation", str, "deployment"), start, end,
                     tuple(cameras), threshold, retention, reviewers)
    expires = when(s, "expires", "shard", end)
    return DeploymentFile(dep, get(d, "watchlist", str, "deployment"), get(s, "shard_id", str, "shard", dep.id),
                          expires)


def issue_shard(fleet: Fleet, deployment_path: Path, device_ids: Sequence[str], out: Path,
                model: ModelSpec) -> ShardManifest:
    """Build, sign and write a shard for the listed devices; refuses anything a node would refuse. Then the
    fleet's record of the deployment (F/deployments/<id>.json) says what was issued."""
    dep = load_deployment(deployment_path)
    wl = load_watchlist(fleet, dep.watchlist)
    wl.check_model(model.id, model.sha256)
    floor = float(fleet.meta().get("threshold_floor") or model.threshold_floor or 0.0)
    if dep.deployment.threshold < floor:
        raise FleetError(f"{deployment_path}: [deployment] threshold = {dep.deployment.threshold} is below "
                         f"the calibrated floor {floor} of {model.id}")
    check_policy(fleet, model, dep.deployment.threshold, len(wl.entries))  # predicted false alerts (fleet.json)
    issued = now().replace(microsecond=0)
    if dep.expires <= issued:
        raise FleetError(f"{deployment_path}: the shard would expire at once ({dep.expires.isoformat()})")
    devices = [fleet.device(d) for d in device_ids]
    revoked = [d.device_id for d in devices if d.status != "active"]
    if revoked:
        raise FleetError(f"device(s) {', '.join(revoked)} are revoked")
    if not devices:
        raise FleetError("no recipient devices given")
    signers = [fleet.read_key(p) for p in fleet.key_files("shard")]
    root = fleet.root()
    if len(signers) < root.roles["shard"].threshold:
        raise FleetError(f"{len(signers)} shard key(s) at hand, root v{root.version} needs "
                         f"{root.roles['shard'].threshold}")
    version = fleet.next_shard_version()
    aad = associated_data(fleet.name, dep.shard_id, version)
    content_key = AESGCM.generate_key(256)
    nonce = os.urandom(NONCE_BYTES)
    ids = [e["id"] for e in wl.entries]
    ciphertext = AESGCM(content_key).encrypt(nonce, encode_payload(ids, wl.embeddings), aad)
    recipients = {}
    for d in devices:
        pub = x25519_public(d.x25519)
        recipients[d.device_id] = Recipient(key_id(pub), HPKE_SUITE.encrypt(content_key, pub,
                                                                             info=wrap_info(d.device_id, aad)))
    manifest = ShardManifest(
        fleet=fleet.name, shard_id=dep.shard_id, version=version, issued=issued, expires=dep.expires,
        deployment=dep.deployment, model_id=model.id, model_sha256=model.sha256,
        payload_sha256=hashlib.sha256(ciphertext).hexdigest(), payload_length=len(ciphertext), nonce=nonce,
        entries=len(ids), dim=int(wl.embeddings.shape[1]), recipients=recipients)
    body = manifest.to_body()
    assert body["type"] == SHARD_TYPE
    write_atomic(out, encode_shard(sign_document(body, signers), ciphertext), 0o644)
    write_deployment_record(fleet, DeploymentRecord.of_shard(manifest, dep.watchlist))
    return manifest
