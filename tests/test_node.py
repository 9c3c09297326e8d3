"""The node end to end on real footage and real models: alerts once per track for the listed person and
never for anyone else, matching stops when the shard expires mid-run, sd_notify on a real socket."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from mqttworld import wait_for

from edge.config import CameraConfig, NodeConfig, TrackingConfig
from edge.demo.run import CAMERA, FOOTAGE, DemoSite, prepare, run_demo
from edge.events.messages import open_match_event
from edge.node import Node
from edge.systemd import Notifier
from edge.trust.keys import ed25519_public
from edge.trust.times import now
from edge.vision.analyzer import VisionConfig
from edge.vision.detect import DetectorConfig, TilePlan

FAST = VisionConfig(detector=DetectorConfig(tiles=TilePlan()))  # one whole-frame pass: the footage is close-up


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, object]], str]]:
    """One demo run (first run: sets up its fleet) shared by the tests that only read its output."""
    root = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(FAST, out, demo_dir=root, log=err, harden=False) == 0
    yield root, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def entry_ids(root: Path) -> dict[str, str]:
    doc = json.loads((root / "fleet" / "watchlists" / "demo" / "entries.json").read_text())
    return {e["reference"]: e["id"] for e in doc["entries"]}


def test_listed_person_alerts_once_per_track_others_never(demo: tuple[Path, list[dict[str, object]], str]) -> None:
    root, events, summary = demo
    ids = entry_ids(root)
    obama, collins = ids["WL-2026-0001"], ids["WL-2026-0002"]
    assert [e["entry_id"] for e in events] == [obama, obama], summary  # obama2.jpg and obama3.jpg
    assert len({e["track_id"] for e in events}) == 2  # two appearances, two tracks, one alert each
    assert collins not in {e["entry_id"] for e in events}
    for e in events:
        assert e["camera_id"] == CAMERA and e["threshold"] == 0.94 and e["frames_agreeing"] >= 3
        assert e["model"]["sha256"] and e["shard"]["version"] >= 1  # type: ignore[index]
        assert e["evidence"]["base64_chars"] > 1000  # type: ignore[index]
    assert "2 alerts" in summary and "non-matching faces discarded" in summary


def test_the_printed_events_are_the_signed_events(demo: tuple[Path, list[dict[str, object]], str],
                                                  tmp_path: Path) -> None:
    root, _, _ = demo
    out = io.StringIO()
    site = DemoSite(root)
    config = node_config(site, tmp_path)
    node = Node(config, out=out, notifier=Notifier(environ={}), print_events=True, harden=False)
    node.run(threading.Event())
    device = json.loads((root / "node" / "identity" / "device.json").read_text())
    key = ed25519_public(device["ed25519"])
    lines = out.getvalue().splitlines()
    # obama2, then biden, then obama3: a different photograph of him is not the same face frame to frame
    # (cosine below min_similarity), so a new track and a second alert
    assert len(lines) == 2
    for line in lines:  # without an operator key there is no evidence, so the line is the whole signed event
        event = open_match_event(line.encode(), key, "demo-node", now())
        assert event.evidence is None and event.threshold == 0.94


def node_config(site: DemoSite, tmp_path: Path, loop: bool = False) -> NodeConfig:
    camera = CameraConfig(id=CAMERA, source="replay", realtime=False, hold_frames=30, fps=24.0, loop=loop,
                          paths=tuple(FOOTAGE / f for f in ("obama2.jpg", "biden.jpg", "obama3.jpg")))
    return NodeConfig(source_file=None, state_dir=site.node_dir, run_dir=tmp_path / "run", camera=camera,
                      vision=FAST, tracking=TrackingConfig())


def test_matching_stops_when_the_shard_expires_mid_run(demo: tuple[Path, list[dict[str, object]], str],
                                                      tmp_path: Path) -> None:
    root, _, _ = demo
    site = DemoSite(root)
    prepare(site, FAST, io.StringIO())  # a fresh shard, valid for one hour
    jump = timedelta(0)

    def clock() -> datetime:
        return now() + jump

    out = io.StringIO()
    stop = threading.Event()
    node = Node(node_config(site, tmp_path, loop=True), out=out, notifier=Notifier(environ={}), clock=clock,
                harden=False)
    t = threading.Thread(target=node.run, args=(stop,))
    t.start()
    try:
        assert wait_for(lambda: node.pipeline is not None and node.pipeline.counters.alerts >= 1, timeout=60)
        jump = timedelta(hours=2)  # past the shard's expiry (and the deployment's end)
        p = node.pipeline
        assert p is not None
        assert wait_for(lambda: p.counters.outside_deployment > 0, timeout=30)
        alerts, processed = p.counters.alerts, p.counters.processed
        frames = p.counters.frames
        assert wait_for(lambda: p.counters.frames > frames + 100, timeout=60)  # it keeps reading frames...
        assert p.counters.alerts == alerts and p.counters.processed <= processed + 1  # ...but matches none
        assert node.watchlist.current(clock()) is None  # and the watch list is wiped from memory
        assert p.refusal is not None and p.refusal.code == "no-shard"
    finally:
        stop.set()
        t.join(30)


def test_sd_notify_ready_then_watchdog_stops_when_inference_stalls(
        demo: tuple[Path, list[dict[str, object]], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = demo
    site = DemoSite(root)
    prepare(site, FAST, io.StringIO())
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    received: list[tuple[float, str]] = []

    def listen(until: threading.Event) -> None:
        while not until.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            received.extend((time.monotonic(), line) for line in data.decode().splitlines())

    config = replace(node_config(site, tmp_path, loop=True), watchdog_stall_s=1.5)
    stop, done = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen, args=(done,))
    listener.start()
    node = Node(config, out=io.StringIO(), harden=False)
    t = threading.Thread(target=node.run, args=(stop,))
    t.start()
    release = threading.Event()
    try:
        assert wait_for(lambda: any(m == "READY=1" for _, m in received), timeout=60)
        assert wait_for(lambda: sum(m == "WATCHDOG=1" for _, m in received) >= 3, timeout=10)
        assert any(m.startswith("STATUS=") and "fps" in m for _, m in received)
        p = node.pipeline
        assert p is not None
        real = p.analyzer.analyse

        def stalled(*a: object, **kw: object) -> object:  # fault injection: inference hangs
            release.wait()
            return real(*a, **kw)  # type: ignore[arg-type]

        p.analyzer.analyse = stalled  # type: ignore[method-assign]
        time.sleep(1.5 + 1.0)  # the stall is noticed after stall_s
        cut = time.monotonic()
        time.sleep(2.0)
        assert not [m for at, m in received if at > cut and m == "WATCHDOG=1"], "watchdog still fed while stalled"
        release.set()
        assert wait_for(lambda: any(at > cut and m == "WATCHDOG=1" for at, m in received), timeout=10)
    finally:
        release.set()
        stop.set()
        t.join(30)
        done.set()
        listener.join()
        sock.close()
    assert any(m == "STOPPING=1" for _, m in received)


def test_a_camera_not_in_the_deployment_detects_nothing(demo: tuple[Path, list[dict[str, object]], str],
                                                        tmp_path: Path) -> None:
    root, _, _ = demo
    site = DemoSite(root)
    prepare(site, FAST, io.StringIO())
    config = node_config(site, tmp_path)
    config = replace(config, camera=replace(config.camera, id="side-door"))
    out = io.StringIO()
    node = Node(config, out=out, notifier=Notifier(environ={}), harden=False)
    node.run(threading.Event())
    assert node.pipeline is not None
    c = node.pipeline.counters.snapshot()
    assert c["frames"] == 90 and c["outside_deployment"] == 90  # dropped before detection, every one
    assert c["processed"] == 0 and c["faces"] == 0 and c["alerts"] == 0 and out.getvalue() == ""
    assert node.pipeline.refusal is not None and "side-door" in node.pipeline.refusal.reason


def test_a_failing_inference_thread_stops_the_node_with_an_error(
        demo: tuple[Path, list[dict[str, object]], str], tmp_path: Path) -> None:
    root, _, _ = demo
    site = DemoSite(root)
    prepare(site, FAST, io.StringIO())
    node = Node(node_config(site, tmp_path, loop=True), out=io.StringIO(), notifier=Notifier(environ={}),
                harden=False)
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(node.run(stop)))
    t.start()
    try:
        assert wait_for(lambda: node.pipeline is not None and node.pipeline.counters.processed > 2, timeout=60)
        p = node.pipeline
        assert p is not None

        def broken(*_a: object, **_kw: object) -> object:  # fault injection: a bug deep in inference
            raise RuntimeError("inference bug")

        p.analyzer.analyse = broken  # type: ignore[method-assign]
        t.join(60)
    finally:
        stop.set()
        t.join(30)
    assert result == [1]  # non-zero: systemd's Restart=on-failure brings it back
    assert p.error is not None and "inference bug" in p.error
    assert p.pool.in_use == 0 and all(not b.any() for b in p.pool.buffers())


def test_the_audit_log_records_the_run_without_biometric_data(
        demo: tuple[Path, list[dict[str, object]], str]) -> None:
    from edge.audit import verify_log

    root, events, _ = demo
    path = root / "node" / "audit" / "audit.jsonl"
    raw = path.read_bytes()
    device = json.loads((root / "node" / "identity" / "device.json").read_text())
    cps = [c for c in (path.with_name("checkpoints.jsonl")).read_bytes().split(b"\n") if c]
    v = verify_log(raw, str(path), ed25519_public(device["ed25519"]), cps)
    assert v.checkpoint_seq is not None and v.checkpoint_seq >= 1
    records = [json.loads(line) for line in raw.splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "node-start" and "shard-accepted" in kinds and "threshold" in kinds
    # the use of the deployment is on the record: matching began once the shard was in force, and ended with
    # the run (G8)
    first = records[:kinds.index("node-stop") + 1]  # the fixture's run (other tests run the demo again later)
    starts = [r["data"] for r in first if r["kind"] == "deployment-start"]
    ends = [r["data"] for r in first if r["kind"] == "deployment-end"]
    assert len(starts) == 1 and starts[0]["camera_id"] == "demo-cam" and starts[0]["threshold"] == 0.94
    assert ends == [{"deployment_id": starts[0]["deployment_id"], "reason": "node stopping"}]
    assert kinds.index("shard-accepted") < kinds.index("deployment-start") < kinds.index("alert") \
        < kinds.index("deployment-end") < kinds.index("node-stop")
    # causal: every alert comes after the start of its deployment's use, with no end in between
    in_use: str | None = None
    for r in records:
        if r["kind"] == "deployment-start":
            in_use = r["data"]["deployment_id"]
        elif r["kind"] == "deployment-end":
            in_use = None
        elif r["kind"] == "alert":
            assert r["data"]["deployment_id"] == in_use, r
    alerts = [r["data"] for r in records if r["kind"] == "alert"]
    assert [a["event_id"] for a in alerts[:2]] == [e["event_id"] for e in events]
    assert kinds.count("node-stop") >= 1
    for word in (b"embedding", b"crop", b"ciphertext", b"\xff\xd8"):
        assert word not in raw


def test_the_stop_bound_is_the_units_stop_timeout() -> None:
    """Stopping (outbox drain included) is bounded by systemd's TimeoutStopSec: one number, checked here."""
    from edge.node import LINK_STOP_S, PIPELINE_JOIN_S, STOP_MARGIN_S, STOP_TIMEOUT_S

    unit = (Path(__file__).parents[1] / "systemd" / "edge-node.service").read_text()
    [line] = [x for x in unit.splitlines() if x.startswith("TimeoutStopSec=")]
    assert float(line.split("=", 1)[1].rstrip("s")) == STOP_TIMEOUT_S
    assert PIPELINE_JOIN_S + 2 * LINK_STOP_S + STOP_MARGIN_S < STOP_TIMEOUT_S  # time is left to drain
