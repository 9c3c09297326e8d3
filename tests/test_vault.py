"""The evidence vault: day keys wrapped by the storage key, retention by destroying keys, review deletes,
ordered purges, and a file that survives SIGKILL mid-write."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.audit import AuditLog, verify_log
from edge.trust.times import now
from edge.vault import EvidenceGoneError, EvidenceVault, VaultCorruptError, purge_and_record

KEY = bytes(range(32))
FACE = b"\xff\xd8FACE-CROP-PLAINTEXT-" + os.urandom(64)
CONTEXT = b"\xff\xd8CONTEXT-CROP-PLAINTEXT-" + os.urandom(64)


class Clock:
    def __init__(self, t: datetime):
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def raw_files(path: Path) -> bytes:
    """Every byte SQLite keeps for this database: main file, WAL and shared memory."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def test_evidence_round_trips_and_is_encrypted_at_rest(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 27, 14, 0, tzinfo=UTC))
    vault = EvidenceVault(tmp_path / "vault.db", KEY, clock)
    vault.store("ev-1", "dep-1", 30, FACE, CONTEXT)
    vault.store("ev-2", "dep-1", 30, FACE, None)
    got = vault.read("ev-1")
    assert (got.face, got.context, got.deployment_id, got.stored) == (FACE, CONTEXT, "dep-1", clock.t)
    assert vault.read("ev-2").context is None
    assert vault.stats().keys == 1 and vault.stats().rows == 2  # one key per deployment and day
    raw = raw_files(vault.path)
    assert FACE not in raw and CONTEXT not in raw and b"FACE-CROP" not in raw
    assert oct(vault.path.stat().st_mode & 0o777) == "0o600"
    vault.close()
    with pytest.raises(VaultCorruptError, match=re.escape("day key dep-1|2026-11-27")):
        EvidenceVault(tmp_path / "vault.db", bytes(32), clock).read("ev-1")  # another device's storage key


def test_a_changed_or_moved_row_does_not_decrypt(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 27, 14, 0, tzinfo=UTC))
    vault = EvidenceVault(tmp_path / "vault.db", KEY, clock)
    vault.store("ev-1", "dep-1", 30, FACE, CONTEXT)
    vault.store("ev-2", "dep-1", 30, FACE, CONTEXT)
    db = sqlite3.connect(vault.path)
    db.execute("UPDATE evidence SET face = (SELECT face FROM evidence WHERE event_id = 'ev-2') "
               "WHERE event_id = 'ev-1'")
    db.commit()
    db.close()
    with pytest.raises(VaultCorruptError, match="event ev-1: face crop does not decrypt"):
        vault.read("ev-1")
    assert vault.read("ev-2").face == FACE


def test_retention_destroys_the_day_key_on_time_and_the_evidence_with_it(tmp_path: Path) -> None:
    day = datetime(2026, 11, 27, tzinfo=UTC)
    clock = Clock(day + timedelta(hours=23, minutes=59))  # stored late on day D
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    vault = EvidenceVault(tmp_path / "vault.db", KEY, clock)
    vault.store("ev-old", "dep-1", 2, FACE, CONTEXT)
    clock.t = day + timedelta(days=1, hours=9)
    vault.store("ev-new", "dep-1", 2, FACE, CONTEXT)  # day D+1: its own key
    wrapped = {r[0]: r[1] for r in sqlite3.connect(vault.path).execute("SELECT key_id, wrapped FROM day_keys")}
    assert set(wrapped) == {"dep-1|2026-11-27", "dep-1|2026-11-28"}

    clock.t = day + timedelta(days=2) - timedelta(seconds=1)  # one second before D + retention
    assert purge_and_record(vault, audit).empty
    assert vault.read("ev-old").face == FACE

    clock.t = day + timedelta(days=2)  # midnight of D + 2 days: at most `retention` days after day D began
    report = purge_and_record(vault, audit)
    assert report.keys_destroyed == ("dep-1|2026-11-27",) and report.rows_deleted == 1
    with pytest.raises(EvidenceGoneError):
        vault.read("ev-old")
    assert vault.read("ev-new").context == CONTEXT
    raw = raw_files(vault.path)
    assert wrapped["dep-1|2026-11-27"] not in raw  # the key's bytes are overwritten, not just unlinked
    assert wrapped["dep-1|2026-11-28"] in raw  # positive control: a live key is found by the same search
    assert os.path.getsize(f"{vault.path}-wal") == 0  # checkpointed and truncated

    records = [e for e in audit.entries() if e.kind == "purge"]
    assert len(records) == 1 and records[0].data["keys_destroyed"] == ["dep-1|2026-11-27"]
    assert records[0].data["rows_deleted"] == 1 and records[0].data["reason"] == "retention"


def test_a_review_deletes_the_nodes_copy(tmp_path: Path) -> None:
    vault = EvidenceVault(tmp_path / "vault.db", KEY, Clock(datetime(2026, 11, 27, 12, tzinfo=UTC)))
    vault.store("ev-1", "dep-1", 30, FACE, CONTEXT)
    ct = sqlite3.connect(vault.path).execute("SELECT face FROM evidence").fetchone()[0]
    assert vault.acknowledge("ev-1") is True
    assert vault.acknowledge("ev-1") is False
    with pytest.raises(EvidenceGoneError, match="ev-1"):
        vault.read("ev-1")
    assert ct not in raw_files(vault.path)


def test_an_ordered_purge_takes_one_deployment_or_its_days_before_a_time(tmp_path: Path) -> None:
    day = datetime(2026, 11, 20, 12, tzinfo=UTC)
    clock = Clock(day)
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    vault = EvidenceVault(tmp_path / "vault.db", KEY, clock)
    for i in range(3):
        clock.t = day + timedelta(days=i)
        vault.store(f"a{i}", "dep-a", 30, FACE, CONTEXT)
        vault.store(f"b{i}", "dep-b", 30, FACE, CONTEXT)
    r = purge_and_record(vault, audit, "ordered by the fleet", "dep-a", day + timedelta(days=2), "cmd-1")
    assert r.keys_destroyed == ("dep-a|2026-11-20", "dep-a|2026-11-21") and r.rows_deleted == 2
    assert vault.event_ids() == ["b0", "b1", "a2", "b2"]
    r = purge_and_record(vault, audit, "ordered by the fleet", "dep-b", None, "cmd-2")
    assert len(r.keys_destroyed) == 3 and sorted(vault.event_ids()) == ["a2"]
    r = purge_and_record(vault, audit, "ordered by the fleet", "dep-none", None, "cmd-3")
    assert r.empty
    purges = [e.data for e in audit.entries() if e.kind == "purge"]
    assert [p["command_id"] for p in purges] == ["cmd-1", "cmd-2", "cmd-3"]  # an ordered purge is always recorded


WRITER = """
import os, random, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from edge.audit import AuditLog
from edge.vault import EvidenceVault, purge_and_record
state = Path(sys.argv[1])
t = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=int(sys.argv[2]))]
clock = lambda: t[0]
audit = AuditLog(state / "audit.jsonl", clock)
vault = EvidenceVault(state / "vault.db", bytes(range(32)), clock)
i = 0
while True:
    i += 1
    eid = f"ev-{sys.argv[2]}-{i}"
    dep, retention = random.choice([("dep-a", 1), ("dep-b", 366)])  # dep-a purged as the clock runs, dep-b kept
    vault.store(eid, dep, retention, os.urandom(20000), os.urandom(8000))
    audit.append("alert", {"event_id": eid, "entry_id": "wl-1", "score": 0.95})
    t[0] += timedelta(hours=2)
    purge_and_record(vault, audit)
    if i % 7 == 0:
        vault.acknowledge(eid)
"""


def test_killed_mid_write_many_times_the_vault_and_audit_chain_stay_valid(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    kills = 12
    for i in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(10 * i)], env=env)
        time.sleep(0.6 + 0.07 * i)  # interpreter start ~0.3 s: kills land at varied points of the loop
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    clock = Clock(datetime(2036, 1, 1, tzinfo=UTC))  # after every day the writers used
    vault = EvidenceVault(tmp_path / "vault.db", KEY, clock)
    assert vault.integrity() == "ok"
    readable = gone = 0
    for event_id in vault.event_ids():  # every row left is readable, or its key is gone (and purge takes it)
        try:
            assert len(vault.read(event_id).face or b"") == 20000
            readable += 1
        except EvidenceGoneError:
            gone += 1
    assert readable > 0, (readable, gone)  # the kills left live evidence behind: the check above had work
    purge_and_record(vault, AuditLog(tmp_path / "audit.jsonl", clock))
    assert vault.event_ids() == [] and vault.stats().keys == 0  # everything is past its one-day retention
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    v = verify_log((tmp_path / "audit.jsonl").read_bytes(), "audit.jsonl")
    assert v.records == audit.head[0] and v.records > kills


APPENDER = """
import sys
from pathlib import Path
from edge.audit import AuditLog
from edge.trust.times import now
log = AuditLog(Path(sys.argv[1]), now)
for i in range(150):
    log.append("alert", {"event_id": f"{sys.argv[2]}-{i}", "entry_id": "wl-1", "score": 0.95})
"""


def test_two_processes_appending_keep_one_chain(tmp_path: Path) -> None:
    """The node and the retention timer's `edge-node purge` may write the same log at once."""
    path = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), name], env=env) for name in "ab"]
    assert [p.wait() for p in procs] == [0, 0]
    v = verify_log(path.read_bytes(), str(path))
    assert v.records == 300
    ids = [e.data["event_id"] for e in AuditLog(path, now).entries()]
    assert sorted(ids) == sorted([f"a-{i}" for i in range(150)] + [f"b-{i}" for i in range(150)])


def test_the_retention_timers_command_purges_and_prunes(tmp_path: Path) -> None:
    """`edge-node purge --config` (what edge-node-retention.service runs) on a node's state dir."""
    from edge.identity import create_identity

    state = tmp_path / "state"
    identity = create_identity(state, "cam-01")
    past = Clock(datetime.now(UTC) - timedelta(days=500))
    audit = AuditLog.in_state_dir(state, past)
    audit.append("node-start", {"device_id": "cam-01"})  # older than the audit log's 400 days
    vault = EvidenceVault.in_state_dir(state, identity.storage_key("vault"), past)
    vault.store("ev-expired", "dep-1", 30, FACE, CONTEXT)
    past.t = datetime.now(UTC)
    vault.store("ev-current", "dep-2", 30, FACE, CONTEXT)
    vault.close()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nstate_dir = "{state}"\n[camera]\nid = "gate-a"\n[audit]\nretention_days = 400\n')
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "purge", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["keys_destroyed"]) == 1 and out["keys_destroyed"][0].startswith("dep-1|")
    assert out["rows_deleted"] == 1 and out["left"]["rows"] == 1 and out["audit_records_pruned"] == 1
    kinds = [e.kind for e in AuditLog.in_state_dir(state, now).entries()]
    assert kinds == ["purge", "pruned"]  # the purge is on the record; the year-old start was pruned
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[node]\nstate_dir = "{state}"\n[audit]\nretention_days = 30\n')
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "purge", "--config", str(bad)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "[audit] retention_days" in proc.stderr  # below the 183-day floor


def test_the_node_killed_mid_run_many_times_leaves_vault_and_audit_valid(tmp_path: Path) -> None:
    """The real node (`edge-node demo`: models, pipeline, alerts into the vault, audit log) SIGKILLed at
    random points of its run; then a full run. The vault opens sound with every row readable, and the audit
    log verifies against its own signed checkpoints."""
    import random

    from edge.identity import load_identity
    from edge.trust.keys import ed25519_public

    demo = tmp_path / "demo"
    args = [sys.executable, "-m", "edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)  # sets the fleet up
    assert first.returncode == 0, first.stderr
    rng = random.Random(os.environ.get("KILL_SEED", "7"))
    for _ in range(5):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 14.0))  # models load in ~3 s; the two alerts come a few seconds later
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    node = demo / "node"
    identity = load_identity(node)
    # what a kill between storing evidence and recording its alert leaves: crops no record accounts for
    planted = EvidenceVault.in_state_dir(node, identity.storage_key("vault"), now)
    planted.store("019a0000-0000-7000-8000-00000000beef", "dep-x", 30, FACE, CONTEXT)
    planted.close()
    last = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert last.returncode == 0, last.stderr
    vault = EvidenceVault.in_state_dir(node, identity.storage_key("vault"), now)
    assert vault.integrity() == "ok"
    ids = vault.event_ids()
    assert len(ids) >= 4  # the first and the last run's alerts at least
    for event_id in ids:
        got = vault.read(event_id)
        assert got.face is not None and got.face[:2] == b"\xff\xd8"
    path = node / "audit" / "audit.jsonl"
    cps = [c for c in path.with_name("checkpoints.jsonl").read_bytes().split(b"\n") if c]
    device = json.loads((node / "identity" / "device.json").read_text())
    v = verify_log(path.read_bytes(), str(path), ed25519_public(device["ed25519"]), cps)
    starts = [e for e in AuditLog.in_state_dir(node, now).entries() if e.kind == "node-start"]
    assert len(starts) == 7 and v.checkpoint_seq is not None
    alerts = {e.data["event_id"] for e in AuditLog.in_state_dir(node, now).entries() if e.kind == "alert"}
    assert set(ids) <= alerts  # nothing in the vault that is not on the record
    recovered = [e.data for e in AuditLog.in_state_dir(node, now).entries() if e.kind == "recovered"]
    assert any("019a0000-0000-7000-8000-00000000beef" in r.get("event_ids", []) for r in recovered)
