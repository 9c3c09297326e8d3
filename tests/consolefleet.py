"""A small real fleet for the console's store and ingest tests: fleet keys, registered devices with their own
identities, an operator evidence key, and match events signed and sealed by the node's own EventSigner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.demo.run import FOOTAGE
from edge.events.messages import ModelRef, ShardRef
from edge.events.service import EventSigner, MatchDraft
from edge.events.topics import DeviceTopics
from edge.identity import DeviceIdentity, create_identity
from edge.trust.times import now
from provisioning.deployments import DeploymentRecord, write_deployment_record
from provisioning.fleet import PASSPHRASE_ENV, Fleet

PASSPHRASE = "console-test-passphrase"
FACE = (FOOTAGE / "obama2.jpg").read_bytes()  # real JPEGs stand in for the crops the node would cut
CONTEXT = (FOOTAGE / "biden.jpg").read_bytes()


@dataclass
class Clock:
    """A clock the test moves (retention, lockouts): no sleeping."""

    t: datetime

    def __call__(self) -> datetime:
        return self.t


@dataclass
class SmallFleet:
    fleet: Fleet
    devices: dict[str, DeviceIdentity]
    operator: X25519PrivateKey

    def event(self, device_id: str, entry_id: str = "wl-000001", deployment_id: str = "dep-1",
              face: bytes | None = FACE, context: bytes | None = CONTEXT, seq: int = 1,
              sealed_to: X25519PrivateKey | None = None, reviewers_required: int | None = None,
              retention_days: int | None = None, media_type: str = "image/jpeg") -> tuple[str, str, bytes]:
        """(topic, event id, signed payload) of one match event from that device, crops sealed to the operator;
        `reviewers_required`/`retention_days`: the deployment's terms the event carries (None: an older node's)."""
        key = (sealed_to or self.operator).public_key()
        signer = EventSigner(self.devices[device_id], key, timedelta(hours=6))
        draft = MatchDraft("gate-a", deployment_id, f"t{seq}", entry_id, 0.953, 0.94, ModelRef("m", "cd" * 32),
                           ShardRef("s", 1), 4, reviewers_required=reviewers_required, retention_days=retention_days)
        event_id, _expires, build = signer.prepare(draft, face, media_type, context)
        _eid, payload = build(seq)
        return DeviceTopics(device_id).match, event_id, payload

    def deployment(self, deployment_id: str, retention_days: int, reviewers_required: int,
                   watchlist: str = "none") -> None:
        """The fleet's record of a deployment, as `shard issue` writes it."""
        t = now().replace(microsecond=0)
        write_deployment_record(self.fleet, DeploymentRecord(
            deployment_id, "test authorisation", t - timedelta(hours=1), t + timedelta(hours=5), ("gate-a",), 0.94,
            retention_days, reviewers_required, watchlist, deployment_id, 1, t, t + timedelta(hours=5)))


def small_fleet(root: Path, monkeypatch: pytest.MonkeyPatch,
                devices: tuple[str, ...] = ("cam-01", "cam-02")) -> SmallFleet:
    """A fleet in root/fleet with these devices registered (their state dirs in root/<device>)."""
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    fleet = Fleet(root / "fleet")
    fleet.init("acme", root_keys=1, root_threshold=1)
    idents = {}
    for d in devices:
        ident = create_identity(root / d, d)
        fleet.add_device(d, ident.public(), root / d)
        idents[d] = ident
    return SmallFleet(fleet, idents, X25519PrivateKey.generate())


def listed_entry(fleet: Fleet, photo: str = "obama.jpg") -> str:
    """The id of the built demo watch list's entry whose reference photo is `photo` (build_watchlist first)."""
    doc = json.loads((fleet.dir / "watchlists" / "demo" / "entries.json").read_text())
    return str(next(e for e in doc["entries"] if e["photos"] == [photo])["id"])


def review_key_path(fleet: Fleet) -> Path:
    """The fleet's review key (the command key under a root made before the review role)."""
    review = fleet.dir / "keys" / "review-1.pem"
    return review if review.exists() else fleet.dir / "keys" / "command-1.pem"
