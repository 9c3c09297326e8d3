"""The fleet admin's and the node's commands, end to end, as separate processes on real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.tls import DeviceTLS

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = REPO / "edge" / "demo" / "footage"
EXAMPLES = REPO / "docs" / "examples"


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    module = "edge.cli" if tool == "edge-node" else "provisioning.cli"
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": "correct horse",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False, cwd=cwd)


def ok(tool: str, *args: str, cwd: Path | None = None) -> str:
    proc = run(tool, *args, cwd=cwd)
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


def test_review_keys_and_the_deployment_record_from_the_command_line(fleet: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """`init` makes keys/review-1.pem; `key add review` and `key threshold review 2` publish roots the node takes;
    `shard issue` says how many reviewers the deployment requires and keeps F/deployments/<id>.json."""
    f, node = fleet
    assert sorted(p.name for p in (f / "keys").glob("review-*.pem")) == ["review-1.pem"]
    assert "new review key" in ok("edge-fleet", "key", "add", "review", "--fleet-dir", str(f))
    assert (f / "keys" / "review-2.pem").exists()
    too_many = run("edge-fleet", "key", "threshold", "review", "3", "--fleet-dir", str(f))
    assert too_many.returncode == 2 and "between 1 and the role's 2 key(s)" in too_many.stderr
    assert "review threshold 2; published root v3" in ok("edge-fleet", "key", "threshold", "review", "2",
                                                         "--fleet-dir", str(f))
    for v in (2, 3):
        ok("edge-node", "trust", "update", str(f / "root" / f"root.{v}.json"), "--state-dir", str(node))
    ok("edge-fleet", "watchlist", "build", str(FOOTAGE), "--meta", str(EXAMPLES / "watchlist.csv"),
       "--name", "stadium", "--fleet-dir", str(f))
    out = ok("edge-fleet", "shard", "issue", "--fleet-dir", str(f), "--deployment",
             str(deploy(tmp_path, **{"retention_days = 30": "retention_days = 30\nreviewers_required = 2"})),
             "--devices", "cam-01", "--out", str(tmp_path / "s.shard"))
    assert "reviewers required 2" in out and "deployments/dep-2026-12-05-stadium.json" in out
    record = json.loads((f / "deployments" / "dep-2026-12-05-stadium.json").read_text())
    assert (record["reviewers_required"], record["retention_days"], record["watchlist"], record["shard_version"]) == (
        2, 30, "stadium", 1)


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


def test_cert_request_prints_the_real_paths_and_its_hints_run_as_printed(fleet: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """The hint's commands, pasted as printed (only FLEET_DIR is the admin's to fill in), issue and install."""
    f, node = fleet
    work = tmp_path / "work"
    work.mkdir()
    out = ok("edge-node", "cert", "request", "--state-dir", str(node), cwd=work).splitlines()
    csr = Path(out[0])
    assert csr.is_absolute() and csr.is_file() and b"CERTIFICATE REQUEST" in csr.read_bytes()
    issue = next(line.split() for line in out if line.strip().startswith("edge-fleet cert issue"))
    install = next(line.split() for line in out if line.strip().startswith("edge-node cert install"))
    assert issue[issue.index("--csr") + 1] == str(csr)
    assert install[install.index("--state-dir") + 1] == str(node.absolute())
    assert issue.count("FLEET_DIR") == 1  # the one path the device cannot know
    issue[issue.index("FLEET_DIR")] = str(f)
    ok(issue[0], *issue[1:], cwd=work)
    (work / "ca.crt").write_bytes((f / "ca" / "ca.crt").read_bytes())  # "the fleet's FLEET_DIR/ca/ca.crt"
    assert "installed" in ok(install[0], *install[1:], cwd=work)
    assert DeviceTLS(node).cert.is_file()


def test_broker_config_from_a_relative_out_dir_runs_from_anywhere(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`broker config --out-dir broker` (relative) writes absolute paths; the real mosquitto started from `/`
    with it serves the fleet's tools. As root it is started the production way: no `user` line, so it drops
    to the user mosquitto, after the ownership commands the tool printed."""
    import pwd
    import shutil
    import tempfile

    from mqttworld import Broker, free_port

    from provisioning.broker import BrokerConfig
    from provisioning.ca import FleetCA

    f = tmp_path / "fleet"
    ok("edge-fleet", "init", "--fleet-dir", str(f), "--fleet", "acme")
    ok("edge-fleet", "operator", "add", "console", "--fleet-dir", str(f))
    as_root = os.geteuid() == 0
    # the user mosquitto must reach its files: pytest's own temp root is private to root
    admin_dir = Path(tempfile.mkdtemp(prefix="broker-cfg-")) if as_root else tmp_path / "admin"
    admin_dir.mkdir(exist_ok=True)
    admin_dir.chmod(0o755)
    try:
        port = free_port()
        printed = ok("edge-fleet", "broker", "config", "--out-dir", "broker", "--hostname", "localhost",
                     "--alt-name", "127.0.0.1", "--port", str(port), "--bind", "127.0.0.1", "--fleet-dir", str(f),
                     cwd=admin_dir)
        bdir = admin_dir / "broker"
        conf = (bdir / "mosquitto.conf").read_text()
        paths = [line.split()[-1] for line in conf.splitlines()
                 if line.split()[:1] in (["persistence_location"], ["acl_file"], ["cafile"], ["certfile"],
                                         ["keyfile"])]
        assert len(paths) == 5 and all(p.startswith(str(bdir)) for p in paths), conf
        assert "log_dest stderr" in conf and f"listener {port} 127.0.0.1" in conf and "\nuser " not in conf
        assert f"mosquitto -c {bdir / 'mosquitto.conf'}" in printed and "address 127.0.0.1" in printed
        chown = next(line.strip() for line in printed.splitlines() if line.strip().startswith("chown mosquitto:"))
        assert str(bdir / "broker.key") in chown and str(bdir / "data") in chown
        if as_root:
            subprocess.run(["sh", "-c", chown], check=True, timeout=30)
        monkeypatch.chdir("/")  # mosquitto would resolve relative paths from here
        broker = Broker(bdir, port, FleetCA(f, b"correct horse"))
        broker.start()
        try:
            assert broker.proc is not None
            if as_root:  # it dropped privileges and still read the 0600 key
                uid = next(line.split()[1] for line in Path(f"/proc/{broker.proc.pid}/status").read_text()
                           .splitlines() if line.startswith("Uid:"))
                assert int(uid) == pwd.getpwnam("mosquitto").pw_uid
            tail = run("edge-fleet", "events", "tail", "--broker", f"mqtts://127.0.0.1:{port}", "--idle-timeout",
                       "1", "--fleet-dir", str(f))
            assert tail.returncode == 0, tail.stderr  # TLS with the fleet's certificates, the ACL's subscription
        finally:
            broker.stop()
        log = (bdir / "mosquitto.log").read_text()
        assert "operator.console" in log, log  # connection messages reach stderr (the journal under systemd)
    finally:
        if as_root:
            shutil.rmtree(admin_dir)
    # and without --bind: every interface, IPv4 and IPv6
    assert "listener 8883\n" in BrokerConfig(Path("rel"), 8883).render()
