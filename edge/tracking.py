"""Face tracks across frames, and the two rules that turn matches into alerts.

A track continues when a new face overlaps its last box (IoU) or, failing that, looks like it (embedding
cosine). Each track keeps a window of its last N frames' match decisions; an alert is raised once per
track and entry when K of them agree on that entry (GOVERNANCE G12: a single-frame match never alerts).
Alongside, each track fuses its gated faces into one quality-weighted template (weights from detection
score, sharpness and pose) that is matched as the track grows, with the same matcher, threshold and margin;
it alerts only once the track has at least K gated frames and at least one of them matched that entry on
its own (docs/tracking.md says why). The best-scoring crop of a matched face is kept for the alert's evidence.

Everything a track holds lives in preallocated arrays (embeddings, templates, crops) that are overwritten and
zeroed when the track ends: nothing of a face that never alerted outlives its track.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.config import TrackingConfig
from edge.vision.quality import Quality, QualityConfig
from edge.watchlist.gallery import Matcher

CROP_SIZE = 160  # evidence crop, square, RGB
CROP_MARGIN = 0.25  # context around the face box, as a fraction of its size
CONTEXT_SIZE = 192  # the context crop: a wider square, scaled down (the scene around the face, for the reviewer)
CONTEXT_SPAN = 4.0  # its side, in face-box sizes
KOFN = "k_of_n"  # alert rule: K of the track's last N frames matched the entry, each on its own
TEMPLATE = "template"  # alert rule: the track's fused template matched the entry
MIN_WEIGHT = 0.05  # the least a gated face counts in its track's template (each factor, and the product)


def template_weight(quality: Quality, gate: QualityConfig) -> float:
    """How much one gated face counts in its track's template, in [MIN_WEIGHT, 1]: the product of its detection
    score above the gate's minimum, its sharpness against the gate's minimum (s / (s + min)), and how frontal
    it is (1 - (angle / the gate's limit)^2, for yaw and pitch). Roll is left out: alignment undoes it."""
    det = (quality.score - gate.min_score) / max(1e-6, 1.0 - gate.min_score)
    sharp = quality.sharpness / max(1e-6, quality.sharpness + gate.min_sharpness)
    yaw = 1.0 - (quality.yaw / max(1e-6, gate.max_yaw)) ** 2
    pitch = 1.0 - (quality.pitch / max(1e-6, gate.max_pitch)) ** 2
    w = 1.0
    for factor in (det, sharp, yaw, pitch):
        w *= min(1.0, max(MIN_WEIGHT, factor))
    return max(MIN_WEIGHT, w)


@dataclass(frozen=True)
class FaceObservation:
    """One face of the current frame as the tracker needs it. `embedding` is a view; it is copied in."""

    box: np.ndarray  # x0, y0, x1, y1
    embedding: np.ndarray
    entry_id: str | None  # the matcher's accepted entry, None for no match
    score: float  # only looked at when entry_id is set
    weight: float = 1.0  # how much it counts in its track's template (template_weight)
    margin: float | None = None  # the score's margin over the runner-up entry (None: a one-entry list)


@dataclass(frozen=True)
class Alert:
    track_id: str
    entry_id: str
    score: float  # K-of-N: best score of the agreeing frames; template: the template's score
    frames_agreeing: int  # K-of-N: frames agreeing in the window; template: gated frames fused into it
    crop: np.ndarray  # CROP_SIZE x CROP_SIZE x 3 RGB, a copy the caller owns (evidence)
    context: np.ndarray  # CONTEXT_SIZE x CONTEXT_SIZE x 3 RGB from the same frame, a copy the caller owns
    rule: str = KOFN  # which rule fired: KOFN or TEMPLATE
    margin: float | None = None  # over the runner-up entry, for the frame (or template) that gave `score`


@dataclass
class _Track:
    track_id: str
    slot: int
    box: np.ndarray
    last_seen: float
    window: deque[str | None]
    alerted: set[str] = field(default_factory=set)
    best: dict[str, float] = field(default_factory=dict)  # best score per entry over the track's life
    best_margin: dict[str, float | None] = field(default_factory=dict)  # that frame's margin over the runner-up
    crop_entry: str | None = None  # whose best frame the crop slot holds
    crop_score: float = -1.0
    fused: int = 0  # gated frames summed into the template


REACH = 3.0  # a track continues by appearance only within this many box widths of where it was


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    size = max(float(a[2] - a[0]), float(b[2] - b[0]))
    dx = float(a[0] + a[2] - b[0] - b[2]) / 2
    dy = float(a[1] + a[3] - b[1] - b[3]) / 2
    return bool((dx * dx + dy * dy) ** 0.5 <= REACH * size)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, float(x1 - x0)) * max(0.0, float(y1 - y0))
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Tracks of one camera. Not thread-safe: the inference thread owns it."""

    def __init__(self, config: TrackingConfig, dim: int, max_tracks: int = 64):
        self.config = config
        self._embeddings = np.zeros((max_tracks, dim), np.float32)
        self._templates = np.zeros((max_tracks, dim), np.float32)  # per track: sum of weight x embedding
        self._queries = np.zeros((max_tracks, dim), np.float32)  # this frame's grown templates, unit length
        self._weighted = np.zeros(dim, np.float32)  # scratch: one face's weight x embedding
        self._crops = np.zeros((max_tracks, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        self._contexts = np.zeros((max_tracks, CONTEXT_SIZE, CONTEXT_SIZE, 3), np.uint8)
        self._free = list(range(max_tracks))
        self._tracks: list[_Track] = []
        self._next_id = 0
        self.ended = 0

    @property
    def active(self) -> int:
        return len(self._tracks)

    def update(self, now: float, frame: np.ndarray, faces: list[FaceObservation],
               detected: Sequence[np.ndarray] = (), matcher: Matcher | None = None) -> list[Alert]:
        """One frame's faces in; the alerts this frame completes out. `detected` holds the boxes of every
        face found in the frame (embedded or not): they are blacked out of an evidence crop kept for
        another face, so a bystander's face never becomes evidence. `matcher` is the one that matched the
        faces: the tracks' templates are matched by it (same threshold and margin); without it, or with
        `template` off in the config, only the K-of-N rule runs."""
        self.expire(now)
        assigned = self._associate(faces)
        alerts: list[Alert] = []
        seen: set[int] = set()
        grown: list[tuple[_Track, FaceObservation]] = []
        fuse = self.config.template and matcher is not None
        for face, track in zip(faces, assigned, strict=True):
            if track is None:
                track = self._start(now, face)
                if track is None:
                    continue  # table full: the face is not tracked (counted as not alerted)
            seen.add(id(track))
            track.box = face.box.copy()
            track.last_seen = now
            np.copyto(self._embeddings[track.slot], face.embedding)
            track.window.append(face.entry_id)
            if face.entry_id is not None:
                self._keep_best(track, frame, face, detected)
            alert = self._decide(track)
            if alert is not None:
                alerts.append(alert)
            if fuse:
                self._fuse(track, face)
                if track.fused >= self.config.agree_k:
                    grown.append((track, face))
        for track in self._tracks:
            if id(track) not in seen:
                track.window.append(None)  # not seen this frame: does not agree
        if grown and matcher is not None:
            alerts += self._decide_templates(grown, matcher, frame, detected)
        return alerts

    def _fuse(self, track: _Track, face: FaceObservation) -> None:
        """Add the face, weighted by its quality, to its track's template (in place: no allocation)."""
        template = self._templates[track.slot]
        np.multiply(face.embedding, np.float32(face.weight), out=self._weighted)
        np.add(template, self._weighted, out=template)
        self._weighted.fill(0)
        track.fused += 1

    def _decide_templates(self, grown: list[tuple[_Track, FaceObservation]], matcher: Matcher,
                          frame: np.ndarray, detected: Sequence[np.ndarray]) -> list[Alert]:
        """Match the templates of the tracks seen this frame (those with at least K gated frames). A template
        alerts for its accepted entry (threshold and margin, as a single face) only if at least one of the
        track's frames matched that entry on its own: the normalised mean of frames can score above every
        one of them, and a template alone must not make an alert easier than the frames' own evidence."""
        queries = self._queries[: len(grown)]
        out: list[Alert] = []
        try:
            for row, (track, _face) in zip(queries, grown, strict=True):
                np.copyto(row, self._templates[track.slot])
                norm = float(np.sqrt(row @ row))
                if norm > 0:
                    row /= norm
            results = matcher.match(queries)
            for (track, face), m in zip(grown, results, strict=True):
                entry = m.entry_id
                if entry is None or entry in track.alerted or entry not in track.best:
                    continue
                track.alerted.add(entry)
                out.append(self._template_alert(track, face, entry, m.score, m.margin, frame, detected))
        finally:
            queries.fill(0)
        return out

    def _template_alert(self, track: _Track, face: FaceObservation, entry: str, score: float,
                        margin: float | None, frame: np.ndarray, detected: Sequence[np.ndarray]) -> Alert:
        """The evidence: the crop kept for this entry's best frame if the slot holds it, else this frame's."""
        if track.crop_entry == entry:
            crop, context = self._crops[track.slot].copy(), self._contexts[track.slot].copy()
        else:
            crop, context = np.zeros_like(self._crops[0]), np.zeros_like(self._contexts[0])
            for out, span in ((crop, 1 + 2 * CROP_MARGIN), (context, CONTEXT_SPAN)):
                region = self._crop_into(frame, face.box, out, span)
                if region is not None:
                    _redact(out, region, detected, face.box)
        return Alert(track.track_id, entry, score, track.fused, crop, context, TEMPLATE, margin)

    def _keep_best(self, track: _Track, frame: np.ndarray, face: FaceObservation,
                   detected: Sequence[np.ndarray]) -> None:
        """Best score per entry; the crop slot follows the entry with the most votes in the window (the one
        an alert would be for), keeping that entry's best-scoring frame."""
        entry = face.entry_id
        assert entry is not None
        if face.score > track.best.get(entry, -1.0) or entry not in track.best:
            track.best[entry], track.best_margin[entry] = face.score, face.margin
        votes = Counter(e for e in track.window if e is not None)
        leader = track.crop_entry
        if (entry == leader and face.score > track.crop_score) or (
                entry != leader and votes[entry] >= votes.get(leader, 0) if leader else True):
            track.crop_entry, track.crop_score = entry, face.score
            slot = track.slot
            for out, span in ((self._crops[slot], 1 + 2 * CROP_MARGIN), (self._contexts[slot], CONTEXT_SPAN)):
                region = self._crop_into(frame, face.box, out, span)
                if region is not None:
                    _redact(out, region, detected, face.box)

    def _decide(self, track: _Track) -> Alert | None:
        votes = Counter(e for e in track.window if e is not None)
        if not votes:
            return None
        entry, count = votes.most_common(1)[0]
        if count < self.config.agree_k or entry in track.alerted:
            return None
        track.alerted.add(entry)
        if track.crop_entry == entry:
            crop, context = self._crops[track.slot].copy(), self._contexts[track.slot].copy()
        else:
            crop, context = np.zeros_like(self._crops[0]), np.zeros_like(self._contexts[0])
        return Alert(track.track_id, entry, track.best[entry], count, crop, context, margin=track.best_margin[entry])

    def _associate(self, faces: list[FaceObservation]) -> list[_Track | None]:
        """Greedy: highest IoU pairs first, then embedding similarity for what is left."""
        out: list[_Track | None] = [None] * len(faces)
        if not self._tracks or not faces:
            return out
        pairs = []
        for fi, face in enumerate(faces):
            for ti, track in enumerate(self._tracks):
                o = iou(face.box, track.box)
                if o >= self.config.iou:
                    pairs.append((o, fi, ti))
        used_f: set[int] = set()
        used_t: set[int] = set()
        for _o, fi, ti in sorted(pairs, reverse=True):
            if fi not in used_f and ti not in used_t:
                out[fi] = self._tracks[ti]
                used_f.add(fi)
                used_t.add(ti)
        rest_t = [ti for ti in range(len(self._tracks)) if ti not in used_t]
        rest_f = [fi for fi in range(len(faces)) if fi not in used_f]
        if rest_t and rest_f:
            # a face that moved too far for any overlap may still continue a track: only if it is near
            # (within REACH box sizes) and looks like the same person (above the impostor range)
            queries = np.stack([faces[fi].embedding for fi in rest_f])
            sims = queries @ self._embeddings[[self._tracks[ti].slot for ti in rest_t]].T
            queries.fill(0)
            order = sorted(((float(sims[a, b]), a, b) for a in range(len(rest_f)) for b in range(len(rest_t))
                            if _near(faces[rest_f[a]].box, self._tracks[rest_t[b]].box)), reverse=True)
            sims.fill(0)
            for sim, a, b in order:
                if sim < self.config.min_similarity:
                    break
                fi, ti = rest_f[a], rest_t[b]
                if fi not in used_f and ti not in used_t:
                    out[fi] = self._tracks[ti]
                    used_f.add(fi)
                    used_t.add(ti)
        return out

    def _start(self, now: float, face: FaceObservation) -> _Track | None:
        if not self._free:
            return None
        self._next_id += 1
        track = _Track(f"t{self._next_id}", self._free.pop(), face.box.copy(), now,
                       deque(maxlen=self.config.window_n))
        self._tracks.append(track)
        return track

    def expire(self, now: float) -> None:
        """End (and zero) the tracks not seen for longer than max_age_s."""
        keep = []
        for track in self._tracks:
            if now - track.last_seen > self.config.max_age_s:
                self._end(track)
            else:
                keep.append(track)
        self._tracks = keep

    def _end(self, track: _Track) -> None:
        self._embeddings[track.slot].fill(0)
        self._templates[track.slot].fill(0)
        self._crops[track.slot].fill(0)
        self._contexts[track.slot].fill(0)
        self._free.append(track.slot)
        self.ended += 1

    def reset(self) -> None:
        """End every track (shard replaced or expired, deployment window closed) and zero their state."""
        for track in self._tracks:
            self._end(track)
        self._tracks = []

    @staticmethod
    def _crop_into(frame: np.ndarray, box: np.ndarray, out: np.ndarray,
                   span: float) -> tuple[float, float, float] | None:
        """The square `span` face-box sizes wide around the face (moved, not squashed, at the frame's edge), scaled
        into `out`."""
        h, w = frame.shape[:2]
        bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
        side = min(max(bw, bh) * span, w, h)  # kept square: slid inside the frame rather than squashed
        cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
        x0 = int(min(max(0.0, cx - side / 2), w - side))
        y0 = int(min(max(0.0, cy - side / 2), h - side))
        x1, y1 = int(x0 + side), int(y0 + side)
        if x1 - x0 < 2 or y1 - y0 < 2:
            out.fill(0)
            return None
        cv2.resize(frame[y0:y1, x0:x1], (out.shape[1], out.shape[0]), dst=out, interpolation=cv2.INTER_AREA)
        return float(x0), float(y0), float(x1 - x0)


REDACT_MARGIN = 0.2  # around another face's box (hair, ears, a box that fits the face tightly), per side


def _redact(out: np.ndarray, region: tuple[float, float, float], boxes: Sequence[np.ndarray],
            keep: np.ndarray) -> None:
    """Black out every face box but `keep` inside a crop of `region` (x0, y0, side in frame pixels)."""
    x0, y0, side = region
    scale = out.shape[0] / side
    for b in boxes:
        if np.array_equal(b, keep):
            continue
        pad = REDACT_MARGIN * float(max(b[2] - b[0], b[3] - b[1]))
        bx0, by0 = (int(max(0.0, (float(b[0]) - pad - x0) * scale)), int(max(0.0, (float(b[1]) - pad - y0) * scale)))
        bx1 = int(min(out.shape[1], np.ceil((float(b[2]) + pad - x0) * scale)))
        by1 = int(min(out.shape[0], np.ceil((float(b[3]) + pad - y0) * scale)))
        if bx1 > bx0 and by1 > by0:
            out[by0:by1, bx0:bx1] = 0
