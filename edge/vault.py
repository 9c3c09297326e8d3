"""The evidence vault: each alert's face crop and context crop, kept encrypted on the node until the
operator's review comes back and at most the deployment's retention (GOVERNANCE G2).

One SQLite file (WAL, synchronous=FULL, secure_delete on) in STATE/vault/. Evidence is encrypted with a
key per deployment and UTC day; each day key is stored wrapped (AES-GCM) by the device storage key
("vault"). A day key is destroyed once its day is `retention_days` old, so evidence from day D is gone by
midnight of D + retention. Purge destroys the keys first (committed and checkpointed, the freed bytes
overwritten), then deletes the rows they encrypted, then VACUUMs: a purge cut short by power loss leaves
rows whose key is already gone, which no one can read and the next purge deletes.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.audit import AuditLog
from edge.sqlitedb import immediate, open_durable
from edge.trust.times import format_time

VAULT_FILE = Path("vault") / "vault.db"
DEFAULT_RETENTION_DAYS = 30  # a deployment that says nothing else (GOVERNANCE G2; UK practice is 31)
STORAGE_PURPOSE = "vault"  # the device storage key that wraps the day keys
_SCHEMA = """
CREATE TABLE IF NOT EXISTS day_keys (
    key_id TEXT PRIMARY KEY,          -- '<deployment id>|<YYYY-MM-DD>'
    deployment_id TEXT NOT NULL,
    day TEXT NOT NULL,
    destroy_at REAL NOT NULL,         -- unix seconds: midnight UTC of day + retention
    nonce BLOB NOT NULL,
    wrapped BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    event_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    stored REAL NOT NULL,
    media_type TEXT NOT NULL,
    face_nonce BLOB,
    face BLOB,
    context_nonce BLOB,
    context BLOB
);
"""


class VaultError(Exception):
    """The vault database cannot be opened or written (names the file)."""


class EvidenceGoneError(VaultError):
    """No evidence for that event: never stored, acknowledged by review, or purged with its day key."""


class VaultCorruptError(VaultError):
    """A key or row does not decrypt: altered, or not this device's vault (names the key or event)."""


@dataclass(frozen=True)
class Evidence:
    event_id: str
    deployment_id: str
    stored: datetime
    media_type: str
    face: bytes | None  # the best face crop (JPEG)
    context: bytes | None  # a small, wider crop around it (JPEG)


@dataclass(frozen=True)
class PurgeReport:
    """What one purge destroyed: the day keys ('<deployment>|<day>') and how many rows went with them."""

    reason: str
    keys_destroyed: tuple[str, ...]
    rows_deleted: int

    @property
    def empty(self) -> bool:
        return not self.keys_destroyed and not self.rows_deleted


@dataclass(frozen=True)
class VaultStats:
    keys: int
    rows: int
    oldest_day: str | None


def _day_start(t: datetime) -> datetime:
    u = t.astimezone(UTC)
    return datetime(u.year, u.month, u.day, tzinfo=UTC)


class EvidenceVault:
    """One node's vault; safe to share between threads. Another process (the retention timer's
    `edge-node purge`) may open the same file: SQLite's locking serialises the writers."""

    def __init__(self, path: Path, storage_key: bytes, clock: Callable[[], datetime]):
        self.path = path
        self.clock = clock
        self._wrap = AESGCM(storage_key)
        self._lock = threading.Lock()
        try:
            self._db = open_durable(path, timeout=30)
            self._db.execute("PRAGMA secure_delete=ON")  # deleted keys and rows are overwritten, not just freed
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise VaultError(f"{path}: cannot open the evidence vault ({exc})") from None

    @classmethod
    def in_state_dir(cls, state_dir: Path, storage_key: bytes, clock: Callable[[], datetime]) -> EvidenceVault:
        return cls(state_dir / VAULT_FILE, storage_key, clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self, what: str) -> AbstractContextManager[None]:
        return immediate(self._db, lambda exc: VaultError(f"{self.path}: {what} failed ({exc})"))

    @staticmethod
    def _aad(kind: str, *parts: str) -> bytes:
        return ("edge-vault/v1|" + kind + "|" + "|".join(parts)).encode()

    def _day_key(self, deployment_id: str, retention_days: int, now: datetime) -> tuple[str, bytes]:
        """Today's key for this deployment, made (and stored wrapped) on first use. Inside a transaction."""
        start = _day_start(now)
        key_id = f"{deployment_id}|{start.date().isoformat()}"
        row = self._db.execute("SELECT nonce, wrapped FROM day_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is not None:
            return key_id, self._unwrap(key_id, row[0], row[1])
        key = AESGCM.generate_key(256)
        nonce = secrets.token_bytes(12)
        destroy_at = (start + timedelta(days=retention_days)).timestamp()
        self._db.execute("INSERT INTO day_keys VALUES (?, ?, ?, ?, ?, ?)",
                         (key_id, deployment_id, start.date().isoformat(), destroy_at, nonce,
                          self._wrap.encrypt(nonce, key, self._aad("key", key_id))))
        return key_id, key

    def _unwrap(self, key_id: str, nonce: bytes, wrapped: bytes) -> bytes:
        try:
            return self._wrap.decrypt(nonce, wrapped, self._aad("key", key_id))
        except InvalidTag:
            raise VaultCorruptError(f"{self.path}: day key {key_id} does not unwrap (altered, or another "
                                    "device's vault)") from None

    def store(self, event_id: str, deployment_id: str, retention_days: int, face: bytes | None,
              context: bytes | None, media_type: str = "image/jpeg") -> None:
        """Keep one alert's crops; durable when this returns."""
        now = self.clock()
        with self._lock, self._transaction(f"storing evidence of event {event_id}"):
            key_id, key = self._day_key(deployment_id, retention_days, now)
            aead = AESGCM(key)
            sealed: list[bytes | None] = []
            for part, data in (("face", face), ("context", context)):
                if data is None:
                    sealed += [None, None]
                    continue
                nonce = secrets.token_bytes(12)
                sealed += [nonce, aead.encrypt(nonce, data, self._aad(part, event_id, key_id))]
            self._db.execute("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (event_id, key_id, deployment_id, now.timestamp(), media_type, *sealed))

    def read(self, event_id: str) -> Evidence:
        with self._lock:
            row = self._db.execute(
                "SELECT e.key_id, e.deployment_id, e.stored, e.media_type, e.face_nonce, e.face, e.context_nonce, "
                "e.context, k.nonce, k.wrapped FROM evidence e LEFT JOIN day_keys k ON k.key_id = e.key_id "
                "WHERE e.event_id = ?", (event_id,)).fetchone()
        if row is None:
            raise EvidenceGoneError(f"{self.path}: no evidence for event {event_id} (acknowledged, purged, or "
                                    "never stored)")
        key_id, deployment_id, stored, media_type, fn, fc, cn, cc, kn, kw = row
        if kw is None:
            raise EvidenceGoneError(f"{self.path}: event {event_id}: its day key {key_id} was destroyed")
        aead = AESGCM(self._unwrap(key_id, kn, kw))

        def part(kind: str, nonce: bytes | None, ct: bytes | None) -> bytes | None:
            if ct is None or nonce is None:
                return None
            try:
                return aead.decrypt(nonce, ct, self._aad(kind, event_id, key_id))
            except InvalidTag:
                raise VaultCorruptError(f"{self.path}: event {event_id}: {kind} crop does not decrypt "
                                        "(altered or moved)") from None

        return Evidence(event_id, deployment_id, datetime.fromtimestamp(stored, UTC), media_type,
                        part("face", fn, fc), part("context", cn, cc))

    def event_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT event_id FROM evidence ORDER BY stored, event_id")]

    def stats(self) -> VaultStats:
        with self._lock:
            (keys,) = self._db.execute("SELECT COUNT(*) FROM day_keys").fetchone()
            (rows,) = self._db.execute("SELECT COUNT(*) FROM evidence").fetchone()
            (oldest,) = self._db.execute("SELECT MIN(day) FROM day_keys").fetchone()
        return VaultStats(int(keys), int(rows), oldest)

    def acknowledge(self, event_id: str) -> bool:
        """The review came back: the node's copy is no longer needed. Returns whether there was one."""
        with self._lock, self._transaction(f"deleting evidence of event {event_id}"):
            cur = self._db.execute("DELETE FROM evidence WHERE event_id = ?", (event_id,))
            deleted = cur.rowcount > 0
        if deleted:
            self._reclaim()
        return deleted

    def purge(self, deployment_id: str | None = None, before: datetime | None = None,
              reason: str = "retention") -> PurgeReport:
        """Destroy day keys, then their rows, then reclaim the space.

        With no arguments: the keys whose retention has run out (`clock()` past midnight of day +
        retention). With `deployment_id`: every key of that deployment, or with `before` those of days
        before that time (a purge ordered by the fleet). Rows whose key is already gone (an earlier purge
        cut short) are deleted whatever the arguments."""
        now = self.clock().timestamp()
        with self._lock:
            params: tuple[float | str, ...]
            if deployment_id is None:
                query, params = "SELECT key_id FROM day_keys WHERE destroy_at <= ?", (now,)
            elif before is None:
                query, params = "SELECT key_id FROM day_keys WHERE deployment_id = ?", (deployment_id,)
            else:
                query, params = ("SELECT key_id FROM day_keys WHERE deployment_id = ? AND day < ?",
                                 (deployment_id, before.astimezone(UTC).date().isoformat()))
            keys = tuple(sorted(r[0] for r in self._db.execute(query, params)))
            if keys:
                with self._transaction("destroying day keys"):
                    self._db.executemany("DELETE FROM day_keys WHERE key_id = ?", [(k,) for k in keys])
                self._checkpoint()  # the key's bytes leave the WAL too before any row is touched
            with self._transaction("deleting purged evidence"):
                cur = self._db.execute("DELETE FROM evidence WHERE key_id NOT IN (SELECT key_id FROM day_keys)")
                rows = max(cur.rowcount, 0)
        report = PurgeReport(reason, keys, rows)
        if not report.empty:
            self._reclaim()
        return report

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise VaultError(f"{self.path}: checkpoint failed ({exc})") from None

    def _reclaim(self) -> None:
        """VACUUM rewrites the file without the freed pages; the WAL is then emptied."""
        with self._lock:
            try:
                self._db.execute("VACUUM")
            except sqlite3.Error as exc:
                raise VaultError(f"{self.path}: VACUUM failed ({exc})") from None
            self._checkpoint()

    def integrity(self) -> str:
        """SQLite's own check ('ok' when the file is sound)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


MAX_KEYS_RECORDED = 20  # an audit record stays small; the total is always there


def purge_and_record(vault: EvidenceVault, audit: AuditLog, reason: str = "retention",
                     deployment_id: str | None = None, before: datetime | None = None,
                     command_id: str | None = None) -> PurgeReport:
    """Run one purge and put it on the record. A routine purge that found nothing writes no line; one
    ordered by the fleet always does."""
    report = vault.purge(deployment_id, before, reason)
    if not report.empty or command_id is not None:
        audit.append("purge", {"reason": reason, "deployment_id": deployment_id,
                               "before": None if before is None else format_time(before), "command_id": command_id,
                               "keys_destroyed": list(report.keys_destroyed[:MAX_KEYS_RECORDED]),
                               "keys_total": len(report.keys_destroyed), "rows_deleted": report.rows_deleted})
    return report
