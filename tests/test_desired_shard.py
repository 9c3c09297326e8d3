"""A shard pushed before a device's first connection is not lost: `edge-fleet shard push` leaves the signed
command retained at the broker as the device's desired shard, and the real node (`edge.node.Node` with MQTT
on, real models, real mosquitto from `edge-fleet broker config`) converges to it on every connection.

One story, in order: push v1 before the node has ever connected (no session at the broker) -> the node
starts and puts v1 in force; its session is thrown away and it restarts -> the retained v1 is seen again and
let go without an error or a record, v1 stays; v2 is pushed while it runs -> v2 in force; a tampered copy is
left retained and the node restarts with a fresh session -> refused, recorded, v2 stays."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from mqttworld import Peer, wait_for
from test_events_cli import PASS, Site, site  # noqa: F401 - `site` is the fixture: fleet, device, broker
from test_fleet_cli import EXAMPLES, FOOTAGE, deploy, ok, run

from edge.audit import AuditEntry
from edge.config import CameraConfig, MqttConfig, NodeConfig, TrackingConfig
from edge.events.commands import shard_push_args
from edge.node import Node
from edge.systemd import Notifier
from edge.tls import DeviceTLS
from edge.trust.canonical import canonical
from edge.trust.times import now
from edge.vision.analyzer import VisionConfig
from edge.vision.detect import DetectorConfig, TilePlan
from edge.watchlist.store import ShardStore
from provisioning.commands import sign_command
from provisioning.fleet import Fleet
from provisioning.link import FleetClient, publish_commands
from provisioning.operators import fleet_settings

FAST = VisionConfig(detector=DetectorConfig(tiles=TilePlan()))


@dataclass
class Running:
    node: Node
    stop: threading.Event
    thread: threading.Thread
    result: list[int]

    def version(self) -> int | None:
        cur = self.node.watchlist.current(now())
        return None if cur is None else cur.manifest.version

    def commands(self) -> list[AuditEntry]:
        audit = self.node.audit  # None until the node has opened it
        return [] if audit is None else [e for e in audit.entries() if e.kind == "command"]


def node_config(where: Site, tmp_path: Path) -> NodeConfig:
    """The node as a site runs it, on a still image of someone not listed at two frames a second (little CPU,
    no alerts)."""
    camera = CameraConfig(id="gate-a", source="replay", paths=(FOOTAGE / "biden.jpg",), realtime=True, loop=True,
                          hold_frames=1, fps=2.0)
    mqtt = MqttConfig(where.url, where.fleet / "operators" / "console.json", state_every_s=30.0)
    return NodeConfig(source_file=None, state_dir=where.node, run_dir=tmp_path / "run", camera=camera, vision=FAST,
                      tracking=TrackingConfig(), mqtt=mqtt)


@contextmanager
def running(config: NodeConfig) -> Iterator[Running]:
    node = Node(config, out=io.StringIO(), notifier=Notifier(environ={}), harden=False)
    stop, result = threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(node.run(stop)), name="test-node")
    thread.start()
    r = Running(node, stop, thread, result)
    try:
        yield r
    finally:
        stop.set()
        thread.join(60)
    assert result == [0], "the node did not stop cleanly"


def forget_session(where: Site) -> None:
    """What the broker does when the device's session expires: the device's identity connects with a clean
    start and no session expiry, which discards its session (and anything queued in it)."""
    tls = DeviceTLS(where.node)
    p = Peer(where.broker, "cam-01", clean=True, session_expiry=0, ca=tls.ca, cert=(tls.cert, tls.key)).connect()
    assert p.connack is not None and not p.connack.is_failure
    p.close()


def push(where: Site, shard: Path, wait: str) -> tuple[int, dict[str, object], str]:
    proc = run("edge-fleet", "shard", "push", str(shard), "--devices", "cam-01", "--broker", where.url, "--wait", wait,
               "--fleet-dir", str(where.fleet))
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def sessions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "session present" in r.getMessage()]


def test_a_shard_pushed_before_the_first_connection_reaches_the_node_and_stays(
        site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811 - the fixture
    caplog.set_level(logging.INFO, logger="edge.events.link")
    caplog.set_level(logging.DEBUG, logger="edge.events.commands")  # last: the capture's own level is this one
    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
       "--name", "stadium", "--fleet-dir", str(site.fleet))
    shards: list[Path] = []
    for _ in range(3):
        shards.append(tmp_path / f"v{len(shards) + 1}.shard")
        ok("edge-fleet", "shard", "issue", "--deployment", str(deploy(tmp_path)), "--devices", "cam-01",
           "--out", str(shards[-1]), "--fleet-dir", str(site.fleet))
    v1, v2, v3 = shards
    config = node_config(site, tmp_path)
    store = ShardStore(site.node)

    # 1. pushed while the device has never connected: the broker has no session for it, keeps it retained
    code, pushed, said = push(site, v1, "1")
    assert code == 3 and pushed["code"] == "no-answer", said
    assert "no session at the broker yet" in str(pushed["reason"]) and "desired shard" in said
    assert store.state()["current"] is None

    with running(config) as r:  # first connection: the retained desired state arrives, v1 goes in force
        assert wait_for(lambda: r.version() == 1, timeout=120)
        assert wait_for(lambda: len(r.commands()) == 1)
        (answer,) = [e.data for e in r.commands()]
        assert (answer["command_id"], answer["verb"], answer["ok"]) == (pushed["command_id"], "shard-push", True)
        assert r.node.ready.is_set() or wait_for(r.node.ready.is_set)
    assert sessions(caplog) == [f"connected to 127.0.0.1:{site.broker.port} (session present: False)"]

    # 2. its session is gone (expired, or the broker lost it): a fresh session sees the retained v1 again
    forget_session(site)
    caplog.clear()
    with running(config) as r:
        assert wait_for(lambda: any("was taken before" in m.getMessage() for m in caplog.records), timeout=120)
        assert r.version() == 1 and len(r.commands()) == 1  # no second answer, no record: nothing happened
        # 3. a newer push while it runs supersedes v1
        code, newer, said = push(site, v2, "60")
        assert code == 0, said
        assert newer["ok"] and newer["detail"] == {"shard_id": "stadium-2026-12-05", "version": 2, "entries": 2,
                                                   "deployment_id": "dep-2026-12-05-stadium",
                                                   "already_in_force": False}
        assert r.version() == 2
    assert sessions(caplog) == [f"connected to 127.0.0.1:{site.broker.port} (session present: False)"]
    quiet = [m for m in caplog.records if m.name == "edge.events.commands" and m.levelno >= logging.WARNING]
    assert quiet == [], [m.getMessage() for m in quiet]
    assert store.state()["current"]["version"] == 2

    # 4. a tampered shard push left retained (the signed command for v3 with one character of the shard
    # changed): refused on the next connection, answered and recorded, v2 stays in force
    fleet = Fleet(site.fleet)
    _cid, good = sign_command(fleet, "cam-01", "shard-push", shard_push_args(v3.read_bytes()))
    doc = json.loads(good)
    b64 = doc["signed"]["args"]["shard"]
    mid = len(b64) // 2
    doc["signed"]["args"]["shard"] = b64[:mid] + ("A" if b64[mid] != "A" else "B") + b64[mid + 1:]
    tampered = canonical(doc)
    admin = fleet_settings(fleet, site.url, "admin", None, PASS.encode())
    (left,) = publish_commands(FleetClient(admin, admin.cert_file.stem), fleet,
                               {"cam-01": ("shard-push", doc["signed"]["command_id"], tampered)}, 0.5,
                               timedelta(hours=1))
    assert left.code == "no-answer"  # the node is not running; the broker keeps it retained
    forget_session(site)
    with running(config) as r:
        assert wait_for(lambda: len(r.commands()) == 3, timeout=120)
        refused = r.commands()[-1].data
        assert (refused["command_id"], refused["ok"], refused["code"]) == (
            doc["signed"]["command_id"], False, "BadSignatureError")
        assert r.version() == 2
    assert store.state()["current"]["version"] == 2
