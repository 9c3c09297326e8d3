"""The tracker's K-of-N rule over a passer-by's frames: replayed per entry as a score, and run for real.

`edge.tracking.Tracker` alerts for an entry once K of a track's last N frame decisions name it. For one
(passer-by, entry) pair that happens at threshold t exactly when, in some window of N consecutive frames,
the K-th highest score against that entry is >= t. That K-th highest score, maximised over the windows, is
the pair's *track score*: track scores form a score set like per-frame pairs, and the same tail model and
list-size arithmetic apply to them. The replay leaves out the margin over the runner-up and the competition
between entries (both can only remove alerts), so it is an upper bound of the real rule; `tracker_alerts`
runs the real tracker and matcher on the lists the data can fill, to check the two against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.config import TrackingConfig
from edge.tracking import FaceObservation, Tracker
from edge.watchlist.gallery import Matcher
from provisioning.accuracy.observe import Sighting

FPS = 15.0  # a replay's frame rate (edge-node replays at 15 fps)


@dataclass(frozen=True)
class Passage:
    """One person passing the camera: their sighting in each frame (None: not in view or not detected)."""

    identity: str
    origin: str  # the photo or clip it comes from
    span: tuple[int, int] | None  # the clip's frames [first, last) it covers; None: a held photo
    frames: tuple[Sighting | None, ...]

    def holds(self, s: Sighting) -> bool:
        """Whether sighting `s` (an enrolment) comes from this passage's photo, or this stretch of its clip."""
        return s.source == self.origin and (self.span is None or self.span[0] <= s.frame < self.span[1])

    def usable(self) -> list[Sighting | None]:
        """What the tracker is given: only faces that passed the gate."""
        return [s if s is not None and s.passed and s.embedding is not None else None for s in self.frames]

    @property
    def seen(self) -> int:
        return sum(1 for s in self.usable() if s is not None)


def kofn_score(scores: np.ndarray, k: int, n: int) -> float:
    """max over windows of n consecutive frames of the k-th highest score (-inf for a frame without the face):
    the highest threshold at which the K-of-N rule fires for this entry."""
    s = np.asarray(scores, np.float64)
    if len(s) < k or k < 1 or n < k:
        return -np.inf
    padded = np.concatenate([np.full(n - 1, -np.inf), s])
    windows = np.lib.stride_tricks.sliding_window_view(padded, n)
    kth = np.sort(windows, axis=1)[:, n - k]
    return float(kth.max())


def passage_scores(passage: Passage, entries: np.ndarray) -> np.ndarray:
    """frames x entries cosine scores; -inf where the tracker gets no face."""
    out = np.full((len(passage.frames), entries.shape[0]), -np.inf)
    for i, s in enumerate(passage.usable()):
        if s is not None and s.embedding is not None:
            out[i] = entries @ s.embedding
    return out


def track_scores(passage: Passage, entries: np.ndarray, config: TrackingConfig) -> np.ndarray:
    """The K-of-N track score of the passage against each entry (row of `entries`)."""
    per_frame = passage_scores(passage, entries)
    return np.array([kofn_score(per_frame[:, j], config.agree_k, config.window_n) for j in range(entries.shape[0])])


def tracker_alerts(passage: Passage, matcher: Matcher, config: TrackingConfig) -> list[str]:
    """The entries the node's own tracker alerts for on this passage, matched by the node's own matcher."""
    usable = passage.usable()
    boxes = [s.box for s in usable if s is not None and s.box is not None]
    if not boxes:
        return []
    extent = np.max(np.stack(boxes), axis=0)
    canvas = np.zeros((int(extent[3]) + 2, int(extent[2]) + 2, 3), np.uint8)  # evidence crops come from it
    tracker = Tracker(config, matcher.gallery.dim)
    out: list[str] = []
    try:
        for i, s in enumerate(usable):
            faces: list[FaceObservation] = []
            if s is not None and s.embedding is not None and s.box is not None:
                m = matcher.match(s.embedding[None, :])[0]
                faces.append(FaceObservation(s.box, s.embedding, m.entry_id, m.score if m.matched else 0.0))
            out += [a.entry_id for a in tracker.update(i / FPS, canvas, faces, [f.box for f in faces])]
    finally:
        tracker.reset()
        matcher.release()
    return out


def segments(identity: str, source: str, frames: Sequence[Sighting | None], length: int) -> list[Passage]:
    """A long clip cut into passages of `length` frames (a person in view for length / FPS seconds)."""
    return [Passage(identity, source, (a, a + length), tuple(frames[a:a + length]))
            for a in range(0, len(frames) - length + 1, length)]
