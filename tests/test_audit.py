"""The audit log: hash chain, signed checkpoints, each kind of tampering caught, crash-safe appends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.audit import AuditLog, AuditRecordError, AuditTamperError, verify_log
from edge.trust.times import format_time, now

KEY = Ed25519PrivateKey.generate()


def filled(tmp_path: Path, n: int = 6) -> tuple[Path, bytes]:
    log = AuditLog(tmp_path / "audit.jsonl", now)
    log.append("node-start", {"version": "0.1.0"})
    for i in range(n - 1):
        log.append("alert", {"event_id": f"e{i}", "entry_id": "wl-1", "score": 0.95})
    cp = log.checkpoint("cam-01", KEY)
    return log.path, cp


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write(path: Path, ls: list[bytes]) -> bytes:
    raw = b"".join(x + b"\n" for x in ls)
    path.write_bytes(raw)
    return raw


def test_an_intact_log_verifies_against_its_checkpoint(tmp_path: Path) -> None:
    path, cp = filled(tmp_path)
    v = verify_log(path.read_bytes(), str(path), KEY.public_key(), [cp])
    assert v.records == 6 and v.checkpoint_seq == 6
    # appends after the checkpoint are fine: the checkpoint vouches for a prefix
    AuditLog(path, now).append("node-stop", {})
    assert verify_log(path.read_bytes(), str(path), KEY.public_key(), [cp]).records == 7


@pytest.mark.parametrize("tamper", ["changed", "removed", "reordered", "inserted", "truncated", "head-changed"])
def test_each_kind_of_tampering_is_caught(tmp_path: Path, tamper: str) -> None:
    path, cp = filled(tmp_path)
    ls = lines(path)
    if tamper == "changed":
        ls[2] = ls[2].replace(b'"score":0.95', b'"score":0.99')
    elif tamper == "removed":
        del ls[3]
    elif tamper == "reordered":
        ls[2], ls[3] = ls[3], ls[2]
    elif tamper == "inserted":
        ls.insert(2, ls[2])
    elif tamper == "truncated":
        ls = ls[:4]
    elif tamper == "head-changed":  # the last line rewritten: the chain alone cannot see it, the checkpoint can
        ls[-1] = ls[-1].replace(b'"e4"', b'"e9"')
    raw = write(path, ls)
    with pytest.raises(AuditTamperError) as err:
        verify_log(raw, str(path), KEY.public_key(), [cp])
    assert str(path) in str(err.value)


def test_a_forged_checkpoint_is_refused(tmp_path: Path) -> None:
    path, _ = filled(tmp_path)
    forged = AuditLog(path, now).checkpoint("cam-01", Ed25519PrivateKey.generate())
    with pytest.raises(AuditTamperError, match="checkpoint 1"):
        verify_log(path.read_bytes(), str(path), KEY.public_key(), [forged])


@pytest.mark.parametrize(("kind", "data"), [
    ("alert", {"event_id": "e1", "embedding": [0.1, 0.2]}),
    ("alert", {"event_id": "e1", "detail": {"crop": "..."}}),
    ("alert", {"event_id": "e1", "raw": b"\xff\xd8"}),
    ("alert", {"event_id": "e1", "note": "x" * 5000}),
    ("gossip", {}),
])
def test_biometric_or_bulky_records_are_refused(tmp_path: Path, kind: str, data: dict[str, object]) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", now)
    with pytest.raises(AuditRecordError):
        log.append(kind, data)
    assert not (tmp_path / "audit.jsonl").exists() or (tmp_path / "audit.jsonl").read_bytes() == b""


WRITER = """
import sys
from pathlib import Path
from edge.audit import AuditLog
from edge.trust.times import format_time, now
log = AuditLog(Path(sys.argv[1]), now)
while True:
    log.append("alert", {"event_id": "e", "entry_id": "wl-1", "score": 0.95, "pad": "p" * 300})
"""


def test_killed_mid_write_many_times_the_chain_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for i in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
        time.sleep(0.4 + 0.05 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log = AuditLog(path, now)  # recovers a torn tail, if any, and records that it did
    v = verify_log(path.read_bytes(), str(path))
    assert v.records == log.head[0] and v.records > 8


def test_fleet_verify_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shardworld import make_world

    world = make_world(tmp_path, monkeypatch)
    log = AuditLog(tmp_path / "node" / "audit" / "audit.jsonl", now)
    for i in range(4):
        log.append("alert", {"event_id": f"e{i}", "entry_id": "wl-1", "score": 0.95})
    log.checkpoint("cam-01", world.device.signing_key)
    cps = log.path.with_name("checkpoints.jsonl")
    args = [sys.executable, "-m", "provisioning.cli", "audit", "verify", str(log.path), "--device", "cam-01",
            "--checkpoints", str(cps), "--fleet-dir", str(world.fleet.dir)]
    good = subprocess.run(args, capture_output=True, text=True, check=False)
    assert good.returncode == 0 and "4 records, chain intact" in good.stdout and "first 4" in good.stdout
    write(log.path, lines(log.path)[:2])
    bad = subprocess.run(args, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr and "truncated" in bad.stderr


def test_pruning_old_records_keeps_a_verifiable_log(tmp_path: Path) -> None:
    """The log's own retention (G9): old records go, the rest still verifies, and cutting more is caught."""
    from datetime import UTC, datetime, timedelta

    t = [datetime(2026, 1, 1, tzinfo=UTC)]
    log = AuditLog(tmp_path / "audit.jsonl", lambda: t[0])
    for i in range(10):
        log.append("alert", {"event_id": f"e{i}", "entry_id": "wl-1", "score": 0.95})
        t[0] += timedelta(days=30)
    early = log.checkpoint("cam-01", KEY)  # vouches for records about to be pruned
    assert log.prune(datetime(2026, 4, 15, tzinfo=UTC)) == 4  # Jan 1, Jan 31, Mar 2, Apr 1
    log.append("node-stop", {})
    late = log.checkpoint("cam-01", KEY)
    raw = log.path.read_bytes()
    v = verify_log(raw, str(log.path), KEY.public_key(), [early, late])
    assert v.records == 12 and v.checkpoint_seq == 12  # seq keeps counting: 10 + pruned + node-stop
    kept = lines(log.path)
    assert len(kept) == 8 and b'"seq":5' in kept[0] and b'"kind":"pruned"' in kept[-2]
    assert b'"through_seq":4' in kept[-2]
    # another process appending after the prune continues the same chain
    AuditLog(log.path, lambda: t[0]).append("node-start", {})
    log.append("node-stop", {})
    assert verify_log(log.path.read_bytes(), str(log.path)).records == 14
    # removing one more record from the start is not a prune
    write(log.path, lines(log.path)[1:])
    with pytest.raises(AuditTamperError, match="no pruned record vouches"):
        verify_log(log.path.read_bytes(), str(log.path))
    # and nothing to prune is a no-op
    write(log.path, kept)
    assert AuditLog(log.path, lambda: t[0]).prune(datetime(2025, 1, 1, tzinfo=UTC)) == 0


def test_a_deployment_use_is_recorded_once_where_it_starts_and_ends(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """DeploymentUse writes a start before anything is matched under it and one end, whoever calls it."""
    from shardworld import make_world

    from edge.deployment import DeploymentUse, open_use

    world = make_world(tmp_path, monkeypatch)
    shard = world.store.load(world.issue(), world.model, now())
    log = AuditLog(tmp_path / "audit.jsonl", now)
    use = DeploymentUse(log.append, "gate-a")
    use.begin(shard)
    use.begin(shard)  # every new matcher for the same deployment: no second start
    assert use.in_use == shard.manifest.deployment.id
    assert open_use(log.entries()) is not None
    use.end("after-window")
    use.end("node stopping")  # the node's fallback at stop after the inference thread's own end: nothing
    use.begin(shard)
    use.end("node stopping")
    shard.gallery.wipe()
    records = [(e.kind, dict(e.data)) for e in log.entries()]
    dep = shard.manifest.deployment.id
    start = {"deployment_id": dep, "camera_id": "gate-a", "threshold": shard.manifest.deployment.threshold,
             "shard": {"id": shard.manifest.shard_id, "version": shard.manifest.version}}
    assert records == [("deployment-start", start),
                       ("deployment-end", {"deployment_id": dep, "reason": "after-window"}),
                       ("deployment-start", start),
                       ("deployment-end", {"deployment_id": dep, "reason": "node stopping"})]
    assert open_use(log.entries()) is None


def test_a_use_a_killed_session_left_open_is_found_and_closed_as_unclean(tmp_path: Path) -> None:
    from edge.deployment import UNCLEAN_STOP, open_use

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, now)
    log.append("node-start", {})
    log.append("deployment-start", {"deployment_id": "dep-1"})
    log.append("deployment-end", {"deployment_id": "dep-1", "reason": "node stopping"})
    log.append("node-stop", {})
    assert open_use(log.entries()) is None  # a clean session
    log.append("node-start", {})
    started = log.append("deployment-start", {"deployment_id": "dep-2"})
    last = log.append("alert", {"event_id": "e1", "deployment_id": "dep-2"})
    # SIGKILL here: no deployment-end, no node-stop
    found = open_use(AuditLog(path, now).entries())
    assert found is not None and (found.deployment_id, found.started_seq, found.last_seq) == ("dep-2", started.seq,
                                                                                            last.seq)
    log.append("deployment-end", found.closing_record())
    end = list(log.entries())[-1]
    assert end.data["reason"] == UNCLEAN_STOP and end.data["last_ts"] == format_time(last.ts)
    assert open_use(log.entries()) is None
    cp = log.checkpoint("cam-01", KEY)
    assert verify_log(path.read_bytes(), str(path), KEY.public_key(), [cp]).records == 8
