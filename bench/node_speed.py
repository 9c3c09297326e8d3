"""Whole-node throughput on 720p replay with MQTT on, as a ratio to the vision core alone on the same frames.

The footage: the bundled clip (edge/demo/footage/WolfgangLanger_Pexels.mp4, 640x360, 472 frames at 23.976
fps, a person who is not listed) upscaled to 1280x720, then the demo's stills letterboxed to 1280x720 and
held for 30 frames each (obama2, multi_face, biden, obama3): 592 frames in one temporary mp4 (mp4v). The
listed person is enrolled from obama.jpg, which is not in the footage; obama2 and obama3 are the two alerts.

The site: one real mosquitto on loopback with the generated configuration (TLS client certificates, ACLs,
persistence, tests/mqttworld.make_broker) and its CA; a fleet (root, shard key), device cam-01 whose TLS
key is born in its state dir and certified by that CA from a CSR, its trust root, and a shard for a
deployment listing camera gate-a: the enrolled face plus `--entries` - 1 synthetic entries. The operator
console is subscribed (QoS 1) to every device's events and state, and an admin to the audit topic, so the
node's match events and audit checkpoints are routed (not kept as unrouted) and counted.

The footage is also cut into --chunks consecutive mp4 files (4 parts of 148 frames). Per round, tile plan
and part, back to back (which goes first alternates), so that the load of the other tenants of a shared
box changes little between the two halves of a pair:

  node   edge.node.Node.run with that config on that part: replay with realtime = false
         (PipelineSettings.live False: every frame is processed, none dropped), the capture thread decoding
         the mp4, the inference thread, tracker, signed events with sealed crops into the durable outbox,
         published with the node's state. Timed from Pipeline.start to the end of the inference loop (model
         load, shard verify and shutdown are outside; they are bench/node_memory.py's subject).
  core   a fresh FaceAnalyzer (same VisionConfig) + Matcher (the same decrypted gallery, the node's
         policy) over the same frames decoded beforehand into memory: analyse, copy the embeddings,
         match. No decode, no gate, no tracker, no per-frame wipe, no events.

Reported: fps of each (median over rounds of frames / time), the median (and range) of the per-part ratios
node/core (target >= 0.9), the node's extra ms per frame, and the time decoding the mp4 alone takes, for the
default crowd tile plan and a single whole-frame pass. BLAS is limited to one thread, as `edge-node` does.

usage: python3 bench/node_speed.py [--rounds 3] [--chunks 4] [--entries 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mqttworld import Broker, Peer, make_broker, wait_for  # noqa: E402

import edge.node  # noqa: E402
from edge.config import CameraConfig, MqttConfig, NodeConfig, TrackingConfig  # noqa: E402
from edge.events.topics import AUDIT, STATE, all_devices  # noqa: E402
from edge.identity import create_identity  # noqa: E402
from edge.node import Node  # noqa: E402
from edge.pipeline import MIN_MARGIN, Pipeline  # noqa: E402
from edge.systemd import Notifier  # noqa: E402
from edge.tls import DeviceTLS  # noqa: E402
from edge.trust.keys import raw_public  # noqa: E402
from edge.trust.times import format_time, now  # noqa: E402
from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb  # noqa: E402
from edge.vision.detect import CROWD_PLAN, DetectorConfig, TilePlan  # noqa: E402
from edge.vision.manifest import ModelSpec  # noqa: E402
from edge.vision.runtime import limit_blas_threads  # noqa: E402
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy  # noqa: E402
from edge.watchlist.store import ShardStore  # noqa: E402
from provisioning.fleet import PASSPHRASE_ENV, Fleet  # noqa: E402
from provisioning.shards import issue_shard  # noqa: E402
from provisioning.watchlist import save_watchlist  # noqa: E402

FOOTAGE = REPO / "edge" / "demo" / "footage"
CLIP = FOOTAGE / "WolfgangLanger_Pexels.mp4"
ENROL = "obama.jpg"  # the listed person's enrolment photo (not in the footage)
STILLS = ("obama2.jpg", "multi_face.jpg", "biden.jpg", "obama3.jpg")  # obama*: the listed person
HOLD_FRAMES = 30
WIDTH, HEIGHT = 1280, 720
CAMERA = "gate-a"
THRESHOLD = 0.94
BENCH_PASSPHRASE = "bench-only"  # the temporary fleet's keys guard nothing
PLANS = {"crowd (default)": CROWD_PLAN, "single pass": TilePlan()}
SPEED_TARGET = 0.9


# -- footage --
def letterbox(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(WIDTH / w, HEIGHT / h)
    nw, nh = round(w * s), round(h * s)
    out = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x, y = (WIDTH - nw) // 2, (HEIGHT - nh) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return out


@dataclass(frozen=True)
class Footage:
    path: Path
    frames: int
    fps: float
    chunks: tuple[Footage, ...] = ()  # the same frames cut into consecutive files, when asked for


def footage_frames(clip_frames: int | None) -> Iterator[np.ndarray]:
    """BGR 1280x720: the clip (its first `clip_frames` frames, default all) upscaled, then the stills held
    HOLD_FRAMES each."""
    cap = cv2.VideoCapture(str(CLIP))
    n = 0
    while clip_frames is None or n < clip_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        yield cv2.resize(bgr, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
        n += 1
    cap.release()
    for still in STILLS:
        bgr = cv2.cvtColor(letterbox(read_rgb(FOOTAGE / still)), cv2.COLOR_RGB2BGR)
        for _ in range(HOLD_FRAMES):
            yield bgr


def make_footage(directory: Path, clip_frames: int | None = None, chunks: int = 0) -> Footage:
    """The footage as one mp4 (mp4v), and with `chunks` also cut into that many consecutive mp4 files."""
    fps = float(cv2.VideoCapture(str(CLIP)).get(cv2.CAP_PROP_FPS))
    total = sum(1 for _ in footage_frames(clip_frames)) if chunks else 0
    bounds = [round(i * total / chunks) for i in range(1, chunks + 1)] if chunks else []

    def writer(path: Path) -> cv2.VideoWriter:
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
        if not w.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot write mp4v here")
        return w

    whole = writer(directory / "replay-720p.mp4")
    parts: list[Footage] = []
    part: cv2.VideoWriter | None = None
    n = start = 0
    for bgr in footage_frames(clip_frames):
        if chunks and part is None:
            part, start = writer(directory / f"replay-720p-{len(parts) + 1}.mp4"), n
        whole.write(bgr)
        if part is not None:
            part.write(bgr)
        n += 1
        if part is not None and n == bounds[len(parts)]:
            part.release()
            parts.append(Footage(directory / f"replay-720p-{len(parts) + 1}.mp4", n - start, fps))
            part = None
    whole.release()
    return Footage(directory / "replay-720p.mp4", n, fps, tuple(parts))


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame as RGB, as the replay camera delivers it."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


# -- the site: broker, fleet, devices with shards --
class Console:
    """The fleet side on the broker, counting only: operator.console subscribed to every device's events
    and state, admin.ops to their audit checkpoints."""

    def __init__(self, broker: Broker):
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {"event": 0, "state": 0, "audit": 0}
        self.peers: list[Peer] = []
        for cn, topics in (("operator.console", (all_devices("event/#"), all_devices(STATE))),
                           ("admin.ops", (all_devices(AUDIT),))):
            peer = Peer(broker, cn)
            peer.client.on_message = lambda _c, _u, msg: self._got(msg.topic)
            peer.connect()
            if not peer.connected.is_set():
                raise RuntimeError(f"{cn} did not connect")
            self.peers.append(peer)
            for topic in topics:
                peer.subscribe(topic)

    def _got(self, topic: str) -> None:
        kind = topic.rsplit("/", 1)[-1] if topic.endswith((f"/{STATE}", f"/{AUDIT}")) else "event"
        with self.lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


@dataclass(frozen=True)
class Device:
    device_id: str
    state_dir: Path
    entries: int


@dataclass
class Site:
    root: Path
    broker: Broker
    fleet: Fleet
    model: ModelSpec
    operator_file: Path
    listed: np.ndarray  # the enrolled embedding
    devices: dict[str, Device] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"

    def add_device(self, device_id: str, entries: int, seed: int = 0) -> Device:
        """Identity, broker certificate from a CSR, trust root, and an installed shard of `entries` entries
        (the enrolled face first, the rest synthetic unit vectors) for a deployment listing CAMERA."""
        state = self.root / device_id
        ident = create_identity(state, device_id)
        self.fleet.add_device(device_id, ident.public(), self.root / f"{device_id}.json")
        store = ShardStore(state)
        store.trust_init(self.fleet.root_bytes(1))
        tls = DeviceTLS(state)
        csr = tls.request(device_id)
        crt = self.root / f"{device_id}.crt"
        self.broker.ca.sign_csr("device", device_id, csr, crt)
        tls.install(device_id, crt.read_bytes(), self.broker.ca.cert_path.read_bytes())
        rng = np.random.default_rng(seed)
        matrix = rng.normal(size=(entries, self.listed.shape[0])).astype(np.float32)
        matrix[0] = self.listed
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        rows = [{"id": f"wl-{i:06d}", "reference": f"R{i}", "name": f"person {i}", "photos": [], "provenance": {}}
                for i in range(entries)]
        wl = f"wl-{device_id}"
        save_watchlist(self.fleet, wl, rows, matrix, self.model.id, self.model.sha256)
        t = now()
        deploy = self.root / f"deploy-{device_id}.toml"
        deploy.write_text(
            "[deployment]\n"
            f'id = "bench-{device_id}"\n'
            'authorisation = "BENCH - not an authorisation"\n'
            f"start = {format_time(t - timedelta(minutes=5))}\n"
            f"end = {format_time(t + timedelta(hours=12))}\n"
            f'cameras = ["{CAMERA}"]\n'
            f"threshold = {THRESHOLD}\n"
            "retention_days = 1\n"
            f'watchlist = "{wl}"\n')
        shard = self.root / f"{device_id}.shard"
        issue_shard(self.fleet, deploy, [device_id], shard, self.model)
        store.load(shard, self.model, now()).gallery.wipe()  # installed; the node verifies it again at start
        dev = Device(device_id, state, entries)
        self.devices[device_id] = dev
        return dev

    def node_config(self, device: Device, footage: Footage, plan: TilePlan, realtime: bool = False,
                    loop: bool = False) -> NodeConfig:
        camera = CameraConfig(id=CAMERA, source="replay", paths=(footage.path,), realtime=realtime, loop=loop,
                              fps=footage.fps)
        return NodeConfig(source_file=None, state_dir=device.state_dir, run_dir=self.root / "run",
                          camera=camera, vision=VisionConfig(detector=DetectorConfig(tiles=plan)),
                          tracking=TrackingConfig(), mqtt=MqttConfig(self.url, self.operator_file))

    def node_toml(self, device: Device, footage: Footage, tiles: str, path: Path, realtime: bool = False,
                  loop: bool = False) -> Path:
        """The same configuration as a node.toml for `edge-node run --config`."""
        path.write_text(
            "[node]\n"
            f"state_dir = {json.dumps(str(device.state_dir))}\n"
            f"run_dir = {json.dumps(str(self.root / 'run'))}\n"
            "[camera]\n"
            f'id = "{CAMERA}"\nsource = "replay"\npaths = [{json.dumps(str(footage.path))}]\n'
            f"realtime = {str(realtime).lower()}\nloop = {str(loop).lower()}\nfps = {footage.fps!r}\n"
            "[vision]\n"
            f'tiles = "{tiles}"\n'
            "[mqtt]\n"
            f'broker = "{self.url}"\noperator_key = {json.dumps(str(self.operator_file))}\n')
        return path

    def gallery(self, device: Device) -> Gallery:
        """The device's shard decrypted as the node does it (verify + decrypt + load)."""
        accepted = ShardStore(device.state_dir).reload_current(self.model, now())
        assert accepted is not None
        return accepted.gallery


def make_site(root: Path) -> Site:
    """Broker (started), fleet, operator key, the enrolled face. The caller stops site.broker."""
    os.environ.setdefault(PASSPHRASE_ENV, BENCH_PASSPHRASE)
    broker = make_broker(root / "broker", devices=())
    broker.start()
    fleet = Fleet(root / "fleet")
    fleet.init("bench", root_keys=1, root_threshold=1)
    analyzer = FaceAnalyzer(VisionConfig())
    faces = analyzer.analyse(read_rgb(FOOTAGE / ENROL))
    if not faces or faces[0].embedding is None:
        raise RuntimeError(f"{ENROL}: no face passed the gate")
    listed = faces[0].embedding.copy()
    model = analyzer.embedder_spec
    analyzer.release()
    operator = X25519PrivateKey.generate().public_key()
    operator_file = root / "operator.json"
    operator_file.write_text(json.dumps({"x25519": raw_public(operator).hex()}) + "\n")
    return Site(root, broker, fleet, model, operator_file, listed)


# -- the two measurements --
class TimedPipeline(Pipeline):
    """The node's pipeline, noting when it starts and when its inference loop has finished the last frame."""

    started = 0.0
    ended = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        super().start()

    def _inference_loop(self) -> None:
        try:
            super()._inference_loop()
        finally:
            self.ended = time.perf_counter()


@dataclass(frozen=True)
class NodeRun:
    seconds: float  # Pipeline.start to the end of the inference loop
    frames: int
    counters: dict[str, int]


def node_run(site: Site, device: Device, footage: Footage, plan: TilePlan) -> NodeRun:
    edge.node.Pipeline = TimedPipeline  # type: ignore[misc]  # the node builds its pipeline from this name
    node = Node(site.node_config(device, footage, plan), out=io.StringIO(), notifier=Notifier(environ={}),
                harden=False)
    node.run(threading.Event())
    p = node.pipeline
    assert isinstance(p, TimedPipeline)
    if p.error is not None:
        raise RuntimeError(f"pipeline failed: {p.error!r}")
    c = p.counters.snapshot()
    if c["processed"] != footage.frames:
        raise RuntimeError(f"the node processed {c['processed']} of {footage.frames} frames: {c}")
    return NodeRun(p.ended - p.started, c["processed"], c)


def core_run(frames: list[np.ndarray], gallery: Gallery, plan: TilePlan) -> float:
    """Seconds for analyse + match over the frames (a fresh analyser, as the node makes one per run)."""
    analyzer = FaceAnalyzer(VisionConfig(detector=DetectorConfig(tiles=plan)))
    matcher = Matcher(gallery, MatchPolicy(THRESHOLD, MIN_MARGIN))
    queries = np.zeros((64, analyzer.embedder.dim), np.float32)
    t0 = time.perf_counter()
    for frame in frames:
        embedded = [f for f in analyzer.analyse(frame) if f.embedding is not None]
        if embedded:
            q = queries[:len(embedded)]
            for i, f in enumerate(embedded):
                q[i] = f.embedding
            matcher.match(q)
    dt = time.perf_counter() - t0
    matcher.release()
    analyzer.release()
    return dt


def decode_run(path: Path) -> float:
    """ms per frame for decoding the mp4 to RGB alone (the capture thread's work, besides one copy)."""
    cap = cv2.VideoCapture(str(path))
    rgb: np.ndarray | None = None
    n = 0
    t0 = time.perf_counter()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=rgb)
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return 1000 * dt / n


@dataclass(frozen=True)
class Pair:
    """One chunk through the node and through the core, back to back."""

    node: NodeRun
    core_s: float

    @property
    def ratio(self) -> float:  # node fps / core fps
        return self.core_s / self.node.seconds

    @property
    def extra_ms(self) -> float:  # the node's extra time per frame
        return 1000 * (self.node.seconds - self.core_s) / self.node.frames


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=4, help="consecutive parts of the footage, each measured as a pair")
    ap.add_argument("--entries", type=int, default=1000, help="shard entries (the enrolled face + synthetic)")
    args = ap.parse_args()
    if args.chunks < 1 or args.rounds < 1:
        ap.error("--chunks and --rounds must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_blas_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-"))
    site: Site | None = None
    console: Console | None = None
    try:
        footage = make_footage(tmp, chunks=args.chunks)
        site = make_site(tmp)
        device = site.add_device("cam-01", args.entries)
        console = Console(site.broker)
        frames = [decode_all(part.path) for part in footage.chunks]
        gallery = site.gallery(device)
        print(f"mosquitto {site.broker.port} on loopback, TLS client certificates; footage {footage.frames} frames "
              f"{WIDTH}x{HEIGHT} at {footage.fps:.3f} fps (mp4v) in {len(footage.chunks)} parts of "
              f"{'/'.join(str(c.frames) for c in footage.chunks)} frames; shard {args.entries:,} entries; "
              f"state and outbox under {tmp}")
        results: dict[str, list[list[Pair]]] = {name: [] for name in PLANS}
        decode_ms: list[float] = []
        t_all = time.perf_counter()
        k = 0
        for rnd in range(args.rounds):
            decode_ms.append(decode_run(footage.path))
            for name, plan in PLANS.items():
                pairs = []
                for part, part_frames in zip(footage.chunks, frames, strict=True):
                    k += 1
                    if k % 2:
                        nr = node_run(site, device, part, plan)
                        cs = core_run(part_frames, gallery, plan)
                    else:
                        cs = core_run(part_frames, gallery, plan)
                        nr = node_run(site, device, part, plan)
                    pairs.append(Pair(nr, cs))
                results[name].append(pairs)
                nf, cf = (footage.frames / sum(p.node.seconds for p in pairs),
                          footage.frames / sum(p.core_s for p in pairs))
                print(f"   round {rnd + 1}/{args.rounds} {name}: node {nf:.2f} fps, core {cf:.2f} fps, per part "
                      f"{' '.join(f'{p.ratio:.2f}' for p in pairs)}; "
                      f"{sum(p.node.counters['alerts'] for p in pairs)} alerts, "
                      f"{sum(p.node.counters['dropped_busy'] for p in pairs)} dropped "
                      f"({time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
        total_alerts = sum(p.node.counters["alerts"] for rounds in results.values() for r in rounds for p in r)
        wait_for(lambda: console is not None and console.snapshot()["event"] >= total_alerts, timeout=10)
        print(f"\n== whole node vs vision core, {footage.frames} frames of 720p replay per round, {args.rounds} rounds "
              f"x {len(footage.chunks)} parts")
        print(f"   {'tile plan':<16} {'node fps':>9} {'core fps':>9} {'node/core':>10} {'(min-max)':>12} "
              f"{'target':>7}  verdict  {'node ms':>8} {'core ms':>8} {'node extra':>11}  alerts/round")
        for name, rounds in results.items():
            node_fps = statistics.median(footage.frames / sum(p.node.seconds for p in r) for r in rounds)
            core_fps = statistics.median(footage.frames / sum(p.core_s for p in r) for r in rounds)
            pairs = [p for r in rounds for p in r]
            ratios = [p.ratio for p in pairs]
            ratio = statistics.median(ratios)
            extra = statistics.median(p.extra_ms for p in pairs)
            alerts = "/".join(str(sum(p.node.counters["alerts"] for p in r)) for r in rounds)
            verdict = "PASS" if ratio >= SPEED_TARGET else "MISS"
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"   {name:<16} {node_fps:>9.2f} {core_fps:>9.2f} {ratio:>10.3f} {spread:>12} "
                  f"{'>= ' + str(SPEED_TARGET):>7}  {verdict:<7}  {1000 / node_fps:>8.1f} {1000 / core_fps:>8.1f} "
                  f"{extra:>+11.1f}  {alerts:>12}")
        print(f"   decoding the mp4 to RGB alone (the capture thread's work, overlapped with inference on 2 cores): "
              f"{statistics.median(decode_ms):.1f} ms/frame")
        got = console.snapshot()
        print(f"\n   MQTT: {total_alerts} alerts raised, {got['event']} match events and {got['state']} state messages "
              f"received by operator.console, {got['audit']} audit checkpoints by admin.ops")
        print("   node: Node.run on each part (decode in the capture thread, every frame analysed, tracker, events);")
        print("   its time runs from Pipeline.start to the last frame done. core: analyse + match on the same frames")
        print("   decoded into memory beforehand, right before or after (alternating). fps: median over rounds of")
        print("   the round's frames / time; node/core: median of the per-part ratios (min-max); node extra: median")
        print("   of the per-part differences in ms per frame.")
    finally:
        if console is not None:
            console.close()
        if site is not None:
            site.broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
