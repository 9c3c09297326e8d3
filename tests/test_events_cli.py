"""The operator's and admin's MQTT tools end to end, as separate processes, against the broker configuration
`edge-fleet broker config` writes for production: certificates from the fleet CA, a device whose TLS key
was born on it, `events tail` flagging forged and altered events, `shard push` answered by the node."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqttworld import Broker, Peer, free_port, wait_for
from test_fleet_cli import EXAMPLES, FOOTAGE, deploy, ok, run

from edge.events.ids import uuid7
from edge.events.link import BrokerSettings
from edge.events.messages import MATCH_EVENT, ModelRef, ShardRef, sign_message
from edge.events.service import EventService, MatchDraft, shard_push_handler
from edge.events.topics import DeviceTopics
from edge.identity import load_identity
from edge.tls import DeviceTLS
from edge.trust.keys import x25519_public
from edge.trust.times import format_time, now
from edge.vision.manifest import load_manifest
from edge.watchlist.loader import AcceptedShard
from edge.watchlist.store import ShardStore
from provisioning.ca import FleetCA

PASS = "correct horse"


@dataclass
class Site:
    fleet: Path
    node: Path
    broker: Broker
    url: str


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[Site]:
    f, node, bdir = tmp_path / "fleet", tmp_path / "node", tmp_path / "broker"
    ok("edge-fleet", "init", "--fleet-dir", str(f), "--fleet", "acme")
    pub = tmp_path / "cam.json"
    pub.write_text(ok("edge-node", "keygen", "--device-id", "cam-01", "--state-dir", str(node)))
    ok("edge-fleet", "device", "add", "cam-01", "--public", str(pub), "--fleet-dir", str(f))
    ok("edge-node", "trust", "init", str(f / "root" / "root.1.json"), "--state-dir", str(node))
    csr = ok("edge-node", "cert", "request", "--state-dir", str(node)).splitlines()[0]
    ok("edge-fleet", "cert", "issue", "device", "cam-01", "--csr", csr, "--out", str(tmp_path / "cam-01.crt"),
       "--fleet-dir", str(f))
    ok("edge-node", "cert", "install", str(tmp_path / "cam-01.crt"), "--ca", str(f / "ca" / "ca.crt"),
       "--state-dir", str(node))
    ok("edge-fleet", "operator", "add", "console", "--fleet-dir", str(f))
    ok("edge-fleet", "cert", "issue", "admin", "ops", "--fleet-dir", str(f))
    port = free_port()
    ok("edge-fleet", "broker", "config", "--out-dir", str(bdir), "--hostname", "localhost", "--alt-name",
       "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1", "--fleet-dir", str(f))
    conf = bdir / "mosquitto.conf"
    text = conf.read_text()  # it logs to stderr, which Broker keeps in mosquitto.log
    if os.geteuid() == 0:  # the test's temp dirs are private (test_fleet_cli drops to the mosquitto user)
        text += f"user {pwd.getpwuid(0).pw_name}\n"
    conf.write_text(text)
    os.environ["EDGE_FLEET_PASSPHRASE"] = PASS
    broker = Broker(bdir, port, FleetCA(f, PASS.encode()))
    broker.start()
    yield Site(f, node, broker, f"mqtts://127.0.0.1:{port}")
    broker.stop()


def node_service(site: Site, accepted: list[AcceptedShard]) -> EventService:
    tls = DeviceTLS(site.node)
    ident = load_identity(site.node)
    settings = BrokerSettings("127.0.0.1", site.broker.port, tls.ca, tls.cert, tls.key)
    operator = x25519_public(json.loads((site.fleet / "operators" / "console.json").read_text())["x25519"])
    store = ShardStore(site.node)
    manifest = load_manifest()
    model = manifest.spec(manifest.default_embedder)
    return EventService(site.node, ident, settings, operator, store.trusted_root,
                        {"shard-push": shard_push_handler(store, model, accepted.append)})


def draft(i: int) -> MatchDraft:
    return MatchDraft("gate-a", "dep-1", f"t{i}", "wl-000001", 0.953, 0.94, ModelRef("m", "cd" * 32),
                      ShardRef("s", 1), 3)


def tail(site: Site, tmp_path: Path, idle: float) -> tuple[list[dict[str, object]], dict[str, int]]:
    proc = run("edge-fleet", "events", "tail", "--broker", site.url, "--evidence-dir", str(tmp_path / "ev"),
               "--idle-timeout", str(idle), "--fleet-dir", str(site.fleet))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stderr.strip().splitlines()[-1])["summary"]
    return [json.loads(line) for line in proc.stdout.splitlines()], summary


def test_tail_verifies_opens_dedups_and_flags(site: Site, tmp_path: Path) -> None:
    tail(site, tmp_path, 1)  # first connection creates the console's persistent session
    svc = node_service(site, [])
    svc.start()
    crops = [b"\xff\xd8 crop %d" % i for i in range(3)]
    ids = [svc.emit(draft(i), crops[i]) for i in range(3)]
    assert wait_for(lambda: svc.outbox.stats().pending == 0)
    svc.stop()
    # a device's certificate, but a payload signed with another key; and a genuine event altered in transit
    tls = DeviceTLS(site.node)
    rogue = Peer(site.broker, "cam-01", ca=tls.ca, cert=(tls.cert, tls.key)).connect()
    topic = DeviceTopics("cam-01").match
    body = _body(uuid7(), "cam-01")
    forged = sign_message(body, Ed25519PrivateKey.generate())
    tampered = sign_message(body, load_identity(site.node).signing_key).replace(b'"score":0.953', b'"score":0.999')
    assert tampered != sign_message(body, load_identity(site.node).signing_key)
    genuine = sign_message(body, load_identity(site.node).signing_key)  # sent twice: printed once
    infos = [rogue.client.publish(topic, p, qos=1) for p in (forged, tampered, genuine, genuine)]
    assert wait_for(lambda: all(i.mid in rogue.acks for i in infos))
    rogue.close()

    lines, summary = tail(site, tmp_path, 3)
    good = [x for x in lines if x["verified"]]
    flagged = [x for x in lines if not x["verified"]]
    assert [x["event_id"] for x in good] == [*ids, body["event_id"]]
    for x, crop in zip(good[:3], crops, strict=True):
        ev = x["evidence"]
        assert isinstance(ev, dict) and ev["opened"] and ev["sha256"] == hashlib.sha256(crop).hexdigest()
        assert Path(str(ev["file"])).read_bytes() == crop
    assert sorted(str(x["flag"]) for x in flagged) == ["MessageSignatureError", "MessageSignatureError"]
    assert summary == {"received": 7, "printed": 4, "duplicates": 1, "rejected": 2}


def _body(event_id: str, device_id: str) -> dict[str, object]:
    t = now()
    return {"type": MATCH_EVENT, "schema": 1, "event_id": event_id, "seq": 1, "device_id": device_id,
            "camera_id": "gate-a", "deployment_id": "dep-1", "ts": format_time(t),
            "expires": format_time(t + timedelta(hours=1)), "track_id": "t0", "entry_id": "wl-000001",
            "score": 0.953, "threshold": 0.94, "model": {"id": "m", "sha256": "cd" * 32},
            "shard": {"id": "s", "version": 1}, "frames_agreeing": 3, "evidence": None, "context": None}


def test_shard_push_is_answered_by_the_node(site: Site, tmp_path: Path) -> None:
    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
       "--name", "stadium", "--fleet-dir", str(site.fleet))
    shard = tmp_path / "s.shard"
    ok("edge-fleet", "shard", "issue", "--deployment", str(deploy(tmp_path)), "--devices", "cam-01",
       "--out", str(shard), "--fleet-dir", str(site.fleet))
    accepted: list[AcceptedShard] = []
    svc = node_service(site, accepted)
    svc.start()
    try:
        assert wait_for(lambda: svc.link.health().connected)
        out = ok("edge-fleet", "shard", "push", str(shard), "--devices", "cam-01", "--broker", site.url,
                 "--wait", "30", "--fleet-dir", str(site.fleet))
        again = run("edge-fleet", "shard", "push", str(shard), "--devices", "cam-01", "--broker", site.url,
                    "--wait", "30", "--fleet-dir", str(site.fleet))
    finally:
        svc.stop()
    first = json.loads(out)
    assert first["ok"] and first["detail"]["version"] == 1 and first["detail"]["entries"] == 2
    assert len(accepted) == 1 and accepted[0].manifest.version == 1
    accepted[0].gallery.wipe()
    # the same shard again (say, a re-run for the devices that did not answer): it is in force already, which
    # is what the admin asked for; checked again, not loaded or recorded twice
    second = json.loads(again.stdout)
    assert again.returncode == 0, again.stdout
    assert second["ok"] and second["detail"]["already_in_force"] is True and second["detail"]["version"] == 1
    assert len(accepted) == 1


def test_a_command_before_the_devices_first_connection_is_not_reported_queued(site: Site, tmp_path: Path) -> None:
    """The device has never connected, so the broker holds no session for it: a one-shot command reaches
    nobody (PUBACK 0x10) and says so (exit 5); a shard push is kept retained as the device's desired shard
    (exit 3), and the device loads it when it connects for the first time."""
    purge = run("edge-fleet", "purge", "--deployment", "dep-1", "--devices", "cam-01", "--broker", site.url,
                "--wait", "30", "--fleet-dir", str(site.fleet))
    assert purge.returncode == 5, purge.stderr
    result = json.loads(purge.stdout)
    assert result["code"] == "not-queued" and not result["ok"]
    assert "no session for cam-01" in result["reason"] and "nobody will get this command" in result["reason"]
    assert "run the command again" in result["reason"]
    assert "NOT queued" in purge.stderr and "taken by the broker" not in purge.stderr

    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
       "--name", "stadium", "--fleet-dir", str(site.fleet))
    shard = tmp_path / "s.shard"
    ok("edge-fleet", "shard", "issue", "--deployment", str(deploy(tmp_path)), "--devices", "cam-01",
       "--out", str(shard), "--fleet-dir", str(site.fleet))
    push = run("edge-fleet", "shard", "push", str(shard), "--devices", "cam-01", "--broker", site.url,
               "--wait", "1", "--fleet-dir", str(site.fleet))
    assert push.returncode == 3, push.stderr
    pushed = json.loads(push.stdout)
    assert pushed["code"] == "no-answer" and "no session at the broker yet" in pushed["reason"]
    assert "desired shard (retained)" in pushed["reason"] and "loads it when it connects" in pushed["reason"]
    assert "taken by the broker" in push.stderr

    accepted: list[AcceptedShard] = []
    svc = node_service(site, accepted)
    svc.start()
    try:
        assert wait_for(lambda: len(accepted) == 1, timeout=30)
    finally:
        svc.stop()
    assert accepted[0].manifest.version == 1 and ShardStore(site.node).state()["current"]["version"] == 1
    accepted[0].gallery.wipe()
    answered = [json.loads(line) for line in (site.node / "commands" / "journal.jsonl").read_text().splitlines()]
    assert [(a["command_id"], a["ok"]) for a in answered] == [(pushed["command_id"], True)]  # the purge: never came


def test_tail_stops_on_sigterm_as_on_ctrl_c_and_prints_every_documented_field(site: Site, tmp_path: Path) -> None:
    """`kill` (systemd, a container stop) ends `events tail` with its summary, as Ctrl-C does; each field
    it printed is one docs/mqtt.md describes."""
    import signal
    import subprocess
    import sys
    import threading

    tail(site, tmp_path, 1)  # the console's persistent session: events wait at the broker for it
    svc = node_service(site, [])
    svc.start()
    ids = [svc.emit(draft(i), b"\xff\xd8 crop %d" % i, context=b"\xff\xd8 wider %d" % i) for i in range(2)]
    assert wait_for(lambda: svc.outbox.stats().pending == 0)
    svc.stop()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioning.cli", "events", "tail", "--broker", site.url, "--evidence-dir",
         str(tmp_path / "ev"), "--fleet-dir", str(site.fleet)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "EDGE_FLEET_PASSPHRASE": PASS})
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout or ()), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: len(lines) == 2, timeout=60), proc.stderr.read() if proc.poll() is not None else ""
        assert proc.poll() is None  # still tailing: only the signal ends it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    summary = json.loads(proc.stderr.read().strip().splitlines()[-1])["summary"]
    assert summary == {"received": 2, "printed": 2, "duplicates": 0, "rejected": 0}
    assert [x["event_id"] for x in lines] == ids

    section = Path(__file__).resolve().parents[1].joinpath("docs", "mqtt.md").read_text()
    section = section[section.index("### `events tail`"):]
    section = section[:section.index("\n## ")]
    printed = set(lines[0]) | {f"evidence.{k}" for k in lines[0]["evidence"]}  # type: ignore[union-attr]
    printed |= {f"context.{k}" for k in lines[0]["context"]}  # type: ignore[union-attr]
    for field in sorted(printed):
        assert f"`{field.split('.')[-1]}`" in section, f"events tail prints {field}: not in docs/mqtt.md"
    assert str(lines[0]["context"]["file"]).endswith("-context.jpg")  # type: ignore[index]
