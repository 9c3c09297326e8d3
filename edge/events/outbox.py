"""The durable outbox: an event is committed here before it is published and removed only on PUBACK.

SQLite in WAL mode with synchronous=FULL, in the node's state dir. Rows are encrypted at rest (AES-GCM,
the device storage key, bound to seq, topic and event id), so a copied database reveals nothing. Bounded:
when full the oldest row is dropped and counted; rows past their expiry are dropped and counted rather
than sent late. Counters survive restarts and are reported on the state topic.

A row may be committed *held*: durable, but not to be sent until `release`. A match event is held while
the node puts it on its own record (evidence vault, audit log), so no alert leaves without that record; a
held row is a barrier, so nothing committed after it overtakes it. Held rows a crash left behind are found
with `held()` at the next start and released (or withdrawn) before the link starts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.events.messages import OutboxStats
from edge.sqlitedb import immediate, open_durable

DEFAULT_MAX_ROWS = 10_000
_COUNTERS = tuple(f.name for f in fields(OutboxStats) if f.name != "pending")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    expires REAL NOT NULL,
    nonce BLOB NOT NULL,
    body BLOB NOT NULL,
    held INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# an outbox.db from before held rows: every row in it was sendable, which is what the default says
_ADD_HELD = "ALTER TABLE pending ADD COLUMN held INTEGER NOT NULL DEFAULT 0"
_HELD_INDEX = "CREATE INDEX IF NOT EXISTS pending_held ON pending (seq) WHERE held = 1"
# the first held row: nothing from it on is sendable
_BARRIER = "COALESCE((SELECT MIN(seq) FROM pending WHERE held = 1), 9223372036854775807)"
_COLUMNS = "seq, event_id, topic, expires, nonce, body"


class OutboxError(Exception):
    """The outbox database cannot be opened or written (names the file)."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    event_id: str
    topic: str
    expires: float  # unix seconds
    payload: bytes


class Outbox:
    """One SQLite file; safe to share between the thread that enqueues and the one that publishes."""

    def __init__(self, path: Path, key: bytes, max_rows: int = DEFAULT_MAX_ROWS, durable: bool = True,
                 clock: Callable[[], float] = time.time):
        if max_rows < 1:
            raise OutboxError(f"{path}: max_rows must be at least 1")
        self.path = path
        self.max_rows = max_rows
        self._aead = AESGCM(key)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._sync = "FULL" if durable else "OFF"
            self._db = open_durable(path, self._sync)
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(c,) for c in _COUNTERS])
            (enqueued,) = self._db.execute("SELECT value FROM counters WHERE name = 'enqueued'").fetchone()
            self._last_seq = int(enqueued)
        except sqlite3.Error as exc:
            raise OutboxError(f"{path}: cannot open the outbox ({exc})") from None

    def _migrate(self) -> None:
        """Bring a file written by an older version up to this schema (idempotent)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pending)")}
        if "held" not in columns:
            self._db.execute(_ADD_HELD)
        self._db.execute(_HELD_INDEX)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _aad(seq: int, topic: str, event_id: str) -> bytes:
        return f"edge-outbox/v1|{seq}|{topic}|{event_id}".encode()

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _transaction(self, what: str) -> AbstractContextManager[None]:
        return immediate(self._db, lambda exc: OutboxError(f"{self.path}: {what} failed ({exc})"))

    def enqueue(self, topic: str, expires: float, build: Callable[[int], tuple[str, bytes]],
                hold: bool = False) -> int:
        """Commit one message; `build(seq)` returns (event_id, payload) for the sequence number it gets.

        Returns the seq once the row is durable. When the outbox is full the oldest rows make room. With
        `hold`, the row (and every row after it) is not sent until `release(seq)`."""
        with self._lock, self._transaction("enqueue"):
            (enqueued,) = self._db.execute("SELECT value FROM counters WHERE name = 'enqueued'").fetchone()
            seq = int(enqueued) + 1
            event_id, payload = build(seq)
            (count,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
            overflow = int(count) + 1 - self.max_rows
            if overflow > 0:
                self._db.execute("DELETE FROM pending WHERE seq IN (SELECT seq FROM pending ORDER BY seq LIMIT ?)",
                                 (overflow,))
                self._bump("dropped", overflow)
            nonce = os.urandom(12)
            body = self._aead.encrypt(nonce, payload, self._aad(seq, topic, event_id))
            self._db.execute(f"INSERT INTO pending ({_COLUMNS}, held) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (seq, event_id, topic, expires, nonce, body, int(hold)))
            self._bump("enqueued", 1)
        self._last_seq = seq
        return seq

    @property
    def last_seq(self) -> int:
        """The highest seq ever committed (lets the publisher skip a query when nothing is new)."""
        return self._last_seq

    def next_batch(self, after_seq: int, limit: int) -> list[OutboxItem]:
        """Up to `limit` rows with seq > after_seq, in order, stopping before the first held row; expired
        and unreadable rows are removed (and counted) instead of returned."""
        with self._lock:
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM pending WHERE seq > ? AND seq < {_BARRIER} "
                                        "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
            return self._open_rows(rows)

    def rows(self, seqs: Iterable[int]) -> list[OutboxItem]:
        """The given rows still pending and sendable (before the first held row), in seq order (to retry
        ones the broker refused)."""
        wanted = sorted(set(seqs))
        with self._lock:
            try:
                rows = [r for s in wanted for r in self._db.execute(
                    f"SELECT {_COLUMNS} FROM pending WHERE seq = ? AND seq < {_BARRIER}", (s,))]
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
            return self._open_rows(rows)

    def held(self) -> list[OutboxItem]:
        """Every held row, in order, expired or not (a crash between commit and release leaves them);
        unreadable ones are removed and counted."""
        with self._lock:
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM pending WHERE held = 1 ORDER BY seq").fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
            return self._open_rows(rows, drop_expired=False)

    @contextmanager
    def _relaxed(self) -> Iterator[None]:
        """Commit without waiting for fsync (WAL, synchronous=NORMAL), for writes whose loss to power
        failure only repeats work: an ack lost re-sends a row the consumer de-duplicates; a release lost
        leaves a held row that the next start finds on the record and releases again."""
        relax = self._sync == "FULL"
        try:
            if relax:
                self._db.execute("PRAGMA synchronous=NORMAL")
            yield
        finally:
            if relax:
                self._db.execute(f"PRAGMA synchronous={self._sync}")

    def release(self, seq: int) -> bool:
        """A held row may be sent now; returns False if it is gone (dropped by the bound)."""
        with self._lock, self._relaxed(), self._transaction(f"releasing row {seq}"):
            cur = self._db.execute("UPDATE pending SET held = 0 WHERE seq = ?", (seq,))
            return cur.rowcount > 0

    def withdraw(self, seq: int) -> bool:
        """Remove a held row that must never be sent (counted as dropped); False if it was not there."""
        with self._lock, self._transaction(f"withdrawing row {seq}"):
            cur = self._db.execute("DELETE FROM pending WHERE seq = ? AND held = 1", (seq,))
            self._bump("dropped", cur.rowcount)
            return cur.rowcount > 0

    def sendable(self) -> int:
        """Rows the publisher may send now (pending, before the first held row)."""
        with self._lock:
            try:
                (n,) = self._db.execute(f"SELECT COUNT(*) FROM pending WHERE seq < {_BARRIER}").fetchone()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
        return int(n)

    def _open_rows(self, rows: list[Any], drop_expired: bool = True) -> list[OutboxItem]:
        out: list[OutboxItem] = []
        now = self._clock()
        expired: list[int] = []
        unreadable: list[int] = []
        for seq, event_id, topic, expires, nonce, body in rows:
            try:
                if drop_expired and expires <= now:
                    expired.append(seq)
                    continue
                payload = self._aead.decrypt(nonce, body, self._aad(seq, topic, event_id))
            except (InvalidTag, TypeError, ValueError):  # altered bytes, or a damaged column's type/size
                unreadable.append(seq)
                continue
            out.append(OutboxItem(seq, event_id, topic, float(expires), payload))
        self._remove(expired, "expired")
        self._remove(unreadable, "unreadable")
        return out

    def _remove(self, seqs: list[int], counter: str) -> None:
        if not seqs:
            return
        with self._transaction(f"removing {counter} rows"):
            cur = self._db.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in seqs])
            self._bump(counter, cur.rowcount)

    def ack(self, seqs: Iterable[int]) -> int:
        """Remove rows the broker acknowledged; returns how many were still pending.

        Committed without waiting for fsync (see `_relaxed`), while an insert lost would lose an event."""
        batch = list(seqs)
        if not batch:
            return 0
        with self._lock, self._relaxed(), self._transaction("ack"):
            cur = self._db.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in batch])
            removed = cur.rowcount
            self._bump("published", removed)
        return removed

    def stats(self) -> OutboxStats:
        with self._lock:
            try:
                counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
                (pending,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
        return OutboxStats(pending=int(pending), enqueued=counters["enqueued"], published=counters["published"],
                           dropped=counters["dropped"], expired=counters["expired"],
                           unreadable=counters["unreadable"])
