"""A world for the console's browser tests and bench: the demo fleet (keys, CA, operator, a device, the watch
list with its reference photos), a mosquitto configured from that fleet, a real node run as `edge-node run`
replaying the demo's photographs, and the real Console served over TLS by uvicorn in this process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import uvicorn
from mqttworld import Broker, Peer, fleet_broker

from edge.audit import AuditLog
from edge.demo.run import CAMERA, DEMO_PASSPHRASE, DEVICE, FOOTAGE, DemoSite, broker_ready, prepare
from edge.events.messages import ModelRef, ShardRef
from edge.events.service import EventSigner, MatchDraft
from edge.events.topics import DeviceTopics
from edge.identity import create_identity, load_identity
from edge.tls import DeviceTLS
from edge.trust.keys import x25519_public
from edge.trust.times import format_time, now
from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.watchlist.store import ShardStore
from provisioning.ca import FleetCA
from provisioning.console.app import ConsoleWeb, WebSettings, build_app
from provisioning.console.journal import CONSOLE_KINDS, JournalFiles
from provisioning.console.service import Console, open_console
from provisioning.fleet import PASSPHRASE_ENV, Fleet
from provisioning.operators import add_operator, fleet_settings
from provisioning.shards import issue_shard

# the listed person twice (obama2, obama3), with two unlisted photographs between so that the tracks end:
# two alerts per run; the unlisted photographs alone raise none (a run that only takes queued commands)
ALERTING = ("obama2.jpg", "multi_face.jpg", "biden.jpg", "obama3.jpg")
QUIET = ("biden.jpg", "multi_face.jpg")
OPERATOR = "demo"  # the demo fleet's operator: the console's broker certificate and crop key
PASSWORD = "correct horse battery staple"
ANSWER_WAIT = 1.0  # seconds the console's review sender waits for a node's answer (the node may be stopped)


def env() -> dict[str, str]:
    return {**os.environ, PASSPHRASE_ENV: DEMO_PASSPHRASE}


@dataclass
class NodeWorld:
    """The demo fleet and device with a broker; deployments issued and node runs made on demand."""

    site: DemoSite
    broker: Broker
    url: str

    @classmethod
    def create(cls, root: Path, operators: tuple[str, ...] = ()) -> NodeWorld:
        """`operators`: more operator certificates besides the demo's (one per tool connected at once)."""
        site = DemoSite(root / "demo")
        os.environ[PASSPHRASE_ENV] = DEMO_PASSPHRASE  # the demo fleet's own passphrase (guards nothing real)
        prepare(site, VisionConfig(), io.StringIO())
        broker_ready(site)
        ca = FleetCA(site.fleet_dir, DEMO_PASSPHRASE.encode())
        for name in operators:
            add_operator(Fleet(site.fleet_dir), ca, name, DEMO_PASSPHRASE.encode())
        broker, url = fleet_broker(site.fleet_dir, root / "broker", DEMO_PASSPHRASE)
        broker.start()
        return cls(site, broker, url)

    @property
    def fleet(self) -> Fleet:
        return Fleet(self.site.fleet_dir)

    def deploy(self, deployment_id: str, reviewers_required: int, retention_days: int = 30) -> None:
        """Issues a shard for a deployment open now and installs it on the node (it loads it at its next start)."""
        t = now()
        toml = self.site.root / f"{deployment_id}.toml"
        toml.write_text(
            "[deployment]\n"
            f'id = "{deployment_id}"\n'
            'authorisation = "TEST - console browser tests"\n'
            f"start = {format_time(t - timedelta(minutes=5))}\n"
            f"end = {format_time(t + timedelta(hours=2))}\n"
            f'cameras = ["{CAMERA}"]\n'
            "threshold = 0.94\n"
            f"retention_days = {retention_days}\n"
            f"reviewers_required = {reviewers_required}\n"
            'watchlist = "demo"\n')
        analyzer = FaceAnalyzer(VisionConfig())
        model = analyzer.embedder_spec
        analyzer.release()
        shard = self.site.root / f"{deployment_id}.shard"
        issue_shard(self.fleet, toml, [DEVICE], shard, model)
        ShardStore(self.site.node_dir).load(shard, model, now()).gallery.wipe()

    def node_config(self, photos: tuple[str, ...]) -> Path:
        path = self.site.root / "node.toml"
        paths = ", ".join(f'"{FOOTAGE / p}"' for p in photos)
        path.write_text(
            "[node]\n"
            f'state_dir = "{self.site.node_dir}"\n'
            f'run_dir = "{self.site.root / "run"}"\n'
            "[camera]\n"
            f'id = "{CAMERA}"\nsource = "replay"\npaths = [{paths}]\nrealtime = false\nhold_frames = 30\nfps = 24\n'
            "[vision]\n"
            'tiles = "off"\n'
            "[mqtt]\n"
            f'broker = "{self.url}"\n'
            f'operator_key = "{self.site.fleet_dir / "operators" / f"{OPERATOR}.json"}"\n'
            "event_ttl_hours = 1\n"
            "state_every_s = 2\n")
        return path

    def run_node(self, photos: tuple[str, ...] = ALERTING) -> subprocess.CompletedProcess[str]:
        """One real node run (`edge-node run`): it replays the photographs, publishes its alerts, takes the
        commands waiting in its session, and stops at the end of the replay."""
        done = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(self.node_config(photos))],
                              capture_output=True, text=True, env=env(), timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def stop(self) -> None:
        self.broker.stop()


class ConsoleServer:
    """The real Console (MQTT ingest as the fleet's operator) and its web application on a loopback port."""

    def __init__(self, world: NodeWorld, console_dir: Path, port: int, web_settings: WebSettings | None = None):
        fleet = world.fleet
        settings = fleet_settings(fleet, world.url, "operator", OPERATOR, DEMO_PASSPHRASE.encode())
        review_keys = sorted((fleet.dir / "keys").glob("review-*.pem"))
        self.console: Console = open_console(fleet.dir, console_dir, settings,
                                             fleet.dir / "operators" / f"{OPERATOR}.pem",
                                             review_keys[0] if review_keys else None, answer_wait=ANSWER_WAIT)
        self.port = port
        self.console_dir = console_dir
        self.url = f"https://127.0.0.1:{port}"
        tls = world.broker.directory  # the broker's certificate names 127.0.0.1: good enough for a test page
        app = build_app(self.console, settings=web_settings)
        self.web: ConsoleWeb = app.state.web  # the pages' own objects (feed, sessions, templates)
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=port, ssl_certfile=str(tls / "broker.crt"),
            ssl_keyfile=str(tls / "broker.key"), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="console-web", daemon=True)

    def start(self, timeout: float = 20.0) -> None:
        self.console.start()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console's web server did not start")
            time.sleep(0.05)

    def journal(self, kind: str) -> list[dict[str, Any]]:
        """The console's own audit records of one kind (read through the chain check)."""
        log = AuditLog(JournalFiles.of(self.console_dir).log, now, CONSOLE_KINDS)
        return [dict(e.data) for e in log.entries() if e.kind == kind]

    def add_account(self, name: str, role: str) -> None:
        self.console.accounts.add(name, role, PASSWORD)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.console.stop()


class SimDevice:
    """A registered device with its own identity and broker certificate that publishes signed match events
    (crops sealed to the operator) without running a pipeline: for floods and latency, not for matching."""

    def __init__(self, world: NodeWorld, device_id: str, crops: tuple[bytes, bytes]):
        state = world.site.root / "sim" / device_id
        if not (state / "identity" / "device.json").exists():
            ident = create_identity(state, device_id)
            world.fleet.add_device(device_id, ident.public(), state / "identity" / "device.json")
            tls = DeviceTLS(state)
            issued = state / "tls-issued.crt"
            ca = FleetCA(world.site.fleet_dir, DEMO_PASSPHRASE.encode())
            ca.sign_csr("device", device_id, tls.request(device_id), issued)
            tls.install(device_id, issued.read_bytes(), ca.cert_path.read_bytes())
        operator = x25519_public(json.loads((world.site.fleet_dir / "operators" / f"{OPERATOR}.json")
                                            .read_text())["x25519"])
        self.device_id = device_id
        self.signer = EventSigner(load_identity(state), operator)
        self.crops = crops
        self.topic = DeviceTopics(device_id).match
        self.peer = Peer(world.broker, device_id, cert=(state / "identity" / "tls.crt", state / "identity" / "tls.key"))
        self.seq = 0

    def event(self, deployment_id: str) -> tuple[str, bytes]:
        draft = MatchDraft(CAMERA, deployment_id, f"t{self.seq}", "WL-2026-0001", 0.962, 0.94,
                           ModelRef("sim", "0" * 64), ShardRef(deployment_id, 1), 4, margin=0.12)
        _eid, _expires, build = self.signer.prepare(draft, self.crops[0], context=self.crops[1])
        self.seq += 1
        return build(self.seq)


def demo_crops() -> tuple[bytes, bytes]:
    """A face crop and a context crop cut from a demo photograph (JPEG, as a node sends them)."""
    image = cv2.imread(str(FOOTAGE / "obama2.jpg"))
    h, w = image.shape[:2]
    face = image[h // 10: h // 2, w // 3: 2 * w // 3]
    return cv2.imencode(".jpg", face)[1].tobytes(), cv2.imencode(".jpg", image)[1].tobytes()
