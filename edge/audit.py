"""The audit log: append-only, hash-chained JSON lines, with signed checkpoints (GOVERNANCE G8, G9).

Each line is canonical JSON {seq, ts, kind, data, prev} where `prev` is the sha256 of the previous line's
bytes (64 zeros for the first). Changing, removing or reordering a line breaks the chain at that point;
cutting lines off the end is caught against the last signed checkpoint {seq, head}, which the node
publishes on its audit topic so a copy lives off the device.

What goes in: node start/stop, deployment start/end, shard accepted/rejected (with the reason), the
threshold in force, each alert (event id, entry id, score), review outcomes, purges, configuration
changes, provisioning. What never goes in: images, crops, embeddings, or anything about a face that did
not match. `data` is checked for that on the way in.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.events.messages import AUDIT_CHECKPOINT, MessageError, audit_checkpoint_body, open_message, sign_message
from edge.fsutil import write_atomic
from edge.trust.canonical import CanonicalFormError, canonical, parse_canonical
from edge.trust.times import TimeFormatError, format_time, parse_time

GENESIS = "0" * 64
AUDIT_FILE = Path("audit") / "audit.jsonl"  # in the node's state dir
# The log outlives the images (G9; the EU AI Act asks for at least six months): its own retention, never
# shorter than this floor, whatever the evidence retention is.
AUDIT_RETENTION_DAYS = 400
MIN_AUDIT_RETENTION_DAYS = 183
KINDS = frozenset({
    "node-start", "node-stop", "deployment-start", "deployment-end", "shard-accepted", "shard-rejected",
    "threshold", "alert", "review", "purge", "config", "provisioning", "command", "recovered", "effectiveness",
    "pruned"})  # the node's log
# What AuditLog writes itself (a torn tail cut off, old records pruned): allowed in every log, whatever its kinds.
HOUSEKEEPING_KINDS = frozenset({"recovered", "pruned"})
MAX_DATA_CHARS = 2000  # a line is a record, not a container: nothing bulky (an image) fits
FORBIDDEN_KEYS = frozenset({"embedding", "crop", "image", "frame", "evidence", "pixels", "face"})


class AuditError(Exception):
    """The audit log cannot be written or read (names the file)."""


class AuditRecordError(AuditError):
    """A record was refused: unknown kind, too large, or carrying something that must never be logged."""


class AuditTamperError(AuditError):
    """Verification found the log altered: the message names the line and what is wrong."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: datetime
    kind: str
    data: Mapping[str, Any]
    prev: str
    digest: str  # sha256 of this line's bytes, the next line's `prev`


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _check_data(kind: str, data: Mapping[str, Any], kinds: frozenset[str] = KINDS) -> None:
    if kind not in kinds and kind not in HOUSEKEEPING_KINDS:
        raise AuditRecordError(f"audit kind {kind!r} is not one of {', '.join(sorted(kinds | HOUSEKEEPING_KINDS))}")

    def walk(v: object, path: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if str(k).lower() in FORBIDDEN_KEYS:
                    raise AuditRecordError(f"audit {kind}: field {path}{k!r} may not be logged (biometric data)")
                walk(x, f"{path}{k}.")
        elif isinstance(v, list):
            for x in v:
                walk(x, path)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            raise AuditRecordError(f"audit {kind}: binary data at {path!r} may not be logged")

    walk(dict(data), "")
    if len(canonical(dict(data))) > MAX_DATA_CHARS:
        raise AuditRecordError(f"audit {kind}: record over {MAX_DATA_CHARS} characters")


def parse_line(raw: bytes, where: str) -> AuditEntry:
    try:
        doc = parse_canonical(raw)
    except CanonicalFormError as exc:
        raise AuditTamperError(f"{where}: not a canonical record ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"seq", "ts", "kind", "data", "prev"}:
        raise AuditTamperError(f"{where}: fields must be exactly seq, ts, kind, data, prev")
    try:
        ts = parse_time(doc["ts"])
    except TimeFormatError as exc:
        raise AuditTamperError(f"{where}: ts: {exc}") from None
    if not isinstance(doc["seq"], int) or not isinstance(doc["prev"], str) or not isinstance(doc["data"], dict):
        raise AuditTamperError(f"{where}: bad field types")
    return AuditEntry(doc["seq"], ts, str(doc["kind"]), doc["data"], doc["prev"], _digest(raw))


class AuditLog:
    """One node's log file. Appends are durable (fsync) before `append` returns. Threads share one instance;
    processes (the node and the retention timer's `edge-node purge`) take turns with an exclusive lock and
    pick up each other's records before appending, so the chain never forks. `kinds`: the record kinds this
    log takes (the node's by default; the officer's console keeps a log of its own kinds)."""

    def __init__(self, path: Path, clock: Callable[[], datetime], kinds: frozenset[str] = KINDS):
        self.path = path
        self.clock = clock
        self.kinds = kinds
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._seq, self._head, self._size, self._ino = 0, GENESIS, 0, -1
        torn = self._recover()
        if torn:
            self.append("recovered", {"torn_bytes": torn, "reason": "an incomplete last record (power loss or "
                                      "kill mid-write) was cut off; every complete record is intact"})

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Callable[[], datetime]) -> AuditLog:
        return cls(state_dir / AUDIT_FILE, clock)

    def _recover(self) -> int:
        """Find the chain's head; cut off an incomplete final record (no newline) left by a crash. Under the
        file lock, so a record another process is writing right now is not mistaken for a torn one."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            raw = os.pread(fd, size, 0)
            end = raw.rfind(b"\n") + 1
            for entry in verify_chain(raw[:end], str(self.path), self.kinds):
                self._seq, self._head = entry.seq, entry.digest
            self._size, self._ino = end, os.fstat(fd).st_ino
            if end < size:
                os.ftruncate(fd, end)
                os.fsync(fd)
            return size - end
        finally:
            os.close(fd)

    @property
    def head(self) -> tuple[int, str]:
        """(seq, sha256) of the last record."""
        with self._lock:
            return self._seq, self._head

    def append(self, kind: str, data: Mapping[str, Any]) -> AuditEntry:
        _check_data(kind, data, self.kinds)
        with self._lock:
            try:
                fd = self._open_locked()
                try:
                    st = os.fstat(fd)
                    if st.st_ino != self._ino:  # replaced by a prune (this process's or another's)
                        self._resync(fd)
                    elif st.st_size != self._size:  # another process appended since: continue its chain
                        self._follow(fd, st.st_size)
                    seq = self._seq + 1
                    ts = self.clock()
                    line = canonical({"seq": seq, "ts": format_time(ts), "kind": kind, "data": dict(data),
                                      "prev": self._head})
                    os.write(fd, line + b"\n")
                    os.fsync(fd)
                    self._size += len(line) + 1
                finally:
                    os.close(fd)  # releases the lock
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append ({exc.strerror})") from None
            prev, self._seq, self._head = self._head, seq, _digest(line)
            return AuditEntry(seq, ts, kind, dict(data), prev, self._head)

    def _open_locked(self) -> int:
        """The log file, opened for appending and exclusively locked; retried if a prune replaced the file
        between our open and our lock (the lock would be on a file no longer in place)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                in_place = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                in_place = False
            if in_place:
                return fd
            os.close(fd)

    def _resync(self, fd: int) -> None:
        """Head, size and inode from the whole file (after a prune replaced it)."""
        raw = os.pread(fd, os.fstat(fd).st_size, 0)
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            os.ftruncate(fd, end)
        self._seq, self._head = 0, GENESIS
        for entry in verify_chain(raw[:end], str(self.path), self.kinds):
            self._seq, self._head = entry.seq, entry.digest
        self._size, self._ino = end, os.fstat(fd).st_ino

    def _follow(self, fd: int, size: int) -> None:
        """Take the head from the file's last record (written by another process)."""
        if size < self._size:
            raise AuditTamperError(f"{self.path}: the log shrank from {self._size} to {size} bytes while open")
        if size == 0:
            self._seq, self._head, self._size = 0, GENESIS, 0
            return
        raw = os.pread(fd, size - self._size, self._size)
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # the other writer was killed mid-record: that record never was
            os.ftruncate(fd, self._size + end)
            raw, size = raw[:end], self._size + end
        for i, line in enumerate(raw.split(b"\n")[:-1]):
            entry = parse_line(line, f"{self.path}: record appended by another process ({i + 1})")
            if entry.seq != self._seq + 1 or entry.prev != self._head:
                raise AuditTamperError(f"{self.path}: record {entry.seq} appended by another process does not "
                                       "chain to this one")
            self._seq, self._head = entry.seq, entry.digest
        self._size = size

    def prune(self, before: datetime) -> int:
        """Drop the records older than `before` from the start of the log (its own retention, G9); returns
        how many went. First a `pruned` record is appended naming the last dropped record's seq and digest,
        so the shortened log still verifies: its first record chains to what that record vouches for. The
        file is then replaced atomically. A signed checkpoint published before still pins the records kept."""
        with self._lock:
            fd = self._open_locked()
            try:
                raw = os.pread(fd, os.fstat(fd).st_size, 0)
                old: list[AuditEntry] = []
                for e in verify_chain(raw, str(self.path), self.kinds):  # the leading run of old records
                    if e.ts >= before:
                        break
                    old.append(e)
                if not old:
                    return 0
                last = old[-1]
            finally:
                os.close(fd)
        self.append("pruned", {"through_seq": last.seq, "through_digest": last.digest, "before": format_time(before),
                               "records": len(old)})
        with self._lock:
            fd = self._open_locked()  # held until the new file is in place: no append goes to the old one
            try:
                raw = os.pread(fd, os.fstat(fd).st_size, 0)
                lines = raw.split(b"\n")[:-1]
                first = next(i for i, line in enumerate(lines) if parse_line(line, str(self.path)).seq == last.seq + 1)
                kept = b"".join(line + b"\n" for line in lines[first:])
                write_atomic(self.path, kept)
                self._ino = -1  # the next append resyncs from the new file
            finally:
                os.close(fd)
        return len(old)

    def entries(self) -> Iterator[AuditEntry]:
        """Every record, chain checked (for rebuilding counts at start)."""
        with self._lock:
            raw = self.path.read_bytes() if self.path.exists() else b""
        return verify_chain(raw, str(self.path), self.kinds)

    def checkpoint(self, device_id: str, key: Ed25519PrivateKey) -> bytes:
        """A signed statement of the log's length and head, for the audit topic (and a local copy)."""
        seq, head = self.head
        signed = sign_message(audit_checkpoint_body(device_id, seq, head, self.clock()), key)
        with open(self.path.with_name("checkpoints.jsonl"), "ab") as f:
            f.write(signed + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return signed


def verify_chain(raw: bytes, name: str, kinds: frozenset[str] = KINDS) -> Iterator[AuditEntry]:
    """Every record in order, each checked against the one before: seq +1, prev = sha256(previous line).

    A log whose old records were pruned starts later: its first record must chain to exactly what a
    `pruned` record further on names as the last record dropped; anything else is a removed line."""
    lines = raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n")
    if not raw:
        return
    prev, seq = GENESIS, 0
    first = parse_line(lines[0], f"{name}: line 1")
    if first.seq != 1:
        vouched = {(int(e.data["through_seq"]), str(e.data["through_digest"]))
                   for e in (parse_line(x, name) for x in lines if b'"kind":"pruned"' in x) if e.kind == "pruned"}
        if (first.seq - 1, first.prev) not in vouched:
            raise AuditTamperError(f"{name}: line 1: the log starts at seq {first.seq} but no pruned record "
                                   "vouches for the records before it (records were removed)")
        prev, seq = first.prev, first.seq - 1
    for i, line in enumerate(lines, start=1):
        where = f"{name}: line {i}"
        entry = parse_line(line, where)
        if entry.seq != seq + 1:
            raise AuditTamperError(f"{where}: seq {entry.seq} follows {seq} (a record was removed, inserted or "
                                   "moved)")
        if entry.prev != prev:
            raise AuditTamperError(f"{where}: does not chain to the record before it (that record was changed, "
                                   "or records were reordered)")
        _check_data(entry.kind, entry.data, kinds)
        prev, seq = entry.digest, entry.seq
        yield entry


@dataclass(frozen=True)
class Verified:
    records: int
    head: str
    checkpoint_seq: int | None


def verify_log(raw: bytes, name: str, device_key: Ed25519PublicKey | None = None,
               checkpoints: Sequence[bytes] = (), kinds: frozenset[str] = KINDS) -> Verified:
    """The whole file: chain intact, and consistent with every signed checkpoint (no truncation: the log is
    at least as long as the latest checkpoint and holds the checkpointed head at that seq). `kinds`: those of
    the log's owner (the node's by default)."""
    if raw and not raw.endswith(b"\n"):
        raise AuditTamperError(f"{name}: the last record is incomplete")
    digests: dict[int, str] = {}
    last = Verified(0, GENESIS, None)
    for entry in verify_chain(raw, name, kinds):
        digests[entry.seq] = entry.digest
        last = Verified(entry.seq, entry.digest, None)
    best: int | None = None
    for i, cp in enumerate(checkpoints, start=1):
        if device_key is None:
            raise AuditError("checkpoints need the device's public key to be verified")
        try:
            body = open_message(cp, AUDIT_CHECKPOINT, device_key)
        except MessageError as exc:
            raise AuditTamperError(f"checkpoint {i}: {exc}") from None
        cseq, chead = int(body["seq"]), str(body["head"])
        if cseq > last.records:
            raise AuditTamperError(f"{name}: truncated: checkpoint {i} vouches for {cseq} records, the log has "
                                   f"{last.records}")
        if digests and cseq < min(digests):
            continue  # vouches for records since pruned (their last one is named by the pruned record)
        if cseq > 0 and digests.get(cseq) != chead:
            raise AuditTamperError(f"{name}: record {cseq} differs from what checkpoint {i} signed")
        best = max(best or 0, cseq)
    return Verified(last.records, last.head, best)
