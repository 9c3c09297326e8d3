"""The in-memory gallery and open-set matching: top-1 with a margin over the runner-up.

Open set means the default answer is "no match": a face matches only if its best score clears the
threshold *and* beats the best other entry by the margin. One row per watch-list entry (an entry's
several photos are averaged when the shard is built), so the runner-up is always another person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class GalleryError(Exception):
    """A gallery cannot be built from the given embeddings and ids."""


@dataclass(frozen=True)
class MatchPolicy:
    """When a best score counts as a match."""

    threshold: float
    min_margin: float = 0.0


@dataclass(frozen=True)
class Match:
    """The answer for one face. `entry_id` is None unless the policy accepted the best entry."""

    entry_id: str | None
    best_entry: str | None  # best-scoring entry even when rejected (never leaves the process)
    score: float
    runner_up: float | None  # the second best entry's score; None when the gallery holds one entry

    @property
    def margin(self) -> float | None:
        """The score's margin over the runner-up (None without one: a one-entry list has no runner-up)."""
        return None if self.runner_up is None else self.score - self.runner_up

    @property
    def matched(self) -> bool:
        return self.entry_id is not None


class Gallery:
    """N unit-length embeddings (float32, N x d, C-contiguous) and their opaque entry ids."""

    def __init__(self, embeddings: np.ndarray, entry_ids: Sequence[str], adopt: bool = False):
        """Copies the embeddings, unless `adopt`: then a writable float32 C-contiguous array becomes the
        gallery's own (normalised in place, wiped by wipe()); the caller must not keep other references."""
        if embeddings.ndim != 2:
            raise GalleryError(f"embeddings must be N x d, got shape {embeddings.shape}")
        if embeddings.shape[0] != len(entry_ids):
            raise GalleryError(f"{embeddings.shape[0]} embeddings but {len(entry_ids)} entry ids")
        if len(set(entry_ids)) != len(entry_ids):
            raise GalleryError("entry ids must be unique (one row per entry)")
        owned = (adopt and embeddings.dtype == np.float32 and embeddings.flags.c_contiguous
                 and embeddings.flags.writeable)
        self.matrix = embeddings if owned else np.array(embeddings, np.float32, order="C")
        norms = np.sqrt(np.einsum("ij,ij->i", self.matrix, self.matrix))
        if np.any(norms == 0) or not np.all(np.isfinite(norms)):
            raise GalleryError("every embedding must be finite and non-zero")
        self.matrix /= norms[:, None]
        self.entry_ids = tuple(entry_ids)

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def wipe(self) -> None:
        """Overwrite the embeddings (when a shard is replaced or expires)."""
        self.matrix.fill(0)
        self.entry_ids = ()


class Matcher:
    """Scores a frame's faces against one gallery in a single pass over its matrix.

    BLAS computes gallery x faces (N x k), which streams the gallery once whatever k is; for k > 1
    the scores are transposed into a second buffer so the top-2 search runs along contiguous rows.
    Buffers are reused across frames and grow only for a frame with more faces than any before.
    """

    def __init__(self, gallery: Gallery, policy: MatchPolicy, max_faces: int = 8):
        self.gallery = gallery
        self.policy = policy
        size = gallery.size * max(1, max_faces)
        self._by_entry = np.empty(size, np.float32)
        self._by_face = np.empty(size, np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Cosine scores (k x N) of k unit-length queries, in a reused buffer."""
        n, k = self.gallery.size, queries.shape[0]
        if n * k > self._by_entry.size:
            self._by_entry = np.empty(n * k, np.float32)
            self._by_face = np.empty(n * k, np.float32)
        by_entry = self._by_entry[: n * k].reshape(n, k)
        np.matmul(self.gallery.matrix, queries.T, out=by_entry)
        if k == 1:
            return by_entry.reshape(1, n)
        by_face = self._by_face[: n * k].reshape(k, n)
        by_face[...] = by_entry.T
        return by_face

    def match(self, queries: np.ndarray) -> list[Match]:
        """Top-1, runner-up and decision for each row of `queries` (k x d, unit length)."""
        if queries.shape[0] == 0 or self.gallery.size == 0:
            return [Match(None, None, -1.0, None) for _ in range(queries.shape[0])]
        s = self.scores(queries)
        rows = np.arange(s.shape[0])
        best = s.argmax(axis=1)
        best_score = s[rows, best].copy()
        if self.gallery.size > 1:
            s[rows, best] = -np.inf
            runner = s.max(axis=1)
        else:
            runner = np.full(s.shape[0], -1.0, np.float32)
        out = []
        for i in range(s.shape[0]):
            score, second = float(best_score[i]), float(runner[i])
            entry = self.gallery.entry_ids[int(best[i])]
            ok = score >= self.policy.threshold and score - second >= self.policy.min_margin
            out.append(Match(entry if ok else None, entry, score, second if self.gallery.size > 1 else None))
        return out

    def release(self) -> None:
        """Zero the score buffers: scores of non-matching faces must not linger."""
        self._by_entry.fill(0)
        self._by_face.fill(0)
