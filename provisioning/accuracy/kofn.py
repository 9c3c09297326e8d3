"""The tracker's two rules over a passer-by's frames: replayed per entry as a score, and run for real.

`edge.tracking.Tracker` alerts for an entry once K of a track's last N frame decisions name it. For one
(passer-by, entry) pair that happens at threshold t exactly when, in some window of N consecutive frames,
the K-th highest score against that entry is >= t. That K-th highest score, maximised over the windows, is
the pair's K-of-N score. Beside it the tracker matches the track's quality-weighted template once it holds K
gated frames, and alerts when the template scores >= t and some frame so far scored >= t on its own: at
frame i, min(template score, best single frame so far), maximised over i, is the pair's template score.
The larger of the two is the pair's *track score*: track scores form a score set like per-frame pairs, and
the same tail model and list-size arithmetic apply to them. The replay leaves out the margin over the
runner-up and the competition between entries (both can only remove alerts), so it is an upper bound of the
real rules; `tracker_alerts` runs the real tracker and matcher on the lists the data can fill, to check the
two against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.config import TrackingConfig
from edge.tracking import FaceObservation, Tracker, template_weight
from edge.vision.quality import QualityConfig
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


def weight(s: Sighting, gate: QualityConfig) -> float:
    """The sighting's weight in its track's template, as the node computes it (1 without a quality record)."""
    return 1.0 if s.quality is None else template_weight(s.quality, gate)


def template_scores(passage: Passage, entries: np.ndarray, min_frames: int,
                    gate: QualityConfig | None = None, guarded: bool = True) -> np.ndarray:
    """Per entry: max over the frames with at least `min_frames` gated frames fused so far of min(the running
    quality-weighted template's cosine, the best single frame so far): the highest threshold at which the
    template rule fires (-inf where it never can). `guarded` False leaves out the best-frame term: what the
    template alone scores (to show what the node's guard removes)."""
    g = gate or QualityConfig()
    out = np.full(entries.shape[0], -np.inf)
    total = np.zeros(entries.shape[1], np.float64)
    best = np.full(entries.shape[0], -np.inf)
    fused = 0
    for s in passage.usable():
        if s is None or s.embedding is None:
            continue
        e = s.embedding.astype(np.float64)
        total += weight(s, g) * e
        best = np.maximum(best, entries @ e)
        fused += 1
        norm = float(np.linalg.norm(total))
        if fused >= min_frames and norm > 0:
            fused_score = entries @ (total / norm)
            out = np.maximum(out, np.minimum(fused_score, best) if guarded else fused_score)
    return out


def track_scores(passage: Passage, entries: np.ndarray, config: TrackingConfig,
                 gate: QualityConfig | None = None) -> np.ndarray:
    """The track score of the passage against each entry (row of `entries`): the K-of-N score, or the template
    score when that is higher and the config has the template rule on."""
    per_frame = passage_scores(passage, entries)
    kofn = np.array([kofn_score(per_frame[:, j], config.agree_k, config.window_n) for j in range(entries.shape[0])])
    if not config.template:
        return kofn
    out: np.ndarray = np.maximum(kofn, template_scores(passage, entries, config.agree_k, gate))
    return out


def tracker_alerts(passage: Passage, matcher: Matcher, config: TrackingConfig,
                   gate: QualityConfig | None = None) -> list[str]:
    """The entries the node's own tracker alerts for on this passage, matched by the node's own matcher (which
    also matches the track's template, each face weighted by its quality as the pipeline does)."""
    g = gate or QualityConfig()
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
                faces.append(FaceObservation(s.box, s.embedding, m.entry_id, m.score if m.matched else 0.0,
                                             weight(s, g)))
            out += [a.entry_id for a in tracker.update(i / FPS, canvas, faces, [f.box for f in faces], matcher)]
    finally:
        tracker.reset()
        matcher.release()
    return out


def segments(identity: str, source: str, frames: Sequence[Sighting | None], length: int) -> list[Passage]:
    """A long clip cut into passages of `length` frames (a person in view for length / FPS seconds)."""
    return [Passage(identity, source, (a, a + length), tuple(frames[a:a + length]))
            for a in range(0, len(frames) - length + 1, length)]
