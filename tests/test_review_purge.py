"""Review outcomes and ordered purges reach a node through the broker as signed commands: the node records
them in its audit log, drops the reviewed evidence from its vault, destroys the purged deployment's day
keys, and `edge-fleet deployment report` counts confirmed and dismissed alerts from the verified log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mqttworld import fleet_broker

from edge.audit import AuditLog
from edge.demo.run import DEMO_PASSPHRASE
from edge.identity import load_identity
from edge.trust.times import now
from edge.vault import STORAGE_PURPOSE, EvidenceGoneError, EvidenceVault


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": DEMO_PASSPHRASE}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def start(module: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": DEMO_PASSPHRASE}
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def test_review_and_purge_commands_reach_the_node_and_its_record(tmp_path: Path) -> None:
    demo, bdir = tmp_path / "demo", tmp_path / "broker"
    first = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off")
    assert first.returncode == 0, first.stderr
    alerts = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(alerts) == 2 and alerts[0]["context"]["base64_chars"] > 0  # face and context crops, sealed
    # the demo list holds two entries: each alert says how far its score is above the runner-up's
    assert all(isinstance(a["margin"], float) and 0 < a["margin"] <= a["score"] + 1 for a in alerts), alerts
    first_deployment = alerts[0]["deployment_id"]
    node = demo / "node"
    vault = EvidenceVault.in_state_dir(node, load_identity(node).storage_key(STORAGE_PURPOSE), now)
    assert sorted(vault.event_ids()) == sorted(a["event_id"] for a in alerts)
    kept = vault.read(alerts[0]["event_id"])
    assert kept.face is not None and kept.face[:2] == b"\xff\xd8" and kept.context is not None
    vault.close()

    fleet = demo / "fleet"
    # one admin identity per tool running at once: the broker takes the client id from the certificate, so a
    # second connection with the same certificate takes the first one's session over
    for admin in ("ops", "ops2", "ops3"):
        assert run("provisioning.cli", "cert", "issue", "admin", admin, "--fleet-dir", str(fleet)).returncode == 0
    broker, url = fleet_broker(fleet, bdir, DEMO_PASSPHRASE)
    broker.start()
    try:
        common = ["--devices", "demo-node", "--broker", url, "--wait", "120", "--fleet-dir", str(fleet)]
        as_admin = [["--admin", a] for a in ("ops", "ops2", "ops3")]
        # the node is not running: the commands wait in its persistent session (the demo's first --broker
        # run creates it, so make it with a short run first)
        second = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off", "--broker", url)
        assert second.returncode == 0, second.stderr
        reviewed = json.loads(second.stdout.splitlines()[0])
        # the review is for the second run's deployment, the purge for the first's: whichever the node gets
        # first, each has its own evidence to act on
        review = start("provisioning.cli", "review", "--event", reviewed["event_id"], "--outcome", "confirmed",
                       "--reviewer", "PC-4711", "--reviewer", "sgt-0042", *common, *as_admin[0])
        dismiss = start("provisioning.cli", "review", "--event", "019a0000-0000-7000-8000-000000000001",
                        "--outcome", "dismissed", "--reviewer", "PC-4711", *common, *as_admin[1])
        purge = start("provisioning.cli", "purge", "--deployment", first_deployment, *common, *as_admin[2])
        for p in (review, dismiss, purge):  # queued for the node before it starts (else it may end first)
            assert p.stderr is not None
            line = p.stderr.readline()
            assert "taken by the broker" in line, line + p.stderr.read()
        again = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off", "--broker", url)
        assert again.returncode == 0, again.stderr
        answers = [p.communicate(timeout=150) for p in (review, dismiss, purge)]
    finally:
        broker.stop()
    (r_out, r_err), (d_out, _), (p_out, p_err) = answers
    assert review.returncode == 0, r_err
    assert json.loads(r_out)["detail"] == {"event_id": reviewed["event_id"], "outcome": "confirmed",
                                           "deployment_id": reviewed["deployment_id"], "evidence_deleted": True}
    assert dismiss.returncode == 1 and "this node raised no alert with that id" in json.loads(d_out)["reason"]
    assert purge.returncode == 0, p_err
    assert json.loads(p_out)["detail"] == {"deployment_id": first_deployment, "keys_destroyed": 1,
                                           "rows_deleted": 2}

    vault = EvidenceVault.in_state_dir(node, load_identity(node).storage_key(STORAGE_PURPOSE), now)
    for event_id in [a["event_id"] for a in alerts] + [reviewed["event_id"]]:  # purged twice, reviewed once
        with pytest.raises(EvidenceGoneError):
            vault.read(event_id)
    left = {vault.read(e).deployment_id for e in vault.event_ids()}
    assert first_deployment not in left and reviewed["deployment_id"] in left  # its other alert is kept
    vault.close()

    records = [e for e in AuditLog.in_state_dir(node, now).entries()]
    review_rec = [e.data for e in records if e.kind == "review"]
    assert review_rec == [{"event_id": reviewed["event_id"], "deployment_id": reviewed["deployment_id"],
                           "outcome": "confirmed", "reviewers": ["PC-4711", "sgt-0042"], "reviewers_required": 1,
                           "command_id": json.loads(r_out)["command_id"]}]
    purges = [e.data for e in records if e.kind == "purge"]
    assert [p["deployment_id"] for p in purges] == [first_deployment] and purges[0]["rows_deleted"] == 2
    commands = [(e.data["verb"], e.data["ok"], e.data["code"]) for e in records if e.kind == "command"]
    assert sorted(commands) == sorted([("review", True, "ok"), ("review", False, "CommandFailedError"),
                                       ("purge", True, "ok")])

    report = run("provisioning.cli", "deployment", "report", "--audit", f"demo-node={node / 'audit' / 'audit.jsonl'}",
                 "--json", "--fleet-dir", str(fleet))
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    assert figures[reviewed["deployment_id"]] == {"faces_seen": figures[reviewed["deployment_id"]]["faces_seen"],
                                                  "alerts": 2, "confirmed": 1, "dismissed": 0, "unreviewed": 1}
    assert figures[first_deployment]["alerts"] == 2 and figures[first_deployment]["unreviewed"] == 2
    assert figures[reviewed["deployment_id"]]["faces_seen"] >= 2
    assert len(figures) == 3  # three demo runs, three deployments

    # a tampered log is refused rather than reported
    log = node / "audit" / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"outcome":"confirmed"', b'"outcome":"dismissed"'))
    bad = run("provisioning.cli", "deployment", "report", "--audit", f"demo-node={log}", "--fleet-dir", str(fleet))
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr
