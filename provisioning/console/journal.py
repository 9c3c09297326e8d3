"""The console's own audit log: who logged in, who viewed which alert when, every decision and what the node
said to it, every account change. The node's hash chain (edge.audit.AuditLog) with the console's kinds.

A console has no device key, so it makes one of its own: an Ed25519 key created with the journal
(<console-dir>/journal-key.pem, 0600, never leaves the host), whose public half is written beside the log
(audit/journal-key.pub, hex) and should be noted off the host when the console is set up. The journal signs a
checkpoint (seq, head) into audit/checkpoints.jsonl after console start and stop, each decision and account
change, and every CHECKPOINT_EVERY records. `edge-fleet audit verify --console DIR` checks the chain and
every checkpoint; with --console-key (the public key noted at setup) a replaced key is caught too.

What this proves and what it cannot: a changed, removed, inserted or reordered record breaks the chain; a
log cut short is caught against the checkpoints, as long as a copy of them survives (keep one off the host,
e.g. with the backups). Someone who holds the console host and its key can rewrite log and checkpoints
together: only copies taken off the host before then show that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.audit import AUDIT_FILE, AuditError, AuditLog, Verified, verify_log
from edge.fsutil import write_atomic
from edge.trust.keys import ed25519_public, key_id, raw_public, read_ed25519, write_private

CONSOLE_KINDS = frozenset({"console-start", "console-stop", "login", "login-failed", "logout", "view",
                           "decision", "review-sent", "review-result", "evidence-destroyed", "account",
                           "event-rejected", "evidence-destroy-failed"})
CONSOLE_LOG_ID = "console"  # the `device_id` of the console's checkpoints (the checkpoint format is the node's)
JOURNAL_KEY = "journal-key.pem"  # in the console dir, not in audit/: copying the log off the host leaves it behind
JOURNAL_PUBLIC = "journal-key.pub"  # beside the log
CHECKPOINTS = "checkpoints.jsonl"  # beside the log (where AuditLog.checkpoint writes)
CHECKPOINT_EVERY = 50
CHECKPOINT_KINDS = frozenset({"console-start", "console-stop", "account", "decision"})  # and every CHECKPOINT_EVERY


@dataclass(frozen=True)
class JournalFiles:
    """Where a console dir keeps its journal."""

    log: Path
    checkpoints: Path
    public_key: Path
    private_key: Path

    @classmethod
    def of(cls, console_dir: Path) -> JournalFiles:
        log = console_dir / AUDIT_FILE
        return cls(log, log.with_name(CHECKPOINTS), log.with_name(JOURNAL_PUBLIC), console_dir / JOURNAL_KEY)


class ConsoleJournal:
    """Appends to the console's audit log (durable before `record` returns; threads share one instance)."""

    def __init__(self, console_dir: Path, clock: Callable[[], datetime]):
        self.files = JournalFiles.of(console_dir)
        self._key = self._journal_key()
        self._log = AuditLog(self.files.log, clock, CONSOLE_KINDS)
        self._lock = threading.Lock()

    def _journal_key(self) -> Ed25519PrivateKey:
        """The console's checkpoint key, made on first use; its public half (hex) written beside the log."""
        path = self.files.private_key
        if path.exists():
            key = read_ed25519(path)
        else:
            key = Ed25519PrivateKey.generate()
            write_private(path, key)
        public = raw_public(key.public_key()).hex()
        pub = self.files.public_key
        pub.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            noted = pub.read_text().strip() if pub.exists() else None
            if noted is None:
                write_atomic(pub, (public + "\n").encode())
        except OSError as exc:
            raise AuditError(f"{pub}: cannot read or write ({exc.strerror})") from None
        if noted is not None and noted != public:
            raise AuditError(f"{pub}: does not match {path} (a key was replaced; checkpoints signed before "
                             "would no longer verify)")
        return key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self._key.public_key())

    def record(self, kind: str, **data: Any) -> None:
        """One record (kind from CONSOLE_KINDS). Never a face, a crop or an embedding: AuditLog refuses them."""
        with self._lock:
            entry = self._log.append(kind, data)
            if kind in CHECKPOINT_KINDS or entry.seq % CHECKPOINT_EVERY == 0:
                self._log.checkpoint(CONSOLE_LOG_ID, self._key)

    def checkpoint(self) -> None:
        """Sign the log's length and head now (say, before copying the log off the host)."""
        with self._lock:
            self._log.checkpoint(CONSOLE_LOG_ID, self._key)


@dataclass(frozen=True)
class JournalCheck:
    verified: Verified
    checkpoints: int
    key_id: str
    key_pinned: bool  # checked against a key given from outside the console dir


def verify_journal(console_dir: Path, public_key: str | None = None) -> JournalCheck:
    """Check a console's audit log: the chain, and every checkpoint against the journal key (the one given,
    hex, else the one written beside the log). Raises AuditTamperError (what is wrong, where) or AuditError."""
    files = JournalFiles.of(console_dir)
    try:
        raw = files.log.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"{files.log}: no console audit log here (is {console_dir} a console dir?)") from None
    try:
        noted = files.public_key.read_text().strip() if files.public_key.exists() else None
        cps = [c for c in files.checkpoints.read_bytes().split(b"\n") if c] if files.checkpoints.exists() else []
    except OSError as exc:
        raise AuditError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    hex_key = public_key if public_key is not None else noted
    if hex_key is None:
        raise AuditError(f"{files.public_key}: missing, and no --console-key given: checkpoints cannot be checked")
    try:
        key = ed25519_public(hex_key)
    except ValueError:
        where = "--console-key" if public_key is not None else str(files.public_key)
        raise AuditError(f"{where}: not an Ed25519 public key (64 hex digits)") from None
    verified = verify_log(raw, str(files.log), key, cps, CONSOLE_KINDS)
    return JournalCheck(verified, len(cps), key_id(key), public_key is not None)
