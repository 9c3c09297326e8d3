"""A deployment that requires two reviewers (`reviewers_required = 2` in deploy.toml, carried in the signed
shard), enforced by the real node (`edge.node.Node`, real models on real footage, real mosquitto): a review
naming one reviewer is refused with TooFewReviewersError on cmd-result, nothing is recorded as a review and the
evidence stays, and the same command sent again is refused again (not a replay); a review signed by a command
key is refused (ReviewRoleError); after a restart with the same deployment re-issued to require one reviewer,
the alert is still judged by the figure it was raised with (in its `alert` record); two reviewers are recorded
and the evidence goes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mqttworld import wait_for
from test_desired_shard import running
from test_events_cli import PASS, Site, site  # noqa: F401 - `site` is the fixture: fleet, device, broker
from test_fleet_cli import EXAMPLES, FOOTAGE, deploy, ok

from edge.audit import AuditEntry, AuditLog
from edge.config import CameraConfig, MqttConfig, NodeConfig, TrackingConfig
from edge.deployment import Effectiveness, RaisedAlert
from edge.events.commands import TooFewReviewersError, command_body
from edge.reviews import ReviewQuorum
from edge.trust.root import sign_document
from edge.trust.times import now
from edge.vision.analyzer import VisionConfig
from edge.vision.detect import DetectorConfig, TilePlan
from edge.vision.manifest import load_manifest
from edge.watchlist.shard import MAX_REVIEWERS_REQUIRED
from edge.watchlist.store import ShardStore
from provisioning.commands import sign_command
from provisioning.fleet import Fleet
from provisioning.link import FleetClient, PushResult, publish_commands
from provisioning.operators import fleet_settings

FAST = VisionConfig(detector=DetectorConfig(tiles=TilePlan()))


def node_config(where: Site, tmp_path: Path) -> NodeConfig:
    """The node on a still photo of a listed person (not the enrolment photo), a few frames a second."""
    camera = CameraConfig(id="gate-a", source="replay", paths=(FOOTAGE / "obama2.jpg",), realtime=True, loop=True,
                          hold_frames=1, fps=4.0)
    mqtt = MqttConfig(where.url, where.fleet / "operators" / "console.json", state_every_s=30.0)
    return NodeConfig(source_file=None, state_dir=where.node, run_dir=tmp_path / "run", camera=camera, vision=FAST,
                      tracking=TrackingConfig(), mqtt=mqtt)


def issue(where: Site, tmp_path: Path, name: str, **changes: str) -> None:
    """Issue a shard of the stadium watch list for cam-01 and put it in force in the node's store."""
    out = tmp_path / f"{name}.shard"
    ok("edge-fleet", "shard", "issue", "--deployment", str(deploy(tmp_path, **changes)), "--devices", "cam-01",
       "--out", str(out), "--fleet-dir", str(where.fleet))
    manifest = load_manifest()
    ShardStore(where.node).load(out, manifest.spec(manifest.default_embedder), now())


def send(where: Site, verb: str, args: dict[str, Any], envelope: tuple[str, bytes] | None = None) -> PushResult:
    fleet = Fleet(where.fleet)
    cid, data = envelope or sign_command(fleet, "cam-01", verb, args)
    admin = fleet_settings(fleet, where.url, "admin", None, PASS.encode())
    (result,) = publish_commands(FleetClient(admin, admin.cert_file.stem), fleet, {"cam-01": (verb, cid, data)},
                                 120, timedelta(hours=1))
    assert result.answered, result
    return result


def records(entries: list[AuditEntry], kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in entries if e.kind == kind]


def test_two_reviewers_required_survives_a_restart_and_a_downgrade_of_the_deployment(
        site: Site, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
       "--name", "stadium", "--fleet-dir", str(site.fleet))
    issue(site, tmp_path, "two", **{"retention_days = 30": "retention_days = 30\nreviewers_required = 2"})
    config = node_config(site, tmp_path)
    single = {"outcome": "confirmed", "reviewers": ["PC-4711"]}
    pair = {"outcome": "confirmed", "reviewers": ["PC-4711", "sgt-0042"]}

    with running(config) as r:
        assert wait_for(lambda: r.node.audit is not None and any(e.kind == "alert" for e in r.node.audit.entries()),
                        timeout=180)
        assert r.node.audit is not None and r.node.vault is not None
        alert = records(list(r.node.audit.entries()), "alert")[0]
        event_id, first_deployment = alert["event_id"], alert["deployment_id"]
        assert alert["reviewers_required"] == 2  # the figure travels with the alert
        envelope = sign_command(Fleet(site.fleet), "cam-01", "review", {"event_id": event_id, **single})
        refused = send(site, "review", {}, envelope)
        assert (refused.ok, refused.code) == (False, "TooFewReviewersError")
        assert "requires 2 distinct reviewers" in refused.reason and "names 1" in refused.reason
        again = send(site, "review", {}, envelope)  # not remembered as seen: refused again, not a replay
        assert (again.ok, again.code) == (False, "TooFewReviewersError")
        # a command key's review is refused by role before anything else is looked at
        command_key = Fleet(site.fleet).read_key(site.fleet / "keys" / "command-1.pem")
        body = command_body("acme", "cam-01", "review", {"event_id": event_id, **pair}, now(), timedelta(hours=1))
        wrong = send(site, "review", {}, (str(body["command_id"]), sign_document(body, [command_key])))
        assert (wrong.ok, wrong.code) == (False, "ReviewRoleError")
        entries = list(r.node.audit.entries())
        assert records(entries, "review") == []  # nothing on the record as a review
        assert [c["code"] for c in records(entries, "command")] == [
            "TooFewReviewersError", "TooFewReviewersError", "ReviewRoleError"]
        assert event_id in r.node.vault.event_ids()  # the evidence is kept

    # the same deployment re-issued to require one reviewer is in force after the restart: the waiting alert
    # keeps the figure it was raised with
    issue(site, tmp_path, "one")
    with running(config) as r:
        assert wait_for(lambda: r.node.ready.is_set(), timeout=180)
        current = r.node.watchlist.current(now())
        assert current is not None and current.manifest.deployment.id == first_deployment
        assert current.manifest.deployment.reviewers_required == 1
        again = send(site, "review", {"event_id": event_id, **single})
        assert (again.ok, again.code) == (False, "TooFewReviewersError")
        assert r.node.vault is not None and event_id in r.node.vault.event_ids()
        done = send(site, "review", {"event_id": event_id, **pair})
        assert done.ok, done.reason
        assert done.detail == {"event_id": event_id, "outcome": "confirmed", "deployment_id": first_deployment,
                               "evidence_deleted": True}
        assert r.node.audit is not None
        (review,) = records(list(r.node.audit.entries()), "review")
        assert (review["event_id"], review["reviewers"], review["reviewers_required"]) == (
            event_id, ["PC-4711", "sgt-0042"], 2)
        assert event_id not in r.node.vault.event_ids()


def test_the_quorum_is_rebuilt_from_the_audit_log(tmp_path: Path) -> None:
    """What each accepted deployment required comes back from the node's own log (a later shard of a deployment
    replaces the figure; a record written before the field existed means one); a deployment the log no longer
    names is judged at the strictest figure. These figures judge only alerts whose record lacks its own."""
    log = AuditLog(tmp_path / "audit.jsonl", now)
    log.append("shard-accepted", {"deployment_id": "dep-old", "shard_id": "s", "version": 1})  # before the field
    log.append("shard-accepted", {"deployment_id": "dep-two", "shard_id": "s", "version": 2, "reviewers_required": 2})
    log.append("shard-accepted", {"deployment_id": "dep-one", "shard_id": "s", "version": 3, "reviewers_required": 2})
    log.append("shard-accepted", {"deployment_id": "dep-one", "shard_id": "s", "version": 4, "reviewers_required": 1})
    quorum = ReviewQuorum()
    quorum.restore(log.entries())
    assert [quorum.required(d) for d in ("dep-old", "dep-two", "dep-one", "dep-pruned")] == [
        1, 2, 1, MAX_REVIEWERS_REQUIRED]
    assert quorum.check(RaisedAlert("dep-one", None), ["PC-4711"]) == 1
    with pytest.raises(TooFewReviewersError, match="dep-two requires 2"):
        quorum.check(RaisedAlert("dep-two", None), ["PC-4711"])
    assert quorum.check(RaisedAlert("dep-two", None), ["PC-4711", "sgt-0042"]) == 2


def test_an_alert_is_judged_by_the_figure_it_was_raised_with(tmp_path: Path) -> None:
    """The figure travels with the alert (its `alert` record), restored at start: re-issuing the deployment with
    one reviewer does not let a single reviewer decide an alert raised under two, and raising it to two does
    not hold back an alert raised under one; a log whose shard-accepted records are pruned still knows. An
    alert record from before the field falls back to the deployment's figure."""
    log = AuditLog(tmp_path / "audit.jsonl", now)
    log.append("shard-accepted", {"deployment_id": "dep-a", "shard_id": "s", "version": 1, "reviewers_required": 2})
    log.append("alert", {"event_id": "e-two", "deployment_id": "dep-a", "reviewers_required": 2})
    log.append("shard-accepted", {"deployment_id": "dep-a", "shard_id": "s", "version": 2, "reviewers_required": 1})
    log.append("alert", {"event_id": "e-one", "deployment_id": "dep-a", "reviewers_required": 1})
    log.append("alert", {"event_id": "e-old", "deployment_id": "dep-a"})  # written before the field
    log.append("alert", {"event_id": "e-pruned", "deployment_id": "dep-gone", "reviewers_required": 1})
    counts, quorum = Effectiveness(), ReviewQuorum()
    entries = list(log.entries())
    counts.restore(entries)
    quorum.restore(entries)
    assert counts.raised("e-two") == RaisedAlert("dep-a", 2)
    with pytest.raises(TooFewReviewersError, match="dep-a requires 2"):
        quorum.check(counts.raised("e-two"), ["PC-4711"])
    assert quorum.check(counts.raised("e-two"), ["PC-4711", "sgt-0042"]) == 2
    assert quorum.check(counts.raised("e-one"), ["PC-4711"]) == 1
    assert quorum.check(counts.raised("e-old"), ["PC-4711"]) == 1  # the deployment's latest figure
    assert quorum.check(counts.raised("e-pruned"), ["PC-4711"]) == 1  # not MAX: the alert says


def test_one_reviewer_in_two_spellings_is_one_reviewer() -> None:
    """Distinct in any case: ["alice", "ALICE"] is one person and does not meet a requirement of two."""
    with pytest.raises(TooFewReviewersError, match="names 1"):
        ReviewQuorum().check(RaisedAlert("dep-a", 2), ["alice", "ALICE"])
    assert ReviewQuorum().check(RaisedAlert("dep-a", 2), ["alice", "bob"]) == 2
