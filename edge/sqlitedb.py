"""The node's SQLite files (outbox, evidence vault): one way to open them durably and to run a write."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def open_durable(path: Path, synchronous: str = "FULL", timeout: float = 5.0) -> sqlite3.Connection:
    """A connection in WAL mode, its file 0600, shareable between threads (callers hold their own lock)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    os.chmod(path, 0o600)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


@contextmanager
def immediate(db: sqlite3.Connection, fail: Callable[[sqlite3.Error], Exception]) -> Iterator[None]:
    """BEGIN IMMEDIATE .. COMMIT. Any failure rolls back, so one failed write never leaves the connection
    inside a transaction (which would jam every later write); an SQLite error becomes `fail(error)`."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise fail(exc) from None
