"""The console's MQTT side against a real mosquitto: verified events become alerts and nothing else does, device
state and its last will, the persistent session across a console restart, and (with the demo's real node) the
signed review command reaching the node, which records it, and its answer recorded by the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from consolefleet import Clock, SmallFleet, review_key_path, small_fleet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqttworld import Broker, Peer, fleet_broker, wait_for

from edge.audit import AuditLog
from edge.demo.run import DEMO_PASSPHRASE, FOOTAGE
from edge.events.messages import audit_checkpoint_body, command_result_body, sign_message, state_body
from edge.events.topics import DeviceTopics
from edge.identity import load_identity
from edge.trust.root import parse_envelope
from edge.trust.times import now
from edge.vault import STORAGE_PURPOSE, EvidenceGoneError, EvidenceVault
from provisioning.console.fleetview import AuditReportError, FleetView
from provisioning.console.service import Console, open_console
from provisioning.console.service import EvidenceGoneError as ConsoleEvidenceGone
from provisioning.console.store import AlertStore
from provisioning.fleet import PASSPHRASE_ENV, Fleet
from provisioning.link import FleetClient
from provisioning.operators import fleet_settings
from provisioning.reports import AuditSource

PASSWORD = "a long enough password"


def console_on(broker: Broker, world: SmallFleet, console_dir: Path) -> Console:
    client = FleetClient(broker.settings("operator.console"), "operator.console")
    review = world.fleet.read_key(review_key_path(world.fleet))
    return Console(world.fleet, console_dir, client, world.operator, review, Clock(now()), answer_wait=2.0)


def resign(payload: bytes, key: Ed25519PrivateKey, **changes: object) -> bytes:
    body = json.loads(payload)
    body.pop("sig")
    return sign_message({**body, **changes}, key)


def test_only_verified_events_become_alerts_and_the_session_outlives_the_console(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = small_fleet(tmp_path, monkeypatch)
    console = console_on(broker, world, tmp_path / "console")
    console.start()
    heard: list[str] = []
    console.listen(heard.append)
    try:
        assert wait_for(lambda: console.ingest.health.subscribed), console.ingest.health
        cam1, cam2 = (Peer(broker, d).connect() for d in ("cam-01", "cam-02"))
        topic, genuine_id, genuine = world.event("cam-01")
        rogue = Ed25519PrivateKey.generate()
        _t2, _id2, other = world.event("cam-02", seq=2)
        world.fleet.revoke_device("cam-02")
        _t3, _id3, revoked = world.event("cam-02", seq=3)
        cam1_key = world.devices["cam-01"].signing_key
        sends = [(cam1, topic, resign(genuine, rogue)),  # forged: another key
                 (cam1, topic, genuine.replace(b'"score":0.953', b'"score":0.999')),  # altered in transit
                 (cam1, topic, resign(other, cam1_key)),  # cam-02's event, re-signed by cam-01: wrong origin
                 (cam2, DeviceTopics("cam-02").match, revoked),  # a revoked device
                 (cam1, topic, genuine), (cam1, topic, genuine)]  # genuine, twice
        infos = [(p, p.client.publish(t, data, qos=1)) for p, t, data in sends]
        assert wait_for(lambda: all(i.mid in p.acks for p, i in infos))

        def flags() -> list[str]:
            journal = (tmp_path / "console" / "audit" / "audit.jsonl").read_text().splitlines()
            return sorted(r["data"]["flag"] for r in map(json.loads, journal) if r["kind"] == "event-rejected")

        c = console.tail.counts
        assert wait_for(lambda: c.printed + c.duplicates + c.rejected == len(sends) and len(flags()) == 4
                        and len(console.queue()) == 1 and len(heard) == 1), console.tail.counts
        assert console.tail.counts.to_json() == {"received": 6, "printed": 1, "duplicates": 1, "rejected": 4}
        assert [a.event_id for a in console.queue()] == [genuine_id] and heard == [genuine_id]
        assert console.alert(genuine_id).score == 0.953 and console.alert(genuine_id).has_face
        assert flags() == ["MessageOriginError", "MessageSignatureError", "MessageSignatureError",
                           "UnknownDeviceError"]

        # device state: signed and retained; a forged one is dropped; the last will says offline
        ident = world.devices["cam-01"]
        online = sign_message(state_body("cam-01", "online", now(), "boot-1", {"fps": 11.5, "camera": "gate-a"}),
                              ident.signing_key)
        forged = sign_message(state_body("cam-01", "offline", now(), "boot-1", {}), rogue)
        for payload in (online, forged):
            info = cam1.client.publish(DeviceTopics("cam-01").state, payload, qos=1, retain=True)
            assert wait_for(lambda i=info: i.mid in cam1.acks)
        assert wait_for(lambda: console.ingest.health.unverified == 1)
        view = {d.device_id: d for d in console.devices()}
        assert view["cam-01"].online is True and view["cam-01"].state["detail"] == {"fps": 11.5, "camera": "gate-a"}
        assert view["cam-02"].online is None and view["cam-02"].last_seen is None
        offline = sign_message(state_body("cam-01", "offline", now(), "boot-1", {}), ident.signing_key)
        info = cam1.client.publish(DeviceTopics("cam-01").state, offline, qos=1, retain=True)
        assert wait_for(lambda: {d.device_id: d for d in console.devices()}["cam-01"].online is False)
    finally:
        console.stop()

    # while the console is down, an event waits for it in its persistent session
    _t4, later_id, later = world.event("cam-01", seq=4)
    info = cam1.client.publish(topic, later, qos=1)
    assert wait_for(lambda: info.mid in cam1.acks) and cam1.acks[info.mid] == 0  # queued for the console's session
    cam1.close()
    cam2.close()
    again = console_on(broker, world, tmp_path / "console")
    again.start()
    try:
        assert wait_for(lambda: later_id in [a.event_id for a in again.queue()])
        assert [a.event_id for a in again.queue()] == [later_id, genuine_id]
    finally:
        again.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "demo", *args], capture_output=True, text=True,
                          env={**os.environ, PASSPHRASE_ENV: DEMO_PASSPHRASE}, timeout=300, check=False)


def test_reviews_reach_the_real_node_which_records_them_and_the_answers_are_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = tmp_path / "demo"
    first = run("--demo-dir", str(demo), "--tiles", "off")  # sets up the demo fleet, device and watch list
    assert first.returncode == 0, first.stderr
    monkeypatch.setenv(PASSPHRASE_ENV, DEMO_PASSPHRASE)
    fleet = Fleet(demo / "fleet")
    broker, url = fleet_broker(fleet.dir, tmp_path / "broker", DEMO_PASSPHRASE)
    broker.start()
    settings = fleet_settings(fleet, url, "operator", "demo", DEMO_PASSPHRASE.encode())
    console = open_console(fleet.dir, tmp_path / "console", settings, fleet.dir / "operators" / "demo.pem",
                           review_key_path(fleet), answer_wait=2.0)
    try:
        console.start()  # its persistent session: the node's events are routed to it from now on
        assert wait_for(lambda: console.ingest.health.subscribed), console.ingest.health
        second = run("--demo-dir", str(demo), "--tiles", "off", "--broker", url)
        assert second.returncode == 0, second.stderr
        sent = [json.loads(line)["event_id"] for line in second.stdout.splitlines()]
        deployment = json.loads(second.stdout.splitlines()[0])["deployment_id"]
        assert len(sent) == 2
        assert wait_for(lambda: len(console.queue()) == 2, timeout=30)
        confirm, dismiss = sorted(sent)
        for event_id in sent:  # real crops, opened with the operator key; the entry and its photo from the fleet
            a = console.alert(event_id)
            assert a.has_face and a.has_context and a.entry is not None and a.entry.name == "Barack Obama (demo)"
            assert console.evidence(event_id, "face")[0][:3] == b"\xff\xd8\xff"
            assert console.reference_photo(a.entry_id, 0) == ((FOOTAGE / "obama.jpg").read_bytes(), "image/jpeg")
        console.accounts.add("PC-4711", "reviewer", PASSWORD)
        console.accounts.add("PC-0815", "reviewer", PASSWORD)
        assert console.decide(confirm, console.accounts.get("PC-4711"), "confirmed", "").outcome == "confirmed"
        dismissed = console.decide(dismiss, console.accounts.get("PC-0815"), "dismissed", "not him")
        assert dismissed.outcome == "dismissed" and not dismissed.has_face
        with pytest.raises(ConsoleEvidenceGone):
            console.evidence(dismiss, "face")
        # the node is not running: both commands wait in its session (the sender says there is no answer yet)
        assert wait_for(lambda: all((console.alert(e).node_answer or "").startswith("no answer yet") for e in sent),
                        timeout=30), [console.alert(e).node_answer for e in sent]
        third = run("--demo-dir", str(demo), "--tiles", "off", "--broker", url)
        assert third.returncode == 0, third.stderr
        assert wait_for(lambda: all(console.alert(e).node_answer == "recorded" for e in sent), timeout=60), \
            [console.alert(e).node_answer for e in sent]
    finally:
        console.stop()
        broker.stop()
    node = demo / "node"
    records = [e.data for e in AuditLog.in_state_dir(node, now).entries() if e.kind == "review"]
    assert sorted((r["event_id"], r["outcome"], tuple(r["reviewers"])) for r in records) == sorted(
        [(confirm, "confirmed", ("PC-4711",)), (dismiss, "dismissed", ("PC-0815",))])
    vault = EvidenceVault.in_state_dir(node, load_identity(node).storage_key(STORAGE_PURPOSE), now)
    for event_id in sent:  # the node's copy went with the review
        with pytest.raises(EvidenceGoneError):
            vault.read(event_id)
    vault.close()
    results = [json.loads(x)["data"] for x in (tmp_path / "console" / "audit" / "audit.jsonl").read_text().splitlines()
               if json.loads(x)["kind"] == "review-result"]
    assert sorted(r["event_id"] for r in results) == sorted(sent) and {r["answer"] for r in results} == {"recorded"}

    # the deployment report: the console's decisions beside the node's verified audit log; a tampered log refused
    store = AlertStore(tmp_path / "console", now)
    log = node / "audit" / "audit.jsonl"
    view = FleetView(fleet, now, [AuditSource("demo-node", log)])
    report = view.report(store.counts())
    assert {k: v for k, v in report[deployment].items() if k != "device_faces_seen"} == {
        "alerts": 2, "confirmed": 1, "dismissed": 1, "unreviewed": 0,
        "device_alerts": 2, "device_confirmed": 1, "device_dismissed": 1, "device_unreviewed": 0}
    log.write_bytes(log.read_bytes().replace(b'"outcome":"confirmed"', b'"outcome":"dismissed"'))
    with pytest.raises(AuditReportError, match=r"demo-node=.*audit\.jsonl: refused"):
        view.report(store.counts())
    store.close()


def signed(world: SmallFleet, device: str, body: dict[str, object]) -> bytes:
    return sign_message(body, world.devices[device].signing_key)


def test_signed_but_malformed_device_messages_are_dropped_and_the_ingest_goes_on(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = small_fleet(tmp_path, monkeypatch)
    console = console_on(broker, world, tmp_path / "console")
    console.start()
    cam1 = Peer(broker, "cam-01").connect()
    try:
        assert wait_for(lambda: console.ingest.health.subscribed), console.ingest.health
        topics = DeviceTopics("cam-01")
        checkpoint = audit_checkpoint_body("cam-01", 7, "ab" * 32, now())
        no_seq = {k: v for k, v in checkpoint.items() if k != "seq"}
        answer = command_result_body("019a0000-0000-7000-8000-0000000000ad", "cam-01",
                                     "019a0000-0000-7000-8000-0000000000ae", "review", True, "ok", "done", now())
        odd_answer = {**{k: v for k, v in answer.items() if k != "detail"}, "ok": "yes"}
        odd_state = state_body("cam-01", "online", now(), "boot-1", {"effectiveness": ["not", "an", "object"]})
        _t, event_id, event = world.event("cam-01", reviewers_required=1, retention_days=30)
        sends = [(topics.audit, signed(world, "cam-01", no_seq)), (topics.command_result, signed(world, "cam-01",
                                                                                                   odd_answer)),
                 (topics.state, signed(world, "cam-01", odd_state)), (topics.match, event),
                 (topics.audit, signed(world, "cam-01", checkpoint))]
        infos = [cam1.client.publish(t, data, qos=1) for t, data in sends]
        assert wait_for(lambda: all(i.mid in cam1.acks for i in infos))
        # each bad body is dropped and counted; the genuine event after them is an alert, the checkpoint kept
        assert wait_for(lambda: [a.event_id for a in console.queue()] == [event_id]
                        and "cam-01" in console.fleet_view.audit_heads()), console.ingest.health
        health = console.ingest.health
        assert (health.malformed, health.store_errors) == (3, 0)  # (unverified: other tests' retained states)
        assert console.fleet_view.audit_heads()["cam-01"].seq == 7
        assert {d.device_id: d for d in console.devices()}["cam-01"].online is None  # the odd state not taken
    finally:
        cam1.close()
        console.stop()


def test_the_review_thread_survives_a_bad_answer_and_each_answer_arrives_once(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = small_fleet(tmp_path, monkeypatch)
    console = console_on(broker, world, tmp_path / "console")
    console.start()
    node = Peer(broker, "cam-01").connect().subscribe(DeviceTopics("cam-01").command("review"))
    console.accounts.add("PC-4711", "reviewer", PASSWORD)
    reviewer = console.accounts.get("PC-4711")

    def command_ids() -> list[str]:
        with node.lock:
            return [parse_envelope(bytes(m.payload), "edge-command").body["command_id"] for m in node.messages]

    def answer(command_id: str, n: int, **changes: object) -> None:
        body = command_result_body(f"019a0000-0000-7000-8000-00000000{n:04x}", "cam-01", command_id, "review",
                                   True, "ok", "done", now())
        info = node.client.publish(DeviceTopics("cam-01").command_result,
                                   signed(world, "cam-01", {**body, **changes}), qos=1)
        assert wait_for(lambda: info.mid in node.acks)

    try:
        assert wait_for(lambda: console.ingest.health.subscribed), console.ingest.health
        for seq in (1, 2):
            topic, _e, event = world.event("cam-01", seq=seq, reviewers_required=1, retention_days=30)
            node.client.publish(topic, event, qos=1)
        assert wait_for(lambda: len(console.queue()) == 2)
        first, second = sorted(a.event_id for a in console.queue())
        console.decide(first, reviewer, "dismissed", "")
        assert wait_for(lambda: len(command_ids()) == 1)
        answer(command_ids()[0], 1, detail=None)  # signed by the device, but detail is not an object
        # not an answer the console can read: the sender says there is none yet, and goes on with the next one
        assert wait_for(lambda: (console.alert(first).node_answer or "").startswith("no answer yet"))
        console.decide(second, reviewer, "dismissed", "")
        assert wait_for(lambda: len(command_ids()) == 2)
        answer(command_ids()[1], 2)
        assert wait_for(lambda: console.alert(second).node_answer == "recorded")
        answer(command_ids()[0], 3)  # the node's late, well-formed answer to the first: taken by the ingest
        assert wait_for(lambda: console.alert(first).node_answer == "recorded")
        # a state after the answers: once it is in, every copy of the answers before it is too
        online = state_body("cam-01", "online", now(), "boot-1", {})
        node.client.publish(DeviceTopics("cam-01").state, signed(world, "cam-01", online), qos=1)
        assert wait_for(lambda: {d.device_id: d for d in console.devices()}["cam-01"].online is True)
        # the broken answer and the late one reached the ingest, once each (one cmd-result subscription)
        assert console.ingest.health.answers == 2 and console.ingest.health.malformed == 1
    finally:
        node.close()
        console.stop()
