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
    text = conf.read_text().replace("log_dest syslog", "log_dest stdout")
    if os.geteuid() == 0:  # the test's temp dirs are private; production runs as the mosquitto user
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
    second = json.loads(again.stdout)
    assert again.returncode == 1 and second["code"] == "ShardReplayError"  # same shard again: refused, said why
