"""A fleet, a device and a node state dir in a temp folder, for shard and trust tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from edge.identity import DeviceIdentity, create_identity
from edge.trust.times import now
from edge.vision.manifest import ModelSpec, load_manifest
from edge.watchlist.store import ShardStore
from provisioning.fleet import Fleet
from provisioning.shards import issue_shard
from provisioning.watchlist import save_watchlist

DEPLOY = """[deployment]
id = "dep-test"
authorisation = "TEST-AUTH-1"
start = {start}
end = {end}
cameras = ["gate-a"]
threshold = {threshold}
retention_days = 30
watchlist = "wl"
"""


@dataclass
class World:
    tmp: Path
    fleet: Fleet
    model: ModelSpec
    device: DeviceIdentity
    store: ShardStore
    n: int = 0

    def watchlist(self, entries: int = 5, seed: int = 0, model: ModelSpec | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        m = rng.normal(size=(entries, 128)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        ids = [{"id": f"wl-{i:06d}", "reference": f"R{i}", "name": f"person {i}", "photos": [],
                "provenance": {}} for i in range(entries)]
        spec = model or self.model
        save_watchlist(self.fleet, "wl", ids, m, spec.id, spec.sha256)
        return m

    def deploy_file(self, threshold: float = 0.95, start: datetime | None = None,
                    hours: float = 12) -> Path:
        start = start or now() - timedelta(hours=1)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        self.n += 1
        path = self.tmp / f"deploy{self.n}.toml"
        path.write_text(DEPLOY.format(start=start.strftime(fmt), end=(start + timedelta(hours=hours)).strftime(fmt),
                                      threshold=threshold))
        return path

    def issue(self, devices: tuple[str, ...] = ("cam-01",), model: ModelSpec | None = None, **deploy: object) -> Path:
        self.n += 1
        out = self.tmp / f"s{self.n}.shard"
        issue_shard(self.fleet, self.deploy_file(**deploy), list(devices), out,  # type: ignore[arg-type]
                    model or self.model)
        return out


def make_world(tmp: Path, monkeypatch: object) -> World:
    monkeypatch.setenv("EDGE_FLEET_PASSPHRASE", "test-passphrase")  # type: ignore[attr-defined]
    fleet = Fleet(tmp / "fleet")
    fleet.init("acme", 3, 2)
    manifest = load_manifest()
    model = manifest.spec(manifest.default_embedder)
    device = create_identity(tmp / "node", "cam-01")

    fleet.add_device("cam-01", device.public(), tmp / "cam-01.json")
    other = create_identity(tmp / "other", "cam-02")
    fleet.add_device("cam-02", other.public(), tmp / "cam-02.json")
    store = ShardStore(tmp / "node")
    store.trust_init(fleet.root_bytes(1))
    world = World(tmp, fleet, model, device, store)
    world.watchlist()
    return world


def lenient(model: ModelSpec, floor: float) -> ModelSpec:
    return dataclasses.replace(model, threshold_floor=floor)
