"""`reviewers_required` from deploy.toml into the signed deployment (absent means 1, and a shard that does not
ask for more is what nodes before the field accept), its bounds on both sides, and the fleet's record of each
deployment that `shard issue` writes (F/deployments/<id>.json) and its reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shardworld import World, make_world
from test_shard import _refused, _rewrite

from edge.trust.times import format_time, now
from edge.watchlist.shard import MAX_REVIEWERS_REQUIRED, ShardFormatError, split_shard
from provisioning.deployments import (
    DeploymentRecordError,
    UnknownDeploymentError,
    deployment_records,
    read_deployment_record,
    record_path,
)
from provisioning.fleet import FleetError
from provisioning.shards import issue_shard, load_deployment


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


def with_reviewers(world: World, line: str) -> Path:
    path = world.deploy_file()
    path.write_text(path.read_text().replace("retention_days = 30\n", f"retention_days = 30\n{line}\n"))
    return path


def signed_deployment(shard: Path) -> dict[str, object]:
    deployment: dict[str, object] = json.loads(split_shard(shard.read_bytes())[0])["signed"]["deployment"]
    return deployment


def test_two_reviewers_travel_in_the_signed_deployment(world: World, tmp_path: Path) -> None:
    out = tmp_path / "two.shard"
    issue_shard(world.fleet, with_reviewers(world, "reviewers_required = 2"), ["cam-01"], out, world.model)
    assert signed_deployment(out)["reviewers_required"] == 2
    assert world.store.load(out, world.model, now()).manifest.deployment.reviewers_required == 2


def test_without_the_key_one_reviewer_and_the_manifest_as_before(world: World) -> None:
    shard = world.issue()
    assert "reviewers_required" not in signed_deployment(shard)  # byte for byte what older nodes accept
    assert world.store.load(shard, world.model, now()).manifest.deployment.reviewers_required == 1
    assert load_deployment(with_reviewers(world, "reviewers_required = 1")).deployment.reviewers_required == 1


@pytest.mark.parametrize("value", ["0", "3", '"2"', "true", "1.5"])
def test_deploy_toml_refuses_a_bad_reviewers_required(world: World, value: str) -> None:
    path = with_reviewers(world, f"reviewers_required = {value}")
    with pytest.raises(FleetError, match=r"\[deployment\] reviewers_required") as refused:
        load_deployment(path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize("value", [1, 0, MAX_REVIEWERS_REQUIRED + 1, "2", True, None])
def test_the_node_refuses_a_manifest_with_a_bad_reviewers_required(world: World, tmp_path: Path,
                                                                     value: object) -> None:
    good = world.issue()
    shard_key = world.fleet.read_key(world.fleet.dir / "keys" / "shard-1.pem")

    def edit(body: dict[str, object]) -> None:
        deployment = body["deployment"]
        assert isinstance(deployment, dict)
        deployment["reviewers_required"] = value  # 1 is the default: written only by omission (one spelling)

    bad = _rewrite(good, tmp_path / "bad.shard", edit, [shard_key])
    _refused(world, bad, ShardFormatError)
    with pytest.raises(ShardFormatError, match=r"deployment\.reviewers_required"):
        world.store.load(bad, world.model, now())


def test_shard_issue_keeps_the_fleets_record_of_the_deployment(world: World, tmp_path: Path) -> None:
    with pytest.raises(UnknownDeploymentError, match="dep-test"):
        read_deployment_record(world.fleet, "dep-test")
    first = world.issue()
    m1 = world.store.load(first, world.model, now()).manifest
    record = read_deployment_record(world.fleet, "dep-test")
    assert (record.deployment_id, record.reviewers_required, record.retention_days, record.shard_version) == (
        "dep-test", 1, 30, m1.version)
    assert (record.start, record.end, record.cameras, record.threshold, record.watchlist) == (
        m1.deployment.start, m1.deployment.end, ("gate-a",), 0.95, "wl")
    assert (record.shard_id, record.issued, record.expires, record.authorisation) == (
        m1.shard_id, m1.issued, m1.expires, "TEST-AUTH-1")
    # the latest shard of a deployment is its record
    out = tmp_path / "two.shard"
    m2 = issue_shard(world.fleet, with_reviewers(world, "reviewers_required = 2"), ["cam-01"], out, world.model)
    record = read_deployment_record(world.fleet, "dep-test")
    assert (record.reviewers_required, record.shard_version) == (2, m2.version)
    assert deployment_records(world.fleet) == [record]
    # a file no deployment id can name is not a record (an editor's backup): the listing still works
    (record_path(world.fleet, "dep-test").parent / ".dep-test.json").write_text("{half-written")
    (record_path(world.fleet, "dep-test").parent / "-x.json").write_text("[]")
    assert deployment_records(world.fleet) == [record]
    # a damaged record is named, with the field at fault
    path = record_path(world.fleet, "dep-test")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "reviewers_required": 7}))
    with pytest.raises(DeploymentRecordError, match=r"dep-test\.json: reviewers_required"):
        read_deployment_record(world.fleet, "dep-test")
    path.write_text(json.dumps({**doc, "issued": "yesterday"}))
    with pytest.raises(DeploymentRecordError, match=r"dep-test\.json: issued"):
        read_deployment_record(world.fleet, "dep-test")
    path.write_text(json.dumps({k: v for k, v in doc.items() if k != "watchlist"}))
    with pytest.raises(DeploymentRecordError, match="fields must be exactly"):
        deployment_records(world.fleet)
    path.write_text(json.dumps({**doc, "end": format_time(now())}))  # still well-formed: read as written
    assert read_deployment_record(world.fleet, "dep-test").reviewers_required == 2


def test_a_deployment_id_must_be_able_to_name_its_record(world: World) -> None:
    path = world.deploy_file()
    path.write_text(path.read_text().replace('id = "dep-test"', 'id = "../escape"'))
    with pytest.raises(FleetError, match=r"\[deployment\] id: deployment id '\.\./escape'") as refused:
        load_deployment(path)
    assert str(path) in str(refused.value)
    assert not (world.fleet.dir / "escape.json").exists()
