"""What the console keeps: verified alerts and the officers' decisions (SQLite), the crops encrypted at rest.

    <console-dir>/alerts.db            alerts (the verified event's fields, never a crop) and decisions
    <console-dir>/evidence/vault.db    the crops: edge.vault.EvidenceVault, the node's own vault, reused
    <console-dir>/storage.key          the console storage key (32 random bytes, 0600) that wraps the day keys

The crops of an alert are sealed under a key per deployment and UTC day of receipt, destroyed once the day
is the deployment's retention old (as on the node), and deleted at once when the alert is dismissed. An
alert's row stays (the decision record needs it) with the reason its evidence is gone.

A crop is kept only when its bytes are a JPEG or a PNG and say so themselves (magic bytes) as well as the event's
declared media type: whatever the console serves later is an image of the type it is served as. The signed review
command of an outcome that stands is kept beside the alert until the node's final answer, so a restart resends it.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.events.messages import EVIDENCE_MEDIA_TYPES
from edge.sqlitedb import immediate, open_durable
from edge.vault import Evidence, EvidenceVault, VaultError
from edge.vault import EvidenceGoneError as VaultEvidenceGoneError
from provisioning.console.references import media_type
from provisioning.tail import Crop, VerifiedEvent

ALERTS_FILE = Path("alerts.db")
VAULT_FILE = Path("evidence") / "vault.db"
STORAGE_KEY_FILE = Path("storage.key")
STORAGE_KEY_BYTES = 32
DISMISSED = "dismissed"  # why evidence is gone: the alert was dismissed (destroyed at once)
RETENTION = "retention"  # ... or its day key reached the deployment's retention
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    event_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    track_id TEXT NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    margin REAL,
    frames_agreeing INTEGER NOT NULL,
    event_time REAL NOT NULL,
    received REAL NOT NULL,
    evidence_until REAL NOT NULL,      -- unix seconds: midnight UTC of the day received + retention
    signature TEXT NOT NULL,
    has_face INTEGER NOT NULL,
    has_context INTEGER NOT NULL,
    evidence_note TEXT,                -- why a crop is absent or was not opened
    evidence_gone TEXT,                -- 'dismissed' | 'retention' once the crops are destroyed
    reviewers_required INTEGER NOT NULL,
    outcome TEXT,                      -- 'confirmed' | 'dismissed' once it stands
    review_command_id TEXT,
    node_answer TEXT,
    terms_note TEXT NOT NULL DEFAULT '',  -- where retention and reviewers_required came from (fail-closed: why)
    review_envelope BLOB,              -- the signed review command, kept until the node's final answer
    review_expires REAL,               -- unix seconds: when that command expires (then it is signed anew)
    answer_final INTEGER NOT NULL DEFAULT 0  -- 1: the node answered (or had the command already): no resend
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (outcome, event_time);
CREATE INDEX IF NOT EXISTS alerts_entry ON alerts (entry_id);
CREATE TABLE IF NOT EXISTS decisions (
    event_id TEXT NOT NULL REFERENCES alerts (event_id),
    reviewer TEXT NOT NULL,
    outcome TEXT NOT NULL,
    note TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (event_id, reviewer)
);
"""
_ALERT_COLUMNS = ("event_id, device_id, camera_id, deployment_id, entry_id, track_id, score, threshold, margin, "
                  "frames_agreeing, event_time, received, evidence_until, signature, has_face, has_context, "
                  "evidence_note, evidence_gone, reviewers_required, outcome, review_command_id, node_answer, "
                  "terms_note")
_ADDED_COLUMNS = (("terms_note", "TEXT NOT NULL DEFAULT ''"), ("review_envelope", "BLOB"),
                  ("review_expires", "REAL"), ("answer_final", "INTEGER NOT NULL DEFAULT 0"))  # to stores made before


class ConsoleError(Exception):
    """The console cannot do what was asked (the subclass says why; the message names the alert or file)."""


class StoreError(ConsoleError):
    """The console's store cannot be opened or written (names the file)."""


class UnknownAlertError(StoreError):
    """No alert with that event id in this console."""


class EvidenceGoneError(StoreError):
    """The crop is not here: destroyed (dismissal, retention), never sent, or not opened."""


class StorageKeyError(StoreError):
    """The console storage key file is missing, of the wrong size or readable by others (names the file)."""


@dataclass(frozen=True)
class StoredDecision:
    reviewer: str
    outcome: str
    note: str
    at: datetime


@dataclass(frozen=True)
class StoredAlert:
    """One alert as the console keeps it (the verified event's fields, where its evidence stands)."""

    event_id: str
    device_id: str
    camera_id: str
    deployment_id: str
    entry_id: str
    track_id: str
    score: float
    threshold: float
    margin: float | None
    frames_agreeing: int
    event_time: datetime
    received: datetime
    evidence_until: datetime
    signature: str
    has_face: bool
    has_context: bool
    evidence_note: str | None
    evidence_gone: str | None
    reviewers_required: int
    outcome: str | None
    review_command_id: str | None
    node_answer: str | None
    decisions: tuple[StoredDecision, ...]
    terms_note: str = ""  # where retention_days and reviewers_required came from (fail-closed: and why)


@dataclass(frozen=True)
class StoredTerms:
    """What an alert is judged under, and where that came from (said on the alert's page)."""

    retention_days: int
    reviewers_required: int
    note: str


@dataclass(frozen=True)
class PendingReview:
    """An outcome that stands without the node's final answer: its signed command (None: never signed, or
    expired) to send again."""

    event_id: str
    device_id: str
    outcome: str
    command_id: str | None
    envelope: bytes | None
    expires: datetime | None


@dataclass(frozen=True)
class Destroyed:
    """What one destruction removed: the alerts whose crops went, and the day keys destroyed with them."""

    reason: str
    event_ids: tuple[str, ...]
    keys: tuple[str, ...] = ()


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def day_start(t: datetime) -> datetime:
    """Midnight UTC of t's day: evidence of a day is kept under one key, destroyed retention days later."""
    u = t.astimezone(UTC)
    return datetime(u.year, u.month, u.day, tzinfo=UTC)


def storage_key(path: Path) -> bytes:
    """The console storage key, made (0600) on first use; refused if others may read it or it is not 32 bytes."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(STORAGE_KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
    try:
        if path.stat().st_mode & 0o077:
            raise StorageKeyError(f"{path}: the console storage key is readable by others (chmod 600 it)")
        key = path.read_bytes()
    except OSError as exc:
        raise StorageKeyError(f"{path}: cannot read the console storage key ({exc.strerror or exc})") from None
    if len(key) != STORAGE_KEY_BYTES:
        raise StorageKeyError(f"{path}: the console storage key must be {STORAGE_KEY_BYTES} bytes, not {len(key)}")
    return key


class AlertStore:
    """Alerts, decisions and their evidence in one console directory; safe to share between threads."""

    def __init__(self, console_dir: Path, clock: Callable[[], datetime]):
        self.path = console_dir / ALERTS_FILE
        self.clock = clock
        self._lock = threading.RLock()
        self.vault = EvidenceVault(console_dir / VAULT_FILE, storage_key(console_dir / STORAGE_KEY_FILE), clock)
        try:
            self._db = open_durable(self.path)
            self._db.executescript(_SCHEMA)
            have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(alerts)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {kind}")
            if "answer_final" not in have:  # a store from before: an answer it recorded was the node's own
                self._db.execute("UPDATE alerts SET answer_final = 1 WHERE outcome IS NOT NULL AND node_answer IS NOT "
                                 "NULL AND node_answer NOT LIKE 'no answer yet%' AND node_answer NOT LIKE 'not sent%'")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the console's alert store ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.vault.close()

    @contextmanager
    def _write(self, what: str) -> Iterator[None]:
        with self._lock, immediate(self._db, lambda exc: StoreError(f"{self.path}: {what} failed ({exc})")):
            yield

    @contextmanager
    def _read(self, what: str) -> Iterator[None]:
        """A read under the lock; an SQLite error (locked, damaged file) becomes a StoreError naming the file."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {what} failed ({exc})") from None

    # -- alerts --
    def add(self, verified: VerifiedEvent, signature: str, terms: StoredTerms) -> bool:
        """Keep a verified event and its opened crops (crops first, so a crash between leaves no alert without
        its evidence); False when the alert is here already (a redelivery: nothing changes, nothing restored).
        A crop whose bytes are not the JPEG or PNG it claims to be is not kept; the alert says why."""
        e = verified.event
        received = self.clock()
        with self._lock:
            with self._read(f"looking up alert {e.event_id}"):
                if self._db.execute("SELECT 1 FROM alerts WHERE event_id = ?", (e.event_id,)).fetchone():
                    return False
            face, face_note = _image(verified.face, "face")
            context, context_note = _image(verified.context, "context")
            try:
                if face is not None or context is not None:
                    self.vault.store(e.event_id, e.deployment_id, terms.retention_days, face, context,
                                     media_type(face if face is not None else context or b""))
            except VaultError as exc:
                raise StoreError(str(exc)) from None
            until = day_start(received) + timedelta(days=terms.retention_days)
            note = "; ".join(n for n in (face_note, context_note) if n) or None
            with self._write(f"storing alert {e.event_id}"):
                self._db.execute(
                    f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES ({', '.join('?' * 23)})",
                    (e.event_id, e.device_id, e.camera_id, e.deployment_id, e.entry_id, e.track_id, e.score,
                     e.threshold, e.margin, e.frames_agreeing, e.ts.timestamp(),
                     received.timestamp(), until.timestamp(), signature, face is not None, context is not None,
                     note, None, terms.reviewers_required, None, None, None, terms.note))
        return True

    def get(self, event_id: str) -> StoredAlert:
        with self._read(f"reading alert {event_id}"):
            row = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE event_id = ?", (event_id,)).fetchone()
            if row is None:
                raise UnknownAlertError(f"{self.path}: no alert {event_id!r}")
            return self._alert(row)

    def alerts(self, decided: bool, limit: int | None = None) -> list[StoredAlert]:
        """Open alerts (no outcome yet) or decided ones, newest event first."""
        where = "outcome IS NOT NULL" if decided else "outcome IS NULL"
        with self._read("listing alerts"):
            rows = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE {where} "
                                    "ORDER BY event_time DESC, event_id DESC LIMIT ?",
                                    (-1 if limit is None else limit,)).fetchall()
            return [self._alert(r) for r in rows]

    def by_command(self, command_id: str) -> StoredAlert | None:
        """The alert whose current review command this is (None: no alert of this console)."""
        with self._read(f"looking up review command {command_id}"):
            row = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE review_command_id = ?",
                                   (command_id,)).fetchone()
            return None if row is None else self._alert(row)

    def names_entry(self, entry_id: str) -> bool:
        """Whether any alert here names this watch-list entry."""
        with self._read(f"looking up entry {entry_id}"):
            row = self._db.execute("SELECT 1 FROM alerts WHERE entry_id = ? LIMIT 1", (entry_id,)).fetchone()
            return row is not None

    def counts(self) -> dict[str, dict[str, int]]:
        """deployment -> alerts, confirmed, dismissed, unreviewed, from the console's own decisions."""
        out: dict[str, dict[str, int]] = {}
        with self._read("counting alerts"):
            for dep, outcome, n in self._db.execute(
                    "SELECT deployment_id, outcome, COUNT(*) FROM alerts GROUP BY deployment_id, outcome"):
                row = out.setdefault(dep, {"alerts": 0, "confirmed": 0, "dismissed": 0, "unreviewed": 0})
                row["alerts"] += n
                row["unreviewed" if outcome is None else outcome] += n
        return dict(sorted(out.items()))

    def _alert(self, row: tuple[Any, ...]) -> StoredAlert:
        (event_id, device_id, camera_id, deployment_id, entry_id, track_id, score, threshold, margin, frames,
         event_time, received, until, signature, has_face, has_context, note, gone, required, outcome, cid,
         answer, terms_note) = row
        decisions = tuple(StoredDecision(str(r), str(o), str(n), _ts(float(a))) for r, o, n, a in self._db.execute(
            "SELECT reviewer, outcome, note, at FROM decisions WHERE event_id = ? ORDER BY at, rowid", (event_id,)))
        return StoredAlert(
            str(event_id), str(device_id), str(camera_id), str(deployment_id), str(entry_id), str(track_id),
            float(score), float(threshold), None if margin is None else float(margin),
            int(frames), _ts(float(event_time)), _ts(float(received)),
            _ts(float(until)), str(signature), bool(has_face), bool(has_context),
            None if note is None else str(note), None if gone is None else str(gone),
            int(required), None if outcome is None else str(outcome),
            None if cid is None else str(cid), None if answer is None else str(answer), decisions, str(terms_note))

    # -- decisions --
    def add_decision(self, event_id: str, reviewer: str, outcome: str, note: str, at: datetime) -> None:
        """One account's decision on one alert (the primary key refuses a second one by the same account)."""
        with self._write(f"recording {reviewer}'s decision on {event_id}"):
            self._db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?)",
                             (event_id, reviewer, outcome, note, at.timestamp()))

    def set_outcome(self, event_id: str, outcome: str, command_id: str | None, node_answer: str | None = None,
                    envelope: bytes | None = None, expires: datetime | None = None) -> None:
        """The outcome stands; `command_id` and `envelope` are the signed review command that tells the node,
        kept until its final answer (None: not signed, and `node_answer` says why)."""
        with self._write(f"recording the outcome of {event_id}"):
            self._db.execute("UPDATE alerts SET outcome = ?, review_command_id = ?, node_answer = ?, "
                             "review_envelope = ?, review_expires = ?, answer_final = 0 WHERE event_id = ?",
                             (outcome, command_id, node_answer, envelope,
                              None if expires is None else expires.timestamp(), event_id))

    def set_command(self, event_id: str, command_id: str | None, envelope: bytes | None, expires: datetime | None,
                    node_answer: str | None) -> None:
        """A standing outcome's review command signed anew (the old one expired, or none was signed)."""
        with self._write(f"recording the review command of {event_id}"):
            self._db.execute("UPDATE alerts SET review_command_id = ?, review_envelope = ?, review_expires = ?, "
                             "node_answer = ? WHERE event_id = ? AND outcome IS NOT NULL AND answer_final = 0",
                             (command_id, envelope, None if expires is None else expires.timestamp(), node_answer,
                              event_id))

    def set_node_answer(self, command_id: str, answer: str, final: bool = True, weak: bool = False) -> str | None:
        """What the node said to a review command. `final` False (no answer yet, not sent): only where no final
        answer is recorded. `weak` (the node had the command already, a resend's answer): final, but never in
        place of a final answer. Returns the alert's event id when this changed what is recorded (None: the
        same answer again, or not a command of ours)."""
        with self._write(f"recording the answer to command {command_id}"):
            row = self._db.execute("SELECT event_id, node_answer, answer_final FROM alerts "
                                   "WHERE review_command_id = ?", (command_id,)).fetchone()
            if row is None or row[1] == answer or (row[2] and (weak or not final)):
                return None
            self._db.execute("UPDATE alerts SET node_answer = ?, answer_final = ? WHERE event_id = ?",
                             (answer, int(final), row[0]))
            return str(row[0])

    def reopen(self, event_id: str, command_id: str, reviewers_required: int, node_answer: str) -> bool:
        """The node refused the outcome's command for naming too few reviewers: the alert is open again, its
        decisions kept, and now needs `reviewers_required` (never fewer than before). False: that command is
        no longer the alert's (answered twice, or re-opened already)."""
        with self._write(f"re-opening alert {event_id}"):
            cur = self._db.execute(
                "UPDATE alerts SET outcome = NULL, review_command_id = NULL, review_envelope = NULL, "
                "review_expires = NULL, answer_final = 0, node_answer = ?, "
                "reviewers_required = MAX(reviewers_required, ?) WHERE event_id = ? AND review_command_id = ?",
                (node_answer, reviewers_required, event_id, command_id))
            return cur.rowcount > 0

    def pending_reviews(self) -> list[PendingReview]:
        """Outcomes that stand without the node's final answer, oldest decision first (to send again); the
        envelope only while it is valid by the store's clock."""
        at = self.clock().timestamp()
        with self._read("listing unanswered review commands"):
            rows = self._db.execute(
                "SELECT event_id, device_id, outcome, review_command_id, review_envelope, review_expires FROM alerts "
                "WHERE outcome IS NOT NULL AND answer_final = 0 ORDER BY event_time, event_id").fetchall()
        out = []
        for e, d, o, c, env, x in rows:
            valid = env is not None and x is not None and float(x) > at
            out.append(PendingReview(str(e), str(d), str(o), None if c is None else str(c),
                                     bytes(env) if valid else None, _ts(float(x)) if valid else None))
        return out

    def undestroyed_dismissals(self) -> list[str]:
        """Dismissed alerts whose crops are still here (their destruction failed: housekeeping tries again)."""
        with self._read("listing dismissed alerts with evidence"):
            rows = self._db.execute("SELECT event_id FROM alerts WHERE outcome = ? AND evidence_gone IS NULL "
                                    "AND (has_face OR has_context)", (DISMISSED,)).fetchall()
        return [str(r[0]) for r in rows]

    # -- evidence --
    def evidence(self, event_id: str) -> Evidence:
        """The alert's crops, decrypted (EvidenceGoneError when destroyed or never stored)."""
        try:
            return self.vault.read(event_id)
        except VaultEvidenceGoneError as exc:
            raise EvidenceGoneError(f"event {event_id}: no evidence ({exc})") from None
        except VaultError as exc:
            raise StoreError(str(exc)) from None

    def destroy(self, event_id: str, reason: str = DISMISSED) -> Destroyed:
        """Delete one alert's crops at once (a dismissal); says whether there were any."""
        with self._lock:
            try:
                deleted = self.vault.acknowledge(event_id)
            except VaultError as exc:
                raise StoreError(str(exc)) from None
            with self._write(f"marking the evidence of {event_id} destroyed"):
                self._db.execute("UPDATE alerts SET evidence_gone = ? WHERE event_id = ? AND evidence_gone IS NULL",
                                 (reason, event_id))
        return Destroyed(reason, (event_id,) if deleted else ())

    def purge_expired(self) -> Destroyed:
        """Destroy the day keys whose retention has run out (the clock's now) and the crops they sealed."""
        with self._lock:
            before = set(self.vault.event_ids())
            try:
                report = self.vault.purge(reason=RETENTION)
            except VaultError as exc:
                raise StoreError(str(exc)) from None
            gone = tuple(sorted(before - set(self.vault.event_ids())))
            if gone:
                with self._write("marking purged evidence destroyed"):
                    self._db.executemany("UPDATE alerts SET evidence_gone = ? WHERE event_id = ? "
                                         "AND evidence_gone IS NULL", [(RETENTION, e) for e in gone])
        return Destroyed(RETENTION, gone, report.keys_destroyed)


def _image(crop: Crop | None, part: str) -> tuple[bytes | None, str | None]:
    """(the bytes to keep, or None; why not, in words). Kept only when the opened bytes are a JPEG or a PNG by
    their magic and the event declared that type: the console serves nothing else to a browser."""
    if crop is None:
        return None, f"the device sent no {part} crop"
    if crop.data is None:
        return None, f"{part} crop not opened: {crop.reason or 'the console has no operator key'}"
    found = media_type(crop.data)
    if found not in EVIDENCE_MEDIA_TYPES or found != crop.media_type:
        return None, (f"{part} crop refused: declared {crop.media_type[:64]!r}, its bytes are {found}; only "
                      f"{' or '.join(EVIDENCE_MEDIA_TYPES)} is kept")
    return crop.data, None
