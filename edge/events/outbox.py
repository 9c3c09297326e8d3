"""The durable outbox: an event is committed here before it is published and removed only on PUBACK.

SQLite in WAL mode with synchronous=FULL, in the node's state dir. Rows are encrypted at rest (AES-GCM,
the device storage key, bound to seq, topic and event id), so a copied database reveals nothing. Bounded:
when full the oldest row is dropped and counted; rows past their expiry are dropped and counted rather
than sent late. Counters survive restarts and are reported on the state topic.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
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
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


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
            self._db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(c,) for c in _COUNTERS])
            (enqueued,) = self._db.execute("SELECT value FROM counters WHERE name = 'enqueued'").fetchone()
            self._last_seq = int(enqueued)
        except sqlite3.Error as exc:
            raise OutboxError(f"{path}: cannot open the outbox ({exc})") from None

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

    def enqueue(self, topic: str, expires: float, build: Callable[[int], tuple[str, bytes]]) -> int:
        """Commit one message; `build(seq)` returns (event_id, payload) for the sequence number it gets.

        Returns the seq once the row is durable. When the outbox is full the oldest rows make room."""
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
            self._db.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?)", (seq, event_id, topic, expires, nonce,
                                                                                 body))
            self._bump("enqueued", 1)
        self._last_seq = seq
        return seq

    @property
    def last_seq(self) -> int:
        """The highest seq ever committed (lets the publisher skip a query when nothing is new)."""
        return self._last_seq

    def next_batch(self, after_seq: int, limit: int) -> list[OutboxItem]:
        """Up to `limit` rows with seq > after_seq, in order; expired and unreadable rows are removed
        (and counted) instead of returned."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT seq, event_id, topic, expires, nonce, body FROM pending "
                                        "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
            return self._open_rows(rows)

    def rows(self, seqs: Iterable[int]) -> list[OutboxItem]:
        """The given rows still pending, in seq order (to retry ones the broker refused)."""
        wanted = sorted(set(seqs))
        with self._lock:
            try:
                rows = [r for s in wanted for r in self._db.execute(
                    "SELECT seq, event_id, topic, expires, nonce, body FROM pending WHERE seq = ?", (s,))]
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: read failed ({exc})") from None
            return self._open_rows(rows)

    def _open_rows(self, rows: list[Any]) -> list[OutboxItem]:
        out: list[OutboxItem] = []
        now = self._clock()
        expired: list[int] = []
        unreadable: list[int] = []
        for seq, event_id, topic, expires, nonce, body in rows:
            try:
                if expires <= now:
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

        Committed without waiting for fsync (WAL, synchronous=NORMAL): a delete lost to power failure only
        re-sends a row the consumer de-duplicates, while an insert lost would lose an event."""
        batch = list(seqs)
        if not batch:
            return 0
        with self._lock:
            relax = self._sync == "FULL"
            try:
                if relax:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                with self._transaction("ack"):
                    cur = self._db.executemany("DELETE FROM pending WHERE seq = ?", [(s,) for s in batch])
                    removed = cur.rowcount
                    self._bump("published", removed)
            finally:
                if relax:
                    self._db.execute(f"PRAGMA synchronous={self._sync}")
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
