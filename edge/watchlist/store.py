"""Where a node keeps its trust root and its accepted shard, and the watch list in force in memory.

State dir layout: trust/root.json (the trusted fleet root), watchlist/current.shard (the accepted shard,
still encrypted), watchlist/state.json (version floor and a summary of what is in force). Decrypted
embeddings exist only in memory (ActiveWatchList) and are wiped when replaced or expired.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.fsutil import write_atomic
from edge.identity import load_identity
from edge.trust.root import TrustedRoot
from edge.trust.times import format_time
from edge.vision.manifest import ModelSpec
from edge.watchlist.loader import DEFAULT_MAX_SHARD_BYTES, AcceptedShard, ShardVerifier
from edge.watchlist.shard import ShardTooLargeError


class StoreError(Exception):
    """The state directory is missing something the node needs (names the file)."""


class ShardStore:
    """A node's persistent trust and shard state."""

    def __init__(self, state_dir: Path, max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.state_dir = state_dir
        self.max_bytes = max_bytes
        self.root_path = state_dir / "trust" / "root.json"
        self.shard_path = state_dir / "watchlist" / "current.shard"
        self.state_path = state_dir / "watchlist" / "state.json"

    # -- trust root --
    def trust_init(self, root_bytes: bytes) -> TrustedRoot:
        """Bootstrap trust from a root given out of band (provisioning); refuses to replace one."""
        if self.root_path.exists():
            raise StoreError(f"{self.root_path}: a root is trusted already; use `trust update`")
        trusted = TrustedRoot.bootstrap(root_bytes)
        write_atomic(self.root_path, root_bytes, 0o644)
        return trusted

    def trusted_root(self) -> TrustedRoot:
        try:
            data = self.root_path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.root_path}: no trusted root; run `edge-node trust init ROOT`") from None
        return TrustedRoot.bootstrap(data)

    def trust_update(self, root_bytes: bytes) -> TrustedRoot:
        trusted = self.trusted_root()
        trusted.update(root_bytes)
        write_atomic(self.root_path, root_bytes, 0o644)
        return trusted

    # -- shards --
    def state(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.state_path.read_text())
            return doc
        except FileNotFoundError:
            return {"version_floor": 0, "current": None}
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.state_path}: unreadable ({exc})") from None

    def verifier(self, model: ModelSpec) -> ShardVerifier:
        return ShardVerifier(self.trusted_root(), load_identity(self.state_dir), model,
                             int(self.state()["version_floor"]), self.max_bytes)

    def read_capped(self, path: Path) -> bytes:
        """Read a shard file, refusing one over the cap before reading it."""
        size = path.stat().st_size
        if size > self.max_bytes:
            raise ShardTooLargeError(f"{path}: {size} bytes exceeds the cap of {self.max_bytes}")
        return path.read_bytes()

    def load(self, path: Path, model: ModelSpec, now: datetime) -> AcceptedShard:
        """Verify a new shard file and, only if every check passes, make it the one in force."""
        return self.load_bytes(self.read_capped(path), model, now)

    def load_bytes(self, data: bytes, model: ModelSpec, now: datetime) -> AcceptedShard:
        """The same for a shard that arrived over the network (a signed shard-push command)."""
        if len(data) > self.max_bytes:
            raise ShardTooLargeError(f"{len(data)} bytes exceeds the cap of {self.max_bytes}")
        accepted = self.verifier(model).verify(data, now)
        write_atomic(self.shard_path, data, 0o600)
        m = accepted.manifest
        summary = {"shard_id": m.shard_id, "version": m.version, "issued": format_time(m.issued),
                   "expires": format_time(m.expires), "deployment": m.deployment.to_body(),
                   "model": {"id": m.model_id, "sha256": m.model_sha256}, "entries": m.entries,
                   "manifest_sha256": accepted.manifest_sha256, "accepted": format_time(now)}
        write_atomic(self.state_path, json.dumps({"version_floor": m.version, "current": summary},
                                                 indent=1).encode() + b"\n", 0o600)
        return accepted

    def reload_current(self, model: ModelSpec, now: datetime) -> AcceptedShard | None:
        """The stored shard, re-verified in full (at its own version), e.g. after a restart."""
        if not self.shard_path.exists():
            return None
        return self.verifier(model).verify(self.read_capped(self.shard_path), now, reload_current=True)


class ActiveWatchList:
    """The watch list in force in memory: swapped atomically, wiped when replaced or expired.

    The inference thread matches inside `in_use()`; a gallery is wiped only when nobody is using it, so a
    shard push or an expiry never pulls the matrix from under a match in progress (it waits one frame)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._use = threading.RLock()
        self._current: AcceptedShard | None = None

    def in_use(self) -> threading.RLock:
        """Hold while matching against the shard `current()` returned."""
        return self._use

    def _wipe(self, old: AcceptedShard) -> None:
        with self._use:
            old.gallery.wipe()

    def swap(self, new: AcceptedShard | None) -> None:
        with self._lock:
            old, self._current = self._current, new
        if old is not None and old is not new:
            self._wipe(old)

    def current(self, now: datetime) -> AcceptedShard | None:
        """The shard in force, or None; an expired shard is wiped here (fail closed)."""
        with self._lock:
            cur = self._current
            if cur is None or now < cur.manifest.expires:
                return cur
            self._current = None
        self._wipe(cur)
        return None
