"""The embedder as a declared, replaceable part (docs/embedders.md), walked with a second model file the build
produces: dlib_resnet_v1_float32.tflite (model B) beside the shipped int8 default (model A). The node runs B,
each model's shards are refused by a node running the other, calibration of B gives B its own floor in
MANIFEST.json, and `faces --json` names the model that made the vectors. Real CLIs, real models, real crypto."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.vision.manifest import UNCALIBRATED_FLOOR, default_models_dir, load_manifest
from provisioning.accuracy.calibration import CalibrationRecord

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
FOOTAGE = REPO / "edge" / "demo" / "footage"
A, B = "dlib-resnet-v1-int8", "dlib-resnet-v1-float32"


def run(tool: str, *args: str, models_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    module = "edge.cli" if tool == "edge-node" else "provisioning.cli"
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": "correct horse",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if models_dir is not None:
        env["EDGE_MODELS_DIR"] = str(models_dir)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def ok(tool: str, *args: str, models_dir: Path | None = None) -> str:
    proc = run(tool, *args, models_dir=models_dir)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def deploy(tmp_path: Path) -> Path:
    text = (EXAMPLES / "deploy.toml").read_text()
    text = text.replace("2026-12-05T12:00:00Z", "2026-11-01T00:00:00Z").replace(
        "2026-12-05T23:00:00Z", "2099-01-01T00:00:00Z").replace("2026-12-06T00:00:00Z", "2099-01-01T00:00:00Z")
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_faces_json_names_the_embedder_that_made_the_vectors(devset: Path) -> None:
    manifest = load_manifest()
    photo = str(devset / "images" / "face_recognition" / "obama.jpg")
    a = json.loads(ok("edge-node", "faces", photo, "--json"))
    b = json.loads(ok("edge-node", "faces", photo, "--json", "--embedder", B))
    assert a["model"] == {"id": A, "sha256": manifest.spec(A).sha256}
    assert b["model"] == {"id": B, "sha256": manifest.spec(B).sha256}
    va, vb = a["faces"][0]["embedding"], b["faces"][0]["embedding"]
    assert va != vb and sum(x * y for x, y in zip(va, vb, strict=True)) > 0.98  # another model, the same face


def test_the_node_runs_the_second_embedder(tmp_path: Path) -> None:
    proc = run("edge-node", "demo", "--embedder", B, "--demo-dir", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events, proc.stderr
    spec = load_manifest().spec(B)
    assert all(e["model"] == {"id": B, "sha256": spec.sha256} for e in events)
    assert all(e["threshold"] == spec.match_threshold for e in events)


@pytest.fixture()
def fleet(tmp_path: Path) -> Path:
    """A fleet with two devices: cam-a runs the default embedder A, cam-b runs B."""
    f = tmp_path / "fleet"
    ok("edge-fleet", "init", "--fleet-dir", str(f), "--fleet", "acme")
    for cam in ("cam-a", "cam-b"):
        pub = tmp_path / f"{cam}.json"
        pub.write_text(ok("edge-node", "keygen", "--device-id", cam, "--state-dir", str(tmp_path / cam)))
        ok("edge-fleet", "device", "add", cam, "--public", str(pub), "--fleet-dir", str(f))
        ok("edge-node", "trust", "init", str(f / "root" / "root.1.json"), "--state-dir", str(tmp_path / cam))
    for name, model in (("list-a", A), ("list-b", B)):
        ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"), "--name",
           name, "--embedder", model, "--fleet-dir", str(f))
    return f


def test_a_shard_for_one_embedder_is_refused_by_a_node_running_the_other(fleet: Path, tmp_path: Path) -> None:
    manifest = load_manifest()
    dep = deploy(tmp_path)
    shards = {}
    for model, name in ((A, "list-a"), (B, "list-b")):
        d = tmp_path / f"deploy-{model}.toml"
        d.write_text(dep.read_text().replace('watchlist = "stadium"', f'watchlist = "{name}"'))
        shards[model] = tmp_path / f"{model}.shard"
        ok("edge-fleet", "shard", "issue", "--deployment", str(d), "--devices", "cam-a,cam-b", "--out",
           str(shards[model]), "--embedder", model, "--fleet-dir", str(fleet))
        if model == B:  # the fleet refuses to issue a watch list for a model it was not built with
            wrong = run("edge-fleet", "shard", "issue", "--deployment", str(d), "--devices", "cam-a", "--out",
                        str(tmp_path / "wrong.shard"), "--fleet-dir", str(fleet))
            assert wrong.returncode == 2 and not (tmp_path / "wrong.shard").exists()
            assert f"built with {B}; the fleet's model is {A}" in wrong.stderr
    for node, runs, other in (("cam-a", A, B), ("cam-b", B, A)):
        state = str(tmp_path / node)
        refused = run("edge-node", "shard", "load", str(shards[other]), "--embedder", runs, "--state-dir", state)
        assert refused.returncode == 1
        assert "ShardModelMismatchError" in refused.stderr and "no shard in force" in refused.stderr
        assert (f"embeddings are for {other} ({manifest.spec(other).sha256[:12]}), this node runs {runs} "
                f"({manifest.spec(runs).sha256[:12]})") in refused.stderr
        assert "accepted shard" in ok("edge-node", "shard", "load", str(shards[runs]), "--embedder", runs,
                                      "--state-dir", state)
        status = json.loads(ok("edge-node", "shard", "status", "--json", "--state-dir", state))
        assert status["current"]["model"] == {"id": runs, "sha256": manifest.spec(runs).sha256}


def models_copy(tmp_path: Path) -> Path:
    """The shipped models and their calibration records, in a directory write_manifest.py may rewrite."""
    src, dst = default_models_dir(), tmp_path / "models"
    dst.mkdir()
    for spec in load_manifest(src).models.values():
        shutil.copy(src / spec.file, dst / spec.file)
    shutil.copytree(src / "calibration", dst / "calibration")
    return dst


def write_manifest(models: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "models" / "tools" / "write_manifest.py"), str(models)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_calibration_of_the_second_embedder_sets_its_own_floor(fleet: Path, devset: Path, tmp_path: Path) -> None:
    models = models_copy(tmp_path)
    (models / "calibration" / f"{B}.json").unlink()
    assert write_manifest(models).returncode == 0
    fresh = load_manifest(models)
    assert fresh.spec(B).threshold_floor == UNCALIBRATED_FLOOR  # not calibrated yet: fail closed
    assert fresh.spec(B).floor_source is not None and fresh.spec(B).floor_source.calibration is None
    assert fresh.spec(A).floor_source is not None and fresh.spec(A).floor_source.calibration is not None
    d = deploy(tmp_path)
    d.write_text(d.read_text().replace('watchlist = "stadium"', 'watchlist = "list-b"'))
    issue = ("edge-fleet", "shard", "issue", "--deployment", str(d), "--devices", "cam-b", "--out",
             str(tmp_path / "b.shard"), "--embedder", B, "--models-dir", str(models), "--fleet-dir", str(fleet))
    uncalibrated = run(*issue)
    assert uncalibrated.returncode == 2 and f"below the calibrated floor {UNCALIBRATED_FLOOR}" in uncalibrated.stderr

    # calibrate B: a rehearsal of someone on no list (the clip's one person, every 8th frame)
    proc = run("edge-fleet", "calibrate", "--watchlist", "list-b", "--footage",
               str(devset / "videos" / "WolfgangLanger_Pexels.mp4"), "--every", "8", "--target", "1",
               "--list-size", "10", "--models-dir", str(models), "--fleet-dir", str(fleet))
    assert proc.returncode in (0, 1), proc.stderr
    kept = fleet / "calibration" / f"{B}.json"
    doc = json.loads(kept.read_text())
    assert doc["model_id"] == B and doc["model_sha256"] == fresh.spec(B).sha256
    shutil.copy(kept, models / "calibration" / f"{B}.json")  # set the floor: the record goes beside the model
    assert write_manifest(models).returncode == 0
    after = load_manifest(models)
    spec = after.spec(B)
    src = spec.floor_source
    assert src is not None and src.calibration == f"calibration/{B}.json"
    assert (src.date, src.pairs) == (doc["when"], doc["pairs"]) and "WolfgangLanger_Pexels.mp4" in (src.data or "")
    record = CalibrationRecord(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})
    floor = spec.threshold_floor
    assert floor is not None and floor < UNCALIBRATED_FLOOR
    assert record.predicted(floor, 10)[0] <= 1  # the rule the floor meets, by the fleet's own arithmetic
    below = round(floor - 0.001, 3)
    assert below < record.grid[0] or record.predicted(below, 10)[0] > 1  # ... and the lowest that does
    assert spec.match_threshold is not None and spec.match_threshold >= floor
    # A kept its own calibrated floor; every file still matches its sha256
    assert after.spec(A).threshold_floor == load_manifest().spec(A).threshold_floor
    assert all(after.spec(m).sha256 == load_manifest().spec(m).sha256 for m in after.models)
    ok("edge-fleet", "models", "verify", "--models-dir", str(models))
    if spec.match_threshold is not None and spec.match_threshold <= 0.94:  # the deployment's threshold
        ok(*issue)


def test_a_record_for_another_build_does_not_set_a_floor(tmp_path: Path) -> None:
    models = models_copy(tmp_path)
    record = json.loads((models / "calibration" / f"{A}.json").read_text())
    (models / "calibration" / f"{B}.json").write_text(json.dumps({**record, "model_id": B}))
    proc = write_manifest(models)
    assert proc.returncode != 0 and f"calibration/{B}.json" in proc.stderr and "calibrate it again" in proc.stderr
