"""An alert never leaves the node without its record, and stopping drains the outbox. The real node (demo
footage, real models, real crypto) publishes to a real mosquitto; the operator's `events tail` is the
consumer. A test driver (alert_faults.py) SIGKILLs or SIGTERMs the node right after one step of its first
alert; the restarted node (`edge-node demo --broker`) then runs against the same state and broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mqttworld import Broker, fleet_broker

from edge.audit import AuditEntry, AuditLog, verify_log
from edge.demo.run import DEMO_PASSPHRASE
from edge.deployment import UNCLEAN_STOP, Effectiveness
from edge.events.outbox import Outbox
from edge.identity import load_identity
from edge.trust.keys import ed25519_public
from edge.trust.times import now
from edge.vault import STORAGE_PURPOSE, EvidenceVault

DRIVER = Path(__file__).with_name("alert_faults.py")
ENV = {**os.environ, "EDGE_FLEET_PASSPHRASE": DEMO_PASSPHRASE}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


@dataclass(frozen=True)
class Site:
    demo: Path
    broker: Broker
    url: str

    @property
    def node(self) -> Path:
        return self.demo / "node"

    @property
    def fleet(self) -> Path:
        return self.demo / "fleet"

    def fault(self, how: str, step: str, mark: Path, stop_timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(DRIVER), str(self.demo), self.url, how, step, str(mark),
                               str(stop_timeout)], capture_output=True, text=True, env=ENV, timeout=300, check=False)

    def restart(self) -> None:
        again = run("edge.cli", "demo", "--demo-dir", str(self.demo), "--tiles", "off", "--broker", self.url)
        assert again.returncode == 0, again.stderr

    def delivered(self) -> list[dict[str, object]]:
        """Every match event the console's session has received since last asked, each verified."""
        got = run("provisioning.cli", "events", "tail", "--broker", self.url, "--fleet-dir", str(self.fleet),
                  "--evidence-dir", str(self.demo / "crops"), "--idle-timeout", "3")
        assert got.returncode == 0, got.stderr
        events = [json.loads(line) for line in got.stdout.splitlines()]
        assert all(e["verified"] for e in events)
        return events

    def records(self) -> list[AuditEntry]:
        return list(AuditLog.in_state_dir(self.node, now).entries())

    def outbox(self) -> Outbox:
        return Outbox(self.node / "outbox" / "outbox.db", load_identity(self.node).storage_key("outbox"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The demo fleet and node, a broker configured from that fleet, and the console's persistent session."""
    root = tmp_path_factory.mktemp("durability")
    demo = root / "demo"
    first = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off")
    assert first.returncode == 0, first.stderr
    broker, url = fleet_broker(demo / "fleet", root / "broker", DEMO_PASSPHRASE)
    broker.start()
    s = Site(demo, broker, url)
    try:
        s.delivered()  # the console's session exists from now on (match events wait for a subscriber)
        yield s
    finally:
        broker.stop()


def alert_records(records: list[AuditEntry]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for e in records:
        if e.kind == "alert":
            out.setdefault(str(e.data["event_id"]), []).append(dict(e.data))
    return out


def test_a_kill_at_every_step_of_an_alert_leaves_every_delivered_event_on_the_record(site: Site,
                                                                                    tmp_path: Path) -> None:
    offline = set(alert_records(site.records()))  # the fixture's first run had no broker: recorded, never sent
    killed: dict[str, str] = {}
    deployments: dict[str, str] = {}  # step -> the deployment the killed session was matching under
    for step in ("held", "vault", "audit", "released"):
        mark = tmp_path / f"{step}.id"
        proc = site.fault("kill", step, mark)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        event_id = killed[step] = mark.read_text()
        box = site.outbox()
        held = [i.event_id for i in box.held()]
        box.close()
        # until its record is written and the row released, the event is held: the publisher cannot send it
        assert held == ([] if step == "released" else [event_id]), step
        use = [e for e in site.records() if e.kind in ("deployment-start", "deployment-end")]
        assert use[-1].kind == "deployment-start"  # killed while matching: the use is left open
        deployments[step] = str(use[-1].data["deployment_id"])
        site.restart()

    delivered = site.delivered()
    records = site.records()
    alerts = alert_records(records)
    got = {str(e["event_id"]) for e in delivered}
    assert set(killed.values()) <= got  # each killed run's alert reached the operator after the restart...
    assert got == set(alerts) - offline  # ...and every event that reached the broker is on the record, and back
    assert all(len(a) == 1 for a in alerts.values()), {k: len(v) for k, v in alerts.items()}  # exactly once

    by_step = {step: alerts[eid][0] for step, eid in killed.items()}
    # recorded at the restart from the signed event's own fields; the vault step's crops were kept and still are
    assert by_step["held"]["recovered"] is True and by_step["held"]["evidence_kept"] is False
    assert by_step["vault"]["recovered"] is True and by_step["vault"]["evidence_kept"] is True
    assert "recovered" not in by_step["audit"] and "recovered" not in by_step["released"]
    assert by_step["held"]["deployment_id"] == deployments["held"] and by_step["held"]["camera_id"] == "demo-cam"
    vault = EvidenceVault.in_state_dir(site.node, load_identity(site.node).storage_key(STORAGE_PURPOSE), now)
    try:
        kept = set(vault.event_ids())
    finally:
        vault.close()
    assert killed["vault"] in kept and killed["held"] not in kept
    assert kept <= set(alerts)  # nothing in the vault off the record

    # the effectiveness rebuilt from the log counts every one, and a review of each would be accepted
    counts = Effectiveness()
    counts.restore(records)
    per_deployment = Counter(str(a[0]["deployment_id"]) for a in alerts.values())
    assert {d: t.alerts for d, t in counts.snapshot().items() if t.alerts} == dict(per_deployment)
    for event_id in killed.values():
        counts.review(event_id, "confirmed")  # raises UnknownAlertError for an alert the node has no record of

    # each killed session's open deployment was closed at the next start, before its node-start, as unclean
    closes = [(i, e) for i, e in enumerate(records) if e.kind == "deployment-end" and e.data["reason"] == UNCLEAN_STOP]
    assert [e.data["deployment_id"] for _, e in closes] == [deployments[s] for s in killed]
    for i, e in closes:
        assert records[i + 1].kind == "node-start"
        assert e.data["last_seq"] == records[i - 1].seq and e.data["started_seq"] <= e.data["last_seq"]
    path = site.node / "audit" / "audit.jsonl"
    device = json.loads((site.node / "identity" / "device.json").read_text())
    cps = [c for c in path.with_name("checkpoints.jsonl").read_bytes().split(b"\n") if c]
    assert verify_log(path.read_bytes(), str(path), ed25519_public(device["ed25519"]), cps).checkpoint_seq

    report = run("provisioning.cli", "deployment", "report", "--audit", f"demo-node={path}", "--json",
                 "--fleet-dir", str(site.fleet))
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    assert {d: f["alerts"] for d, f in figures.items() if f["alerts"]} == dict(per_deployment)
    assert all(f["unreviewed"] == f["alerts"] for f in figures.values())


def test_sigterm_drains_the_outbox_with_the_broker_up(site: Site, tmp_path: Path) -> None:
    """SIGTERM right after an alert is committed (before it is recorded or released): the node records
    it, stops matching, and exits only once the broker has taken it and the closing checkpoint."""
    site.delivered()  # what earlier tests left
    mark = tmp_path / "term.id"
    proc = site.fault("term", "held", mark)
    assert proc.returncode == 0, proc.stderr
    assert "outbox drained" in proc.stderr
    event_id = mark.read_text()
    box = site.outbox()
    try:
        assert box.stats().pending == 0 and box.held() == []  # the alert and the stop's checkpoint went out
    finally:
        box.close()
    assert event_id in {e["event_id"] for e in site.delivered()}
    records = site.records()
    assert len(alert_records(records)[event_id]) == 1
    assert records[-1].kind == "node-stop" and records[-2].kind in ("deployment-end", "effectiveness")


def test_sigterm_with_the_broker_down_exits_within_the_bound_and_keeps_the_event(site: Site, tmp_path: Path) -> None:
    mark = tmp_path / "down.id"
    site.broker.stop()
    try:
        proc = site.fault("term", "released", mark, stop_timeout=8.0)
    finally:
        site.broker.start()
    assert proc.returncode == 0, proc.stderr
    assert "not yet taken by the broker" in proc.stderr  # it gave up at the bound instead of waiting
    event_id = mark.read_text()
    box = site.outbox()
    try:
        pending = [i.event_id for i in box.next_batch(0, 100)]
    finally:
        box.close()
    assert event_id in pending  # kept for the next start, sendable, on the record
    assert len(alert_records(site.records())[event_id]) == 1
