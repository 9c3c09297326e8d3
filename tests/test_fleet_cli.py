"""The fleet admin's and the node's commands, end to end, as separate processes on real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = REPO / "edge" / "demo" / "footage"
EXAMPLES = REPO / "docs" / "examples"


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    module = "edge.cli" if tool == "edge-node" else "provisioning.cli"
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": "correct horse"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def ok(tool: str, *args: str) -> str:
    proc = run(tool, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture()
def fleet(tmp_path: Path) -> tuple[Path, Path]:
    f, node = tmp_path / "fleet", tmp_path / "node"
    ok("edge-fleet", "init", "--fleet-dir", str(f), "--fleet", "acme")
    pub = tmp_path / "cam.json"
    pub.write_text(ok("edge-node", "keygen", "--device-id", "cam-01", "--state-dir", str(node)))
    ok("edge-fleet", "device", "add", "cam-01", "--public", str(pub), "--fleet-dir", str(f))
    ok("edge-node", "trust", "init", str(f / "root" / "root.1.json"), "--state-dir", str(node))
    return f, node


def deploy(tmp_path: Path, **changes: str) -> Path:
    text = (EXAMPLES / "deploy.toml").read_text()
    text = text.replace("2026-12-05T12:00:00Z", "2026-11-01T00:00:00Z").replace(
        "2026-12-05T23:00:00Z", "2099-01-01T00:00:00Z").replace("2026-12-06T00:00:00Z", "2099-01-01T00:00:00Z")
    for old, new in changes.items():
        text = text.replace(old, new)
    path = tmp_path / f"deploy-{len(list(tmp_path.glob('deploy-*')))}.toml"
    path.write_text(text)
    return path


def test_build_issue_load_status_with_the_documented_examples(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    f, node = fleet
    out = ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
             "--name", "stadium", "--fleet-dir", str(f))
    assert "2 entries built from 2 photos, 0 refused" in out
    entries = json.loads((f / "watchlists" / "stadium" / "entries.json").read_text())["entries"]
    assert [e["name"] for e in entries] == ["Barack Obama (demo)", "Eileen Collins (demo)"]
    shard = tmp_path / "s.shard"
    ok("edge-fleet", "shard", "issue", "--fleet-dir", str(f), "--deployment", str(deploy(tmp_path)),
       "--devices", "cam-01", "--out", str(shard))
    assert b"Obama" not in shard.read_bytes() and b"WL-2026" not in shard.read_bytes()  # names stay with the fleet
    assert "accepted shard stadium-2026-12-05 v1" in ok("edge-node", "shard", "load", str(shard), "--state-dir",
                                                        str(node))
    again = run("edge-node", "shard", "load", str(shard), "--state-dir", str(node))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "ShardReplayError" in again.stderr and "v1 stays in force" in again.stderr
    status = ok("edge-node", "shard", "status", "--state-dir", str(node))
    assert "shard stadium-2026-12-05 v1 (2 entries" in status and "LFR-AUTH-2026-0412" in status


def test_refused_entries_name_their_reason(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    f, _ = fleet
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama.jpg", "multi_face.jpg", "astronaut.png"):
        (photos / name).write_bytes((FOOTAGE / name).read_bytes())
    (photos / "scenery.jpg").write_bytes((FOOTAGE / "obama.jpg").read_bytes()[:2000])  # a broken JPEG
    header = (EXAMPLES / "watchlist.csv").read_text().splitlines()[0]
    prov = "src,basis,2020-01-01,officer,reason"
    csv = tmp_path / "meta.csv"
    csv.write_text("\n".join([
        header,
        f"R1,Good,obama.jpg,{prov}",
        f"R2,Crowd,multi_face.jpg,{prov}",
        "R3,NoProvenance,astronaut.png,,,,,",
        f"R4,Broken,scenery.jpg,{prov}",
        f"R5,Missing,nothere.jpg,{prov}",
        "R6,Future,astronaut.png,src,basis,2999-01-01,officer,reason",
    ]) + "\n")
    proc = run("edge-fleet", "watchlist", "build", str(photos), "--meta", str(csv), "--fleet-dir", str(f))
    assert proc.returncode == 0, proc.stderr
    assert "1 entries built from 1 photos, 5 refused" in proc.stdout
    err = proc.stderr
    assert "(R2): multi_face.jpg: 5 faces" in err
    assert "(R3): missing image_source, legal_basis, image_date, approving_officer, reason" in err
    assert "(R4): scenery.jpg:" in err and "(R5): nothere.jpg:" in err and "cannot read" in err
    assert "(R6): image_date is in the future" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,photos\nX,obama.jpg\n")
    proc = run("edge-fleet", "watchlist", "build", str(photos), "--meta", str(bad), "--fleet-dir", str(f))
    assert proc.returncode == 2 and "header must be reference,name,photos" in proc.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"threshold = 0.94": "threshold = 0.5"}, "threshold = 0.5 is below the calibrated floor"),
    ({"threshold = 0.94": 'threshold = "high"'}, "[deployment] threshold = 'high' is not a"),
    ({"retention_days = 30": "retention_days = 30\nwindow = 3"}, "[deployment] unknown key(s) ['window']"),
    ({'cameras = ["gate-a", "gate-b"]': ""}, "[deployment] cameras is missing"),
    ({"2026-11-01T00:00:00Z": "2026-11-01T00:00:00"}, "[deployment] start needs a time zone"),
    ({"[shard]": "[shard"}, "not TOML"),
])
def test_deployment_errors_name_file_and_key(fleet: tuple[Path, Path], tmp_path: Path, change: dict[str, str],
                                             message: str) -> None:
    f, _ = fleet
    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"), "--name",
       "stadium", "--fleet-dir", str(f))
    path = deploy(tmp_path, **change)
    proc = run("edge-fleet", "shard", "issue", "--fleet-dir", str(f), "--deployment", str(path), "--devices",
               "cam-01", "--out", str(tmp_path / "x.shard"))
    assert proc.returncode == 2
    assert str(path) in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x.shard").exists()


def test_keys_are_never_overwritten_and_are_private(fleet: tuple[Path, Path]) -> None:
    f, node = fleet
    again = run("edge-node", "keygen", "--device-id", "cam-01", "--state-dir", str(node))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    for key in [*(node / "identity").glob("*.pem"), *(f / "keys").glob("*.pem")]:
        assert key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in (f / "keys" / "root-1.pem").read_bytes()
    wrong = subprocess.run([sys.executable, "-m", "provisioning.cli", "key", "add", "shard", "--fleet-dir", str(f)],
                           capture_output=True, text=True, env={**os.environ, "EDGE_FLEET_PASSPHRASE": "wrong"},
                           timeout=120, check=False)
    assert wrong.returncode == 2 and "wrong passphrase" in wrong.stderr and "root-1.pem" in wrong.stderr
