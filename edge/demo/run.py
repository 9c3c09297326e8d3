"""`edge-node demo`: the whole system on bundled real footage, set up on first run.

A demo fleet (keys, CA, an operator), a demo device, a watch list enrolled from photographs that are not
in the footage, a shard for a deployment that is open now; then the real node pipeline replays the footage
(a clip of a person who is not listed, then photographs among which the listed person appears twice).
Stdout: one JSON line per match event (signed by the device; the crop sealed to the operator). Stderr: a
summary. Everything lives in the demo directory; nothing touches a real fleet.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from edge.config import CameraConfig, MqttConfig, NodeConfig, TrackingConfig
from edge.identity import create_identity
from edge.node import Node
from edge.systemd import Notifier
from edge.tls import DeviceTLS
from edge.trust.keys import x25519_public
from edge.trust.times import format_time, now
from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.watchlist.store import ShardStore

FOOTAGE = Path(__file__).parent / "footage"
WATCHLIST_CSV = Path(__file__).parent / "watchlist.csv"  # enrols obama.jpg and astronaut.png
# The listed person (Barack Obama) appears in obama2.jpg and obama3.jpg, never in the enrolment photo;
# Eileen Collins (astronaut.png) is listed but never appears; everyone else is not listed.
SEQUENCE = ("WolfgangLanger_Pexels.mp4", "obama2.jpg", "multi_face.jpg", "biden.jpg", "obama3.jpg")
HOLD_FRAMES = 30  # a photograph stays in view for 30 frames (1.25 s at 24 fps)
FPS = 24.0
DEVICE = "demo-node"
CAMERA = "demo-cam"
DEMO_PASSPHRASE = "edge-demo-only"  # protects the demo fleet's keys, which guard nothing real


class DemoError(Exception):
    """The demo cannot be set up (names what is missing)."""


def default_demo_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-node" / "demo"


@dataclass(frozen=True)
class DemoSite:
    root: Path

    @property
    def fleet_dir(self) -> Path:
        return self.root / "fleet"

    @property
    def node_dir(self) -> Path:
        return self.root / "node"


def _deployment(path: Path, threshold: float) -> None:
    """A deployment open from a few minutes ago for one hour, for the demo camera, at the embedder's threshold."""
    t = now()
    path.write_text(
        "[deployment]\n"
        f'id = "demo-{t.strftime("%Y%m%d-%H%M%S")}"\n'
        'authorisation = "DEMO - not an authorisation"\n'
        f"start = {format_time(t - timedelta(minutes=5))}\n"
        f"end = {format_time(t + timedelta(hours=1))}\n"
        f'cameras = ["{CAMERA}"]\n'
        f"threshold = {threshold}\n"
        "retention_days = 1\n"
        'watchlist = "demo"\n')


def prepare(site: DemoSite, vision: VisionConfig, log: TextIO) -> None:
    """First run: fleet, CA, operator, device, trust, watch list. Every run: a fresh shard, loaded."""
    from provisioning.ca import FleetCA
    from provisioning.fleet import PASSPHRASE_ENV, Fleet
    from provisioning.operators import add_operator
    from provisioning.shards import issue_shard
    from provisioning.watchlist import build_watchlist, load_watchlist

    os.environ[PASSPHRASE_ENV] = DEMO_PASSPHRASE  # this process only: the demo fleet's own keys
    fleet = Fleet(site.fleet_dir)
    store = ShardStore(site.node_dir)
    analyzer = FaceAnalyzer(vision)
    model = analyzer.embedder_spec
    if not fleet.meta_path.exists():
        print(f"demo: first run, setting up a demo fleet in {site.root}", file=log)
        fleet.init("demo", root_keys=1, root_threshold=1)
        FleetCA(site.fleet_dir, DEMO_PASSPHRASE.encode()).init("demo")
        add_operator(fleet, FleetCA(site.fleet_dir, DEMO_PASSPHRASE.encode()), "demo", DEMO_PASSPHRASE.encode())
    if not (site.node_dir / "identity" / "device.json").exists():
        ident = create_identity(site.node_dir, DEVICE)
        fleet.add_device(DEVICE, ident.public(), site.node_dir / "identity" / "device.json")
    if not store.root_path.exists():
        store.trust_init(fleet.root_bytes(1))
    built = (site.fleet_dir / "watchlists" / "demo" / "entries.json").exists()
    if not built or load_watchlist(fleet, "demo").model_sha256 != model.sha256:  # first run, or another embedder
        report = build_watchlist(fleet, "demo", FOOTAGE, WATCHLIST_CSV, analyzer, log)
        if report.entries != 2:
            raise DemoError(f"demo watch list: {report.entries} of 2 entries built ({report.refused})")
    analyzer.release()
    deploy = site.root / "deploy.toml"
    _deployment(deploy, model.match_threshold or 1.0)  # an embedder always declares one (MANIFEST.json)
    shard = site.root / "current.shard"
    m = issue_shard(fleet, deploy, [DEVICE], shard, model)
    store.load(shard, model, now()).gallery.wipe()  # installed; the node loads it again at start
    print(f"demo: shard {m.shard_id} v{m.version} for deployment {m.deployment.id}: {m.entries} entries, "
          f"threshold {m.deployment.threshold}, camera {CAMERA}", file=log)


def broker_ready(site: DemoSite) -> None:
    """With --broker: the demo device's TLS key, born on the device, certified by the demo fleet's CA."""
    from provisioning.ca import FleetCA

    tls = DeviceTLS(site.node_dir)
    if tls.cert.exists():
        return
    ca = FleetCA(site.fleet_dir, DEMO_PASSPHRASE.encode())
    csr = tls.request(DEVICE)
    issued = site.root / "demo-node.crt"
    ca.sign_csr("device", DEVICE, csr, issued)
    tls.install(DEVICE, issued.read_bytes(), ca.cert_path.read_bytes())


def run_demo(vision: VisionConfig, out: TextIO, broker: str | None = None, demo_dir: Path | None = None,
             log: TextIO = sys.stderr, harden: bool = True) -> int:
    site = DemoSite(demo_dir or default_demo_dir())
    t0 = time.monotonic()
    prepare(site, vision, log)
    operator_file = site.fleet_dir / "operators" / "demo.json"
    operator = x25519_public(json.loads(operator_file.read_text())["x25519"])
    mqtt = None
    if broker is not None:
        broker_ready(site)
        mqtt = MqttConfig(broker, operator_file, event_ttl_hours=1.0, state_every_s=5.0)
    camera = CameraConfig(id=CAMERA, source="replay", paths=tuple(FOOTAGE / f for f in SEQUENCE), realtime=False,
                          hold_frames=HOLD_FRAMES, fps=FPS)
    config = NodeConfig(source_file=None, state_dir=site.node_dir, run_dir=site.root / "run", camera=camera,
                        vision=vision, tracking=TrackingConfig(), mqtt=mqtt)
    node = Node(config, out=out, notifier=Notifier(environ={}), operator_key=operator, print_events=True,
                harden=harden)
    node.run(threading.Event())
    assert node.pipeline is not None
    c = node.pipeline.counters.snapshot()
    print(f"demo: {c['frames']} frames, {c['faces']} faces seen, {c['below_quality']} below quality, "
          f"{c['alerts']} alerts, {c['discarded']} non-matching faces discarded at once, "
          f"{c['dropped_busy'] + c['outside_deployment']} frames dropped "
          f"({time.monotonic() - t0:.1f} s; state in {site.root})", file=log)
    return 0
