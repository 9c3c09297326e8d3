"""The durable outbox on its own (no broker): order, acks, bound, expiry, encryption at rest, crash safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.events.outbox import Outbox, OutboxError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TOPIC = "edge/v1/cam-01/event/match"
FAR = 4_000_000_000.0  # an expiry far in the future (unix seconds)


def payload_for(seq: int) -> bytes:
    return f"payload-{seq}".encode()


def builder(payload: Callable[[int], bytes] = payload_for) -> Callable[[int], tuple[str, bytes]]:
    def build(seq: int) -> tuple[str, bytes]:
        return f"ev-{seq}", payload(seq)

    return build


def fixed(payload: bytes, prefix: str = "ev") -> Callable[[int], tuple[str, bytes]]:
    return builder(lambda _seq: payload) if prefix == "ev" else (lambda seq: (f"{prefix}-{seq}", payload))


def fill(box: Outbox, n: int, expires: float = FAR, topic: str = TOPIC) -> list[int]:
    return [box.enqueue(topic, expires, builder()) for _ in range(n)]


def raw_rows(path: Path) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT seq, event_id, topic FROM pending ORDER BY seq").fetchall()
    finally:
        db.close()


def test_enqueue_batch_ack_in_order_with_exact_payloads(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", KEY)
    payloads = [b"\x00binary\xff", b"", b"x" * 70_000, "unicod\u00e9".encode()]
    seqs = [box.enqueue(f"{TOPIC}/{i}", FAR, fixed(p, "id")) for i, p in enumerate(payloads)]
    assert seqs == [1, 2, 3, 4]

    items = box.next_batch(0, 100)
    assert [i.seq for i in items] == seqs
    assert [i.payload for i in items] == payloads
    assert [i.event_id for i in items] == [f"id-{s}" for s in seqs]
    assert [i.topic for i in items] == [f"{TOPIC}/{i}" for i in range(4)]
    assert all(i.expires == FAR for i in items)

    # after_seq and limit
    assert [i.seq for i in box.next_batch(1, 2)] == [2, 3]
    assert [i.seq for i in box.next_batch(4, 10)] == []
    # reading does not remove anything
    assert box.stats().pending == 4

    assert box.ack([1, 3]) == 2
    assert [i.seq for i in box.next_batch(0, 100)] == [2, 4]
    assert box.ack([1, 3, 99]) == 0  # already acknowledged / never existed
    assert box.ack([2, 2]) == 1  # a duplicate in one ack counts once
    assert box.ack([]) == 0
    st_ = box.stats()
    assert (st_.pending, st_.enqueued, st_.published, st_.dropped, st_.expired, st_.unreadable) == (1, 4, 3, 0, 0, 0)
    assert st_.to_json() == {"pending": 1, "enqueued": 4, "published": 3, "dropped": 0, "expired": 0,
                             "unreadable": 0}
    assert box.enqueue(TOPIC, FAR, builder()) == 5
    box.close()


def test_build_gets_the_seq_it_is_stored_under(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", KEY)
    fill(box, 3)
    assert [(i.seq, i.payload) for i in box.next_batch(0, 10)] == [(s, payload_for(s)) for s in (1, 2, 3)]
    box.close()


def test_rows_counters_and_seqs_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path, KEY)
    fill(box, 5)
    assert box.ack([1, 2, 5]) == 3
    box.close()

    box = Outbox(path, KEY)
    assert [(i.seq, i.payload) for i in box.next_batch(0, 10)] == [(3, payload_for(3)), (4, payload_for(4))]
    s = box.stats()
    assert (s.pending, s.enqueued, s.published) == (2, 5, 3)
    # seq 5 was the newest and was acknowledged: it is never handed out again
    assert box.enqueue(TOPIC, FAR, builder()) == 6
    assert box.ack([3, 4, 6]) == 3
    box.close()

    box = Outbox(path, KEY)
    assert box.next_batch(0, 10) == []
    assert box.enqueue(TOPIC, FAR, builder()) == 7
    s = box.stats()
    assert (s.pending, s.enqueued, s.published) == (1, 7, 6)
    box.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_payloads_are_encrypted_at_rest(tmp_path: Path) -> None:
    marker = b"SECRET-MARKER-c0ffee-4711"
    path = tmp_path / "outbox.db"
    box = Outbox(path, KEY)
    for i in range(20):
        box.enqueue(TOPIC, FAR, fixed(marker + b"-%d-" % i + marker))
    assert path.with_name(path.name + "-wal").exists()  # the rows are (at least) in the WAL now

    def every_file() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file())

    blob = every_file()
    assert len(blob) > 0 and b"ev-1" in blob  # the metadata is there in clear, so we are reading the right files
    assert marker not in blob
    assert marker.hex().encode() not in blob
    assert [i.payload.startswith(marker) for i in box.next_batch(0, 100)] == [True] * 20
    box.close()  # checkpoint into the main file
    assert marker not in every_file()


def test_a_different_key_makes_rows_unreadable_and_they_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, KEY)
    fill(box, 3)
    box.close()

    other = Outbox(path, OTHER_KEY)
    assert other.next_batch(0, 10) == []
    s = other.stats()
    assert (s.pending, s.enqueued, s.unreadable, s.published, s.expired) == (0, 3, 3, 0, 0)
    assert other.enqueue(TOPIC, FAR, builder()) == 4  # readable with its own key
    assert [(i.seq, i.payload) for i in other.next_batch(0, 10)] == [(4, payload_for(4))]
    other.close()

    box = Outbox(path, KEY)  # the original key can no longer see them either: they were set aside
    assert box.next_batch(0, 10) == []
    assert box.stats().unreadable == 4
    box.close()


TAMPERS: dict[str, Callable[[sqlite3.Connection], object]] = {
    "topic": lambda db: db.execute("UPDATE pending SET topic = 'edge/v1/cam-02/event/match' WHERE seq = 2"),
    "event_id": lambda db: db.execute("UPDATE pending SET event_id = 'ev-other' WHERE seq = 2"),
    "body bit flip": lambda db: db.execute(
        "UPDATE pending SET body = ? WHERE seq = 2",
        (bytes([db.execute("SELECT body FROM pending WHERE seq = 2").fetchone()[0][0] ^ 1])
         + db.execute("SELECT body FROM pending WHERE seq = 2").fetchone()[0][1:],)),
    "body truncated": lambda db: db.execute("UPDATE pending SET body = substr(body, 1, 10) WHERE seq = 2"),
    "body from another row": lambda db: db.execute(
        "UPDATE pending SET body = (SELECT body FROM pending WHERE seq = 1), "
        "nonce = (SELECT nonce FROM pending WHERE seq = 1) WHERE seq = 2"),
    "nonce": lambda db: db.execute("UPDATE pending SET nonce = ? WHERE seq = 2", (os.urandom(12),)),
    "seq moved": lambda db: db.execute("UPDATE pending SET seq = 9 WHERE seq = 2"),
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_a_tampered_row_is_unreadable_and_not_returned(tmp_path: Path, how: str) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, KEY)
    fill(box, 3)
    db = sqlite3.connect(path, isolation_level=None)
    TAMPERS[how](db)
    db.close()

    items = box.next_batch(0, 10)
    assert [(i.seq, i.payload) for i in items] == [(1, payload_for(1)), (3, payload_for(3))]
    s = box.stats()
    assert (s.pending, s.unreadable, s.enqueued) == (2, 1, 3)
    assert [r[0] for r in raw_rows(path)] == [1, 3]  # removed from the file, not just skipped
    assert box.next_batch(0, 10) == items
    assert box.stats().unreadable == 1
    box.close()


DAMAGES = {
    "body stored as text": ("UPDATE pending SET body = 'tampered' WHERE seq = 2", ()),
    "nonce too short": ("UPDATE pending SET nonce = ? WHERE seq = 2", (b"\x00" * 5,)),
}


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_row_of_the_wrong_type_or_size_is_unreadable(tmp_path: Path, how: str) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, KEY)
    fill(box, 3)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(*DAMAGES[how])
    db.close()
    assert [i.seq for i in box.next_batch(0, 10)] == [1, 3]
    assert box.stats().unreadable == 1
    box.close()


def test_the_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", KEY, max_rows=5)
    assert fill(box, 8) == list(range(1, 9))
    items = box.next_batch(0, 100)
    assert [(i.seq, i.payload) for i in items] == [(s, payload_for(s)) for s in range(4, 9)]
    s = box.stats()
    assert (s.pending, s.enqueued, s.dropped, s.published) == (5, 8, 3, 0)
    assert box.ack([4]) == 1
    box.enqueue(TOPIC, FAR, builder())  # room again: nothing dropped
    assert box.stats().dropped == 3
    box.enqueue(TOPIC, FAR, builder())
    assert box.stats().dropped == 4
    assert [i.seq for i in box.next_batch(0, 100)] == [6, 7, 8, 9, 10]
    box.close()


def test_max_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="max_rows"):
        Outbox(tmp_path / "outbox.db", KEY, max_rows=0)


def test_a_failed_enqueue_changes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", KEY, max_rows=2)
    fill(box, 2)
    # a duplicate event id is refused by the database after the bound already made room: all rolled back
    with pytest.raises(OutboxError, match=r"outbox\.db"):
        box.enqueue(TOPIC, FAR, lambda s: ("ev-2", b"dup"))

    def boom(seq: int) -> tuple[str, bytes]:
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        box.enqueue(TOPIC, FAR, boom)
    s = box.stats()
    assert (s.pending, s.enqueued, s.dropped) == (2, 2, 0)
    assert [i.seq for i in box.next_batch(0, 10)] == [1, 2]
    assert box.enqueue(TOPIC, FAR, builder()) == 3
    box.close()


def test_expired_rows_are_removed_and_counted_never_returned(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "outbox.db", KEY, clock=lambda: now[0])
    for expires in (1100.0, 1200.0, 1300.0, 1400.0):
        box.enqueue(TOPIC, expires, builder())
    assert [i.seq for i in box.next_batch(0, 10)] == [1, 2, 3, 4]
    assert box.stats().expired == 0

    now[0] = 1200.0  # expires <= now: seq 2 expires exactly now
    assert [i.seq for i in box.next_batch(0, 10)] == [3, 4]
    s = box.stats()
    assert (s.pending, s.expired, s.published) == (2, 2, 0)

    now[0] = 5000.0
    assert box.next_batch(3, 10) == []  # only the rows it looked at are checked
    assert box.stats().expired == 3
    assert [r[0] for r in raw_rows(box.path)] == [3]
    assert box.next_batch(0, 10) == []
    assert box.stats().expired == 4
    assert box.ack([1, 2, 3, 4]) == 0  # gone: an ack cannot count them as published
    assert box.stats().published == 0
    box.close()


def test_a_held_row_is_not_sent_and_holds_back_what_follows_until_released(tmp_path: Path) -> None:
    """An alert is committed held while the node records it: nothing from it on is handed to the
    publisher (order kept), until it is released."""
    box = Outbox(tmp_path / "outbox.db", KEY)
    fill(box, 2)
    held = box.enqueue(TOPIC, FAR, builder(), hold=True)
    fill(box, 2, topic="edge/v1/cam-01/audit")  # a checkpoint committed meanwhile waits behind it
    assert held == 3
    assert [i.seq for i in box.next_batch(0, 10)] == [1, 2]
    assert box.next_batch(2, 10) == [] and box.rows([3, 4]) == []
    assert box.sendable() == 2 and box.stats().pending == 5
    assert [(i.seq, i.event_id, i.payload) for i in box.held()] == [(3, "ev-3", payload_for(3))]
    assert box.release(3) is True
    assert [i.seq for i in box.next_batch(2, 10)] == [3, 4, 5]
    assert box.held() == [] and box.sendable() == 5
    assert box.release(3) is True and box.release(99) is False  # releasing again changes nothing
    box.close()


def test_held_rows_survive_reopen_expired_or_not_and_can_be_withdrawn(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "outbox.db"
    box = Outbox(path, KEY, clock=lambda: now[0])
    box.enqueue(TOPIC, 1100.0, builder(), hold=True)
    box.enqueue(TOPIC, FAR, builder(), hold=True)
    box.enqueue(TOPIC, FAR, builder())
    box.close()  # as a kill between commit and release leaves it
    now[0] = 2000.0  # seq 1 is past its expiry
    box = Outbox(path, KEY, clock=lambda: now[0])
    assert [i.seq for i in box.held()] == [1, 2]  # found at start whatever their expiry: each is put on record
    assert box.next_batch(0, 10) == []
    assert box.withdraw(2) is True and box.withdraw(2) is False and box.withdraw(3) is False  # only held rows
    assert box.stats().dropped == 1
    assert box.release(1)
    assert [i.seq for i in box.next_batch(0, 10)] == [3]  # the expired one is then dropped as any other
    s = box.stats()
    assert (s.pending, s.expired, s.dropped) == (1, 1, 1)
    box.close()


OLD_SCHEMA = """
CREATE TABLE pending (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL,
                      expires REAL NOT NULL, nonce BLOB NOT NULL, body BLOB NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_an_outbox_from_before_held_rows_opens_with_its_rows_sendable(tmp_path: Path) -> None:
    """The migration adds the held column to an existing outbox.db; its rows stay sendable, in order."""
    donor = Outbox(tmp_path / "donor.db", KEY)
    fill(donor, 3)
    donor.close()
    path = tmp_path / "outbox.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute("ATTACH DATABASE ? AS donor", (str(tmp_path / "donor.db"),))
    old.execute("INSERT INTO pending SELECT seq, event_id, topic, expires, nonce, body FROM donor.pending")
    old.execute("INSERT INTO counters SELECT name, value FROM donor.counters")
    old.commit()
    old.close()
    box = Outbox(path, KEY)
    assert [(i.seq, i.payload) for i in box.next_batch(0, 10)] == [(s, payload_for(s)) for s in (1, 2, 3)]
    assert box.held() == [] and box.stats().enqueued == 3
    assert box.enqueue(TOPIC, FAR, builder(), hold=True) == 4
    box.close()
    box = Outbox(path, KEY)  # opening again migrates nothing more
    assert [i.seq for i in box.held()] == [4] and box.sendable() == 3
    box.close()


CHILD = r"""
import sys, time
from pathlib import Path
from edge.events.outbox import Outbox
box = Outbox(Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), max_rows=40)
i = 0
while True:
    i += 1
    ttl = 0.0005 if i % 7 == 0 else 3600.0
    box.enqueue("edge/v1/cam-01/event/match", time.time() + ttl, lambda s: (f"ev-{s}", b"payload-%d" % s))
    if i == 1:
        print("ready", flush=True)
    if i % 5 == 0:
        batch = box.next_batch(0, 10)
        box.ack([b.seq for b in batch[:3]])
"""


def test_sigkill_leaves_a_consistent_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random(1234)
    deadline = time.monotonic() + 8
    kills = 0
    while kills < 6 and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), KEY.hex()], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line != b"ready\n":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child did not start: {line!r} {err.decode()[-2000:]}")
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
    assert kills >= 3

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    (nrows,) = db.execute("SELECT COUNT(*) FROM pending").fetchone()
    seqs = [r[0] for r in db.execute("SELECT seq FROM pending ORDER BY seq")]
    db.close()

    box = Outbox(path, KEY, max_rows=40, clock=lambda: 0.0)  # clock 0: nothing expires while we read
    items = box.next_batch(0, 10_000)
    s = box.stats()
    assert s.unreadable == 0
    assert len(items) == nrows == s.pending
    assert [i.seq for i in items] == seqs
    assert all(i.payload == payload_for(i.seq) and i.event_id == f"ev-{i.seq}" for i in items)
    assert s.enqueued > kills
    assert s.enqueued == nrows + s.published + s.dropped + s.expired + s.unreadable
    assert not seqs or seqs[-1] <= s.enqueued
    assert nrows <= 40
    # it keeps working after all that
    assert box.enqueue(TOPIC, FAR, builder()) == s.enqueued + 1
    box.close()


# -- a property test against a list model --
@dataclass
class Row:
    seq: int
    expires: float
    payload: bytes


ops = st.lists(st.one_of(
    st.tuples(st.just("enqueue"), st.integers(1, 6), st.binary(max_size=40)),
    st.tuples(st.just("tick"), st.integers(0, 4)),
    st.tuples(st.just("ack"), st.lists(st.integers(0, 30), max_size=6)),
    st.tuples(st.just("batch"), st.integers(0, 30), st.integers(1, 6)),
    st.tuples(st.just("reopen")),
), max_size=40)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, max_rows=st.integers(1, 6))
def test_outbox_behaves_like_a_bounded_list(ops: list[tuple[object, ...]], max_rows: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "outbox.db"
        clock = [100.0]

        def open_box() -> Outbox:
            return Outbox(path, KEY, max_rows=max_rows, durable=False, clock=lambda: clock[0])

        box = open_box()
        model: list[Row] = []
        c = {"enqueued": 0, "published": 0, "dropped": 0, "expired": 0}
        try:
            for op in ops:
                kind = op[0]
                if kind == "enqueue":
                    ttl, data = op[1], op[2]
                    assert isinstance(ttl, int) and isinstance(data, bytes)
                    seq = box.enqueue(TOPIC, clock[0] + ttl, fixed(data))
                    c["enqueued"] += 1
                    assert seq == c["enqueued"]
                    model.append(Row(seq, clock[0] + ttl, data))
                    if len(model) > max_rows:
                        c["dropped"] += len(model) - max_rows
                        del model[:len(model) - max_rows]
                elif kind == "tick":
                    assert isinstance(op[1], int)
                    clock[0] += op[1]
                elif kind == "ack":
                    acked = op[1]
                    assert isinstance(acked, list)
                    present = {r.seq for r in model} & set(acked)
                    assert box.ack(acked) == len(present)
                    c["published"] += len(present)
                    model = [r for r in model if r.seq not in present]
                elif kind == "batch":
                    after, limit = op[1], op[2]
                    assert isinstance(after, int) and isinstance(limit, int)
                    looked = [r for r in model if r.seq > after][:limit]
                    gone = {r.seq for r in looked if r.expires <= clock[0]}
                    want = [(r.seq, r.payload) for r in looked if r.seq not in gone]
                    assert [(i.seq, i.payload) for i in box.next_batch(after, limit)] == want
                    c["expired"] += len(gone)
                    model = [r for r in model if r.seq not in gone]
                else:
                    box.close()
                    box = open_box()
                s = box.stats()
                assert (s.pending, s.enqueued, s.published, s.dropped, s.expired, s.unreadable) == (
                    len(model), c["enqueued"], c["published"], c["dropped"], c["expired"], 0)
            clock[0] = 0.0
            assert [(i.seq, i.payload) for i in box.next_batch(0, 1000)] == [(r.seq, r.payload) for r in model]
        finally:
            box.close()
