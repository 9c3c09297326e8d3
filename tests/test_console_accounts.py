"""The console's accounts and its audit log: argon2id hashes (never the password), lockout counted in the file
and ended by time or a new password, disabled accounts, names that can be reviewer ids; the journal's chain and
its own checkpoint key; `edge-fleet console user ...` and `edge-fleet audit verify --console` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from edge.audit import AuditError, AuditRecordError, AuditTamperError
from edge.events.commands import check_args
from edge.events.ids import uuid7
from provisioning.console.accounts import (
    LOCKOUT_FAILURES,
    LOCKOUT_SECONDS,
    Account,
    AccountDisabledError,
    AccountExistsError,
    AccountFormatError,
    AccountLockedError,
    AccountStore,
    AccountStoreError,
    BadCredentialsError,
    UnknownAccountError,
)
from provisioning.console.journal import CHECKPOINT_EVERY, ConsoleJournal, JournalFiles, verify_journal

EDGE_FLEET = Path(sys.executable).parent / "edge-fleet"  # the installed entry point, as an admin runs it
PASSWORD = "horse battery staple"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CHEAP = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)  # real argon2id, lighter: many logins below


class Clock:
    """A clock the test moves by hand (lockout expiry without sleeping)."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def store(tmp_path: Path, clock: Callable[[], datetime], hasher: PasswordHasher | None = CHEAP) -> AccountStore:
    return AccountStore(tmp_path / "console" / "accounts.db", clock, hasher)


def lock(accounts: AccountStore, name: str) -> None:
    for _ in range(LOCKOUT_FAILURES):
        with pytest.raises(BadCredentialsError):
            accounts.authenticate(name, "not the password")


def test_only_an_argon2id_hash_of_the_password_is_stored(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock(), None)  # the default parameters, as the console runs
    accounts.add("alice", "reviewer", PASSWORD)
    accounts.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "console").iterdir())  # the db and its WAL
    assert PASSWORD.encode() not in raw
    assert b"$argon2id$v=19$m=65536,t=3,p=4$" in raw
    assert oct((tmp_path / "console" / "accounts.db").stat().st_mode & 0o777) == "0o600"
    assert store(tmp_path, Clock()).authenticate("alice", PASSWORD) == Account("alice", "reviewer", False)


def test_a_hash_made_with_older_parameters_is_replaced_at_login(tmp_path: Path) -> None:
    store(tmp_path, Clock()).add("alice", "reviewer", PASSWORD)  # the cheap parameters
    accounts = store(tmp_path, Clock(), None)
    accounts.authenticate("alice", PASSWORD)
    accounts.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "console").iterdir())
    assert b"$argon2id$v=19$m=65536,t=3,p=4$" in raw
    assert store(tmp_path, Clock()).authenticate("alice", PASSWORD).name == "alice"


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer_after_the_same_work(tmp_path: Path) -> None:
    verified: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            verified.append(str(hash))
            return super().verify(hash, password)

    accounts = store(tmp_path, Clock(), Counting(time_cost=1, memory_cost=8192, parallelism=1))
    accounts.add("alice", "reviewer", PASSWORD)
    with pytest.raises(BadCredentialsError) as wrong:
        accounts.authenticate("alice", "wrong password!")
    with pytest.raises(BadCredentialsError) as unknown:
        accounts.authenticate("mallory", "wrong password!")
    with pytest.raises(BadCredentialsError):
        accounts.authenticate("not a valid name", PASSWORD)
    assert str(wrong.value).replace("alice", "X") == str(unknown.value).replace("mallory", "X")
    # one argon2 verification each, with the same parameters (an unknown name is checked against a dummy hash)
    assert len(verified) == 3
    assert len({h.rsplit("$", 2)[0] for h in verified}) == 1


def test_lockout_after_five_failures_survives_a_restart_and_ends_after_fifteen_minutes(tmp_path: Path) -> None:
    clock = Clock()
    accounts = store(tmp_path, clock)
    accounts.add("alice", "reviewer", PASSWORD)
    accounts.add("bob", "reviewer", PASSWORD)
    lock(accounts, "alice")
    with pytest.raises(AccountLockedError) as locked:
        accounts.authenticate("alice", PASSWORD)  # even the right password
    assert locked.value.until == T0 + timedelta(seconds=LOCKOUT_SECONDS)
    assert "alice" in str(locked.value)
    assert accounts.authenticate("bob", PASSWORD).name == "bob"  # counted per account
    accounts.close()

    accounts = store(tmp_path, clock)  # a console restart keeps the count
    clock.advance(LOCKOUT_SECONDS - 1)
    with pytest.raises(AccountLockedError):
        accounts.authenticate("alice", PASSWORD)
    assert accounts.locked_until("alice") == T0 + timedelta(seconds=LOCKOUT_SECONDS)
    clock.advance(1)
    assert accounts.locked_until("alice") is None
    assert accounts.authenticate("alice", PASSWORD).name == "alice"


def test_the_count_is_of_failures_in_a_row_and_starts_afresh_after_a_lock(tmp_path: Path) -> None:
    clock = Clock()
    accounts = store(tmp_path, clock)
    accounts.add("alice", "reviewer", PASSWORD)
    for _ in range(LOCKOUT_FAILURES - 1):
        with pytest.raises(BadCredentialsError):
            accounts.authenticate("alice", "not the password")
    accounts.authenticate("alice", PASSWORD)  # a success resets the count
    for _ in range(LOCKOUT_FAILURES - 1):
        with pytest.raises(BadCredentialsError):
            accounts.authenticate("alice", "not the password")
    assert accounts.authenticate("alice", PASSWORD).name == "alice"

    lock(accounts, "alice")
    clock.advance(LOCKOUT_SECONDS)
    with pytest.raises(BadCredentialsError):  # one failure after the lock ended: not locked again at once
        accounts.authenticate("alice", "not the password")
    assert accounts.authenticate("alice", PASSWORD).name == "alice"


def test_a_new_password_ends_the_lockout_and_the_old_one_stops_working(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock())
    accounts.add("alice", "reviewer", PASSWORD)
    lock(accounts, "alice")
    accounts.set_password("alice", "a brand new passphrase")
    assert accounts.locked_until("alice") is None
    assert accounts.authenticate("alice", "a brand new passphrase").name == "alice"
    with pytest.raises(BadCredentialsError):
        accounts.authenticate("alice", PASSWORD)


def test_a_new_password_moves_the_password_epoch_on_in_the_file(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock())
    assert accounts.add("alice", "reviewer", PASSWORD).password_epoch == 0
    accounts.add("bob", "reviewer", PASSWORD)
    accounts.disable("alice")
    accounts.enable("alice")
    assert accounts.get("alice").password_epoch == 0  # only a new password moves it
    assert accounts.set_password("alice", "a brand new passphrase").password_epoch == 1
    other = store(tmp_path, Clock())  # another process (edge-fleet console user passwd) sees the same file
    assert other.set_password("alice", "and another passphrase").password_epoch == 2
    assert accounts.get("alice").password_epoch == 2 and accounts.get("bob").password_epoch == 0
    assert accounts.authenticate("alice", "and another passphrase").password_epoch == 2


def test_an_accounts_file_from_before_the_password_epoch_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "console" / "accounts.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY COLLATE NOCASE, role TEXT NOT NULL, hash TEXT NOT "
               "NULL, disabled INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, locked_until TEXT, "
               "created TEXT NOT NULL, changed TEXT NOT NULL)")
    db.execute("INSERT INTO accounts (name, role, hash, created, changed) VALUES (?, ?, ?, ?, ?)",
               ("alice", "reviewer", CHEAP.hash(PASSWORD), T0.isoformat(), T0.isoformat()))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    accounts = store(tmp_path, Clock())
    assert accounts.authenticate("alice", PASSWORD) == Account("alice", "reviewer", False, 0)
    assert accounts.set_password("alice", "a brand new passphrase").password_epoch == 1


def test_a_disabled_account_is_refused_and_can_be_enabled_again(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock())
    accounts.add("alice", "supervisor", PASSWORD)
    assert accounts.disable("alice") == Account("alice", "supervisor", True)
    with pytest.raises(AccountDisabledError, match="'alice'"):
        accounts.authenticate("alice", PASSWORD)
    with pytest.raises(BadCredentialsError):  # a wrong password says only that
        accounts.authenticate("alice", "not the password")
    assert store(tmp_path, Clock()).get("alice").disabled  # in the file, for the running console too
    accounts.enable("alice")
    assert accounts.authenticate("alice", PASSWORD) == Account("alice", "supervisor", False)


def test_names_are_reviewer_ids_unique_in_any_case(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock())
    alice = accounts.add("Alice.K-7@unit", "reviewer", PASSWORD)
    check_args("review", {"event_id": str(uuid7()), "outcome": "confirmed", "reviewers": [alice.name]})  # node takes it
    for bad in ("Alice Smith", "", "x" * 65, "bob/../x", "zoë"):
        with pytest.raises(AccountFormatError, match="account name"):
            accounts.add(bad, "reviewer", PASSWORD)
    with pytest.raises(AccountExistsError):
        accounts.add("alice.k-7@UNIT", "admin", PASSWORD)
    assert accounts.authenticate("ALICE.K-7@unit", PASSWORD).name == "Alice.K-7@unit"  # the stored spelling
    assert [a.name for a in accounts.all()] == ["Alice.K-7@unit"]


def test_weak_passwords_and_unknown_roles_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    accounts = store(tmp_path, Clock())
    with pytest.raises(AccountFormatError, match="at least 12"):
        accounts.add("alice", "reviewer", "short")
    with pytest.raises(AccountFormatError, match="only spaces"):
        accounts.add("alice", "reviewer", " " * 20)
    with pytest.raises(AccountFormatError, match="role 'boss'"):
        accounts.add("alice", "boss", PASSWORD)
    assert accounts.all() == []
    accounts.add("alice", "admin", PASSWORD)
    with pytest.raises(AccountFormatError):
        accounts.set_password("alice", "short")
    assert accounts.authenticate("alice", PASSWORD).role == "admin"
    with pytest.raises(UnknownAccountError, match="'bob'"):
        accounts.set_password("bob", PASSWORD)
    with pytest.raises(UnknownAccountError):
        accounts.disable("bob")


def test_a_file_that_is_not_an_accounts_db_is_named(tmp_path: Path) -> None:
    path = tmp_path / "console" / "accounts.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(AccountStoreError, match=r"accounts\.db"):
        AccountStore(path, Clock())


# the journal


def test_the_journal_chain_verifies_and_a_changed_line_fails(tmp_path: Path) -> None:
    journal = ConsoleJournal(tmp_path, Clock())
    journal.record("console-start", version="0.1.0")
    journal.record("login", account="alice")
    journal.record("view", account="alice", event_id="0190a0b0-0000-7000-8000-000000000001")
    journal.record("decision", account="alice", event_id="0190a0b0-0000-7000-8000-000000000001",
                   outcome="dismissed", note="not the person")
    check = verify_journal(tmp_path)
    assert (check.verified.records, check.verified.checkpoint_seq, check.key_pinned) == (4, 4, False)
    assert verify_journal(tmp_path, JournalFiles.of(tmp_path).public_key.read_text().strip()).key_pinned

    log = JournalFiles.of(tmp_path).log
    lines = log.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"account":"alice"', b'"account":"bob"')
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(AuditTamperError, match="line 4: does not chain"):
        verify_journal(tmp_path)


def test_a_cut_journal_is_caught_by_its_checkpoint_and_a_replaced_key_by_the_noted_one(tmp_path: Path) -> None:
    journal = ConsoleJournal(tmp_path, Clock())
    journal.record("console-start", version="0.1.0")
    for i in range(CHECKPOINT_EVERY + 1):
        journal.record("view", account="alice", event_id=f"e{i}")
    files = JournalFiles.of(tmp_path)
    assert len(files.checkpoints.read_bytes().splitlines()) == 2  # at start, and after CHECKPOINT_EVERY records
    noted = files.public_key.read_text().strip()

    full = files.log.read_bytes()
    files.log.write_bytes(b"".join(full.splitlines(keepends=True)[:CHECKPOINT_EVERY - 1]))
    with pytest.raises(AuditTamperError, match="truncated"):
        verify_journal(tmp_path)
    files.log.write_bytes(full)

    # someone replaces the key and re-signs: the key noted at setup says so
    files.private_key.unlink()
    files.public_key.unlink()
    files.checkpoints.unlink()
    ConsoleJournal(tmp_path, Clock()).checkpoint()
    assert verify_journal(tmp_path).verified.checkpoint_seq == CHECKPOINT_EVERY + 2
    with pytest.raises(AuditTamperError, match="checkpoint 1"):
        verify_journal(tmp_path, noted)


def test_the_journal_takes_only_console_kinds_and_never_a_face(tmp_path: Path) -> None:
    journal = ConsoleJournal(tmp_path, Clock())
    with pytest.raises(AuditRecordError, match="'alert'"):
        journal.record("alert", event_id="e1")  # a node's kind
    with pytest.raises(AuditRecordError, match="biometric"):
        journal.record("view", account="alice", face="....")
    with pytest.raises(AuditRecordError, match="binary"):
        journal.record("view", account="alice", note=b"\xff\xd8\xff")
    assert not JournalFiles.of(tmp_path).log.exists() or JournalFiles.of(tmp_path).log.read_bytes() == b""


def test_a_journal_key_that_does_not_match_its_public_half_is_refused(tmp_path: Path) -> None:
    ConsoleJournal(tmp_path, Clock()).record("console-start")
    files = JournalFiles.of(tmp_path)
    files.public_key.write_text("00" * 32 + "\n")
    with pytest.raises(AuditError, match=r"journal-key\.pub: does not match"):
        ConsoleJournal(tmp_path, Clock())


# the command line, as separate processes


def edge_fleet(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGE_FLEET), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


def test_user_commands_and_console_audit_verify_as_processes(tmp_path: Path) -> None:
    cdir = str(tmp_path / "console")
    add = edge_fleet("console", "user", "add", "alice", "--role", "reviewer", "--password-stdin", "--console-dir",
                     cdir, stdin=PASSWORD + "\n")
    assert add.returncode == 0, add.stderr
    assert PASSWORD not in add.stdout + add.stderr
    assert AccountStore(tmp_path / "console" / "accounts.db", Clock()).authenticate("alice", PASSWORD).name == "alice"

    for args, stdin, says in (
            (("add", "alice", "--role", "admin", "--password-stdin"), PASSWORD, "exists already"),
            (("add", "bob", "--role", "reviewer", "--password-stdin"), "short\n", "at least 12"),
            (("add", "bob", "--role", "boss"), None, "role 'boss'"),  # refused before asking for a password
            (("add", "bob", "--role", "reviewer"), "", "--password-stdin"),  # no terminal to prompt on
            (("add", "bob smith", "--role", "reviewer", "--password-stdin"), PASSWORD, "account name"),
            (("disable", "carol"), None, "no account 'carol'")):
        proc = edge_fleet("console", "user", *args, "--console-dir", cdir, stdin=stdin)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("edge-fleet console: ") and says in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

    accounts = AccountStore(tmp_path / "console" / "accounts.db", Clock(datetime.now(UTC)), CHEAP)
    lock(accounts, "alice")  # at the time the command-line tools see too
    listed = edge_fleet("console", "user", "list", "--console-dir", cdir)
    assert listed.returncode == 0 and "alice" in listed.stdout and "locked until" in listed.stdout
    passwd = edge_fleet("console", "user", "passwd", "alice", "--password-stdin", "--console-dir", cdir,
                        stdin="a brand new passphrase\n")
    assert passwd.returncode == 0, passwd.stderr
    assert accounts.authenticate("alice", "a brand new passphrase").name == "alice"  # the lock is gone
    assert edge_fleet("console", "user", "disable", "alice", "--console-dir", cdir).returncode == 0
    with pytest.raises(AccountDisabledError):
        accounts.authenticate("alice", "a brand new passphrase")
    assert "disabled" in edge_fleet("console", "user", "list", "--console-dir", cdir).stdout

    files = JournalFiles.of(tmp_path / "console")
    records = [json.loads(line) for line in files.log.read_text().splitlines()]
    assert [(r["kind"], r["data"]["action"], r["data"]["account"]) for r in records] == [
        ("account", "add", "alice"), ("account", "passwd", "alice"), ("account", "disable", "alice")]
    assert PASSWORD not in files.log.read_text()

    key = files.public_key.read_text().strip()
    verified = edge_fleet("audit", "verify", "--console", cdir, "--console-key", key)
    assert verified.returncode == 0, verified.stderr
    assert "3 records, chain intact" in verified.stdout and "checkpoint vouches for the first 3" in verified.stdout
    log = files.log.read_bytes()
    files.log.write_bytes(log.replace(b'"action":"passwd"', b'"action":"enable"'))
    tampered = edge_fleet("audit", "verify", "--console", cdir)
    assert tampered.returncode == 1 and "TAMPERED" in tampered.stderr and "line 3" in tampered.stderr
    no_log = edge_fleet("audit", "verify", "--console", str(tmp_path / "nowhere"))
    assert no_log.returncode == 2 and "no console audit log" in no_log.stderr
    no_device = edge_fleet("audit", "verify", "some.jsonl")
    assert no_device.returncode == 2 and "--device" in no_device.stderr
