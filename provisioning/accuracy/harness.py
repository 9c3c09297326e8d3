"""One evaluation: the real pipeline over a labelled set, and every figure docs/accuracy.md reports.

Protocol (docs/accuracy.md says why):
  - photos are analysed as they are and scaled by each of `scales` (detection recall and gate by face size);
  - verification pairs use the photos at full size and every `clip_stride`-th gate-passing frame of a clip;
  - each identity is enrolled from its first sample (first photo; first sampled clip frame), the others of
    that identity are mated probes; every sample searches lists without its own identity as a non-mated one;
  - passers-by for the K-of-N rule: clips cut into `track_frames`-frame passages, and every photo held in
    front of a 720p camera for `hold` jittered frames.
"""

from __future__ import annotations

import itertools
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edge.config import TrackingConfig
from edge.pipeline import MIN_MARGIN
from edge.vision.analyzer import FaceAnalyzer, read_rgb
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy
from provisioning.accuracy.dataset import LabelledSet
from provisioning.accuracy.kofn import Passage, segments, track_scores, tracker_alerts
from provisioning.accuracy.observe import ClipResult, Observer, Progress, Sighting
from provisioning.accuracy.scores import ScoreSets, score_sets
from provisioning.accuracy.stats import (
    Separation,
    TailBootstrap,
    TailEstimate,
    det_curve,
    fnir_model,
    separation,
)

LIST_SIZES = (10, 100, 1000, 10000)
SIZE_BINS = (0, 30, 40, 60, 100, 200)  # face width in pixels; the last bin is open
DET_THRESHOLDS = np.round(np.arange(0.600, 1.0005, 0.001), 3)


@dataclass(frozen=True)
class HarnessOptions:
    threshold: float | None = None  # None: the embedder's own (MANIFEST.json)
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    clip_stride: int = 48
    hold: int = 15
    track_frames: int = 30  # 2 s at 15 fps
    list_sizes: tuple[int, ...] = LIST_SIZES
    draws: int = 50  # random distractor lists per probe and list size, where the data can fill them
    bootstrap: int = 400
    seed: int = 0
    images: tuple[str, ...] | None = None  # only these photos (a quick run)
    clips: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True)
class ModelInfo:
    embedder: str
    sha256: str
    variant: str
    detector: str
    release: str  # edge-face-node version + git commit
    threshold: float
    floor: float | None
    margin: float


@dataclass(frozen=True)
class RecallRow:
    low: float
    high: float  # inf for the last bin
    annotated: int
    detected: int
    passed: int


@dataclass(frozen=True)
class OpenSetRow:
    """One list size at the threshold. `*_data` is None where the data cannot fill a list that long."""

    size: int
    fpir_data: float | None  # over the probes whose identity has n certain distractors in the data
    fnir_data: float | None
    fpir: tuple[float, float, float]  # model, low, high
    fnir: float  # model
    alerts_per_1000: tuple[float, float, float]  # passers-by after K-of-N: model, low, high
    extrapolated: bool


@dataclass(frozen=True)
class TrackerCheck:
    """The real tracker and matcher on the longest list the data holds."""

    list_size: int
    passages: int
    false_alerts: int  # passages of unlisted people that alerted
    replay_fires: int  # passages whose per-entry replay fires (the upper bound)
    listed: int  # passages of listed people (enrolled elsewhere)
    listed_alerted: int  # ... alerted for their own entry
    listed_wrong: int  # ... alerted for another entry


@dataclass(frozen=True)
class AccuracyReport:
    model: ModelInfo
    options: HarnessOptions
    dataset: str
    when: str
    recall: tuple[RecallRow, ...]
    refusals: dict[str, int]  # gate reasons at full size
    photos: int
    clip_frames: int
    clip_false_detections: int
    sets: ScoreSets
    sep: Separation
    det: tuple[np.ndarray, np.ndarray, np.ndarray]  # thresholds, FMR, FNMR
    pair_tail: TailBootstrap
    at_threshold: TailEstimate
    open_set: tuple[OpenSetRow, ...]
    track_tail: TailBootstrap
    track_at_threshold: TailEstimate
    check: TrackerCheck
    data_list_size: int

    @property
    def genuine(self) -> np.ndarray:
        return self.sets.values(self.sets.genuine)

    @property
    def impostor(self) -> np.ndarray:
        return self.sets.values(self.sets.impostor)


def release() -> str:
    """The package version and, in a checkout, its git commit."""
    try:
        v = version("edge-face-node")
    except PackageNotFoundError:
        v = "unknown"
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=False)
        commit = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{v} ({commit})" if commit else v


class Harness:
    """Runs the node's pipeline over one labelled set and computes the report."""

    def __init__(self, labelled: LabelledSet, analyzer: FaceAnalyzer, options: HarnessOptions,
                 progress: Progress | None = None):
        self.labelled = labelled
        self.analyzer = analyzer
        self.options = options
        self.say: Progress = progress or (lambda _m: None)
        spec = analyzer.embedder_spec
        threshold = options.threshold if options.threshold is not None else spec.match_threshold
        if threshold is None:
            raise ValueError(f"embedder {spec.id} declares no match threshold in MANIFEST.json: pass one")
        detector = analyzer.config.detector.model_id or analyzer.manifest.default_detector
        self.model = ModelInfo(spec.id, spec.sha256, spec.variant, detector, release(), float(threshold),
                               spec.threshold_floor, MIN_MARGIN)

    # ------------------------------------------------------------------ observing

    def _images(self) -> list[str]:
        images = self.labelled.images()
        if self.options.images is not None:
            images = [i for i in images if i in self.options.images]
        return images

    def observe(self) -> tuple[dict[float, list[Sighting]], list[ClipResult], list[Passage]]:
        """Photos at every scale, clips frame by frame, held stills: everything the pipeline saw."""
        observer = Observer(self.analyzer)
        photos: dict[float, list[Sighting]] = {scale: [] for scale in self.options.scales}
        passages: list[Passage] = []
        rng = np.random.default_rng(self.options.seed)
        images = self._images()
        for n, image in enumerate(images, 1):
            faces = self.labelled.faces_in(image)
            rgb = read_rgb(self.labelled.root / image)
            for scale in self.options.scales:
                photos[scale] += observer.photo(rgb, faces, scale).sightings
            held = observer.held(rgb, faces, self.options.hold, rng) if self.options.hold else []
            for j, face in enumerate(faces):
                passages.append(Passage(face.identity, image, None, tuple(r.sightings[j] for r in held)))
            self.say(f"photos {n}/{len(images)}: {image}")
        clips = []
        if self.options.clips:
            for clip in self.labelled.clips:
                clips.append(observer.clip(self.labelled.root, clip, self.say))
                self.say(f"clip {clip.path}: {clips[-1].frames} frames")
        return photos, clips, passages

    # ------------------------------------------------------------------ the evaluation

    def run(self) -> AccuracyReport:
        photos, clips, held = self.observe()
        o = self.options
        t = self.model.threshold
        full = photos.get(1.0, [])
        samples = [s for s in full if s.passed and s.embedding is not None]
        passages = list(held)
        for c in clips:
            if not c.clip.ranges:
                continue
            usable = [s for s in c.person if s is not None and s.passed and s.embedding is not None]
            samples += usable[:: o.clip_stride]
            passages += segments(c.clip.identity, c.clip.path, c.person, o.track_frames)
        sets = score_sets(self.labelled, samples)
        genuine, impostor = sets.values(sets.genuine), sets.values(sets.impostor)
        sep = separation(genuine, impostor, t)
        fmr, fnmr = det_curve(genuine, impostor, DET_THRESHOLDS)
        self.say(f"{len(genuine)} same-person and {len(impostor)} different-person pairs; fitting the tail")
        pair_tail = TailBootstrap(impostor, sets.owners(), o.bootstrap, o.seed)
        entries = self._enrol(samples)
        track_set, owners, check = self._passers_by(passages, entries)
        track_tail = TailBootstrap(track_set, owners, o.bootstrap, o.seed)
        rows, data_n = self._open_set(samples, entries, pair_tail, track_tail, genuine, impostor)
        refusals = Counter(r for s in full for r in s.reasons)
        return AccuracyReport(
            self.model, o, str(self.labelled.root), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            self._recall([s for group in photos.values() for s in group]), dict(refusals.most_common()),
            len(self._images()),
            sum(c.frames for c in clips), sum(c.false_detections for c in clips), sets, sep,
            (DET_THRESHOLDS, fmr, fnmr), pair_tail, pair_tail.estimate(t), tuple(rows), track_tail,
            track_tail.estimate(t), check, data_n)

    def _recall(self, photos: Sequence[Sighting]) -> tuple[RecallRow, ...]:
        rows = []
        edges = [*SIZE_BINS, np.inf]
        for low, high in itertools.pairwise(edges):
            inside = [s for s in photos if low <= s.size_px < high]
            rows.append(RecallRow(float(low), float(high), len(inside), sum(s.detected for s in inside),
                                  sum(s.passed for s in inside)))
        return tuple(rows)

    def _enrol(self, samples: Sequence[Sighting]) -> dict[str, Sighting]:
        """Each identity's first sample is its watch-list entry."""
        out: dict[str, Sighting] = {}
        for s in samples:
            out.setdefault(s.identity, s)
        return out

    def _others(self, identity: str, entries: dict[str, Sighting]) -> list[str]:
        """Entries that are certainly someone else: distractors for this identity."""
        return [e for e in entries if e != identity and not self.labelled.doubtful(identity, e)]

    def _open_set(self, samples: Sequence[Sighting], entries: dict[str, Sighting], pair_tail: TailBootstrap,
                  track_tail: TailBootstrap, genuine: np.ndarray,
                  impostor: np.ndarray) -> tuple[list[OpenSetRow], int]:
        """FPIR and FNIR per list size: the node's matcher on random lists the data can fill, the tail
        model for every size."""
        o, t = self.options, self.model.threshold
        rng = np.random.default_rng(o.seed + 1)
        policy = MatchPolicy(t, MIN_MARGIN)
        enrolled = set(map(id, entries.values()))
        mated = [s for s in samples if id(s) not in enrolled and s.identity in entries]
        room = {s.identity: len(self._others(s.identity, entries)) for s in samples}
        data_n = max(room.values(), default=0)
        rows = []
        for n in o.list_sizes:
            fpir_data = fnir_data = None
            probes = [s for s in samples if room[s.identity] >= n]  # those the data can give n distractors
            if probes:
                false = [f for s in probes for f in self._search(s, None, n, entries, policy, rng)]
                fpir_data = float(np.mean([f is not None for f in false]))
            listed = [s for s in mated if room[s.identity] >= n - 1]
            if listed:
                fnir_data = float(np.mean([g != s.identity for s in listed
                                           for g in self._search(s, s.identity, n, entries, policy, rng)]))
            model = pair_tail.passer_by(t, n)
            alerts = tuple(1000 * v for v in track_tail.passer_by(t, n))
            rows.append(OpenSetRow(n, fpir_data, fnir_data, model,
                                   fnir_model(genuine, pair_tail.model, impostor, t, n, MIN_MARGIN),
                                   (alerts[0], alerts[1], alerts[2]), n > data_n))
            self.say(f"open set at {n} entries")
        return rows, data_n

    def _search(self, probe: Sighting, own: str | None, n: int, entries: dict[str, Sighting],
                policy: MatchPolicy, rng: np.random.Generator) -> list[str | None]:
        """The node's matcher's answer for the probe on each of `draws` random n-entry lists (its own entry
        plus n - 1 distractors when `own` is given, else n distractors)."""
        others = self._others(probe.identity, entries)
        hits: list[str | None] = []
        for _ in range(self.options.draws):
            pick = list(rng.choice(len(others), size=n - (1 if own else 0), replace=False))
            ids = [others[i] for i in pick] + ([own] if own else [])
            rows = np.stack([self._embedding(entries[e]) for e in ids])
            matcher = Matcher(Gallery(rows, ids), policy, max_faces=1)
            hits.append(matcher.match(self._embedding(probe)[None, :])[0].entry_id)
            matcher.release()
        return hits

    def _passers_by(self, passages: Sequence[Passage],
                    entries: dict[str, Sighting]) -> tuple[np.ndarray, np.ndarray, TrackerCheck]:
        """Every passage as an unlisted passer-by (its own identity off the list): K-of-N track scores against
        every certain distractor, and the real tracker on that list. Passages of an enrolled identity that do
        not hold its enrolment photo or frame also run on the list with their own entry (listed people)."""
        cfg, t, gate = self.options.tracking, self.model.threshold, self.analyzer.config.quality
        index = {name: i for i, name in enumerate(dict.fromkeys([*entries, *(p.identity for p in passages)]))}
        scores: list[float] = []
        owners: list[tuple[int, int]] = []
        used = false = fires = listed = listed_ok = listed_wrong = 0
        policy = MatchPolicy(t, MIN_MARGIN)
        for p in passages:
            others = self._others(p.identity, entries)
            if p.seen < cfg.agree_k or not others:
                continue  # never seen often enough to alert for anyone, or nobody to alert for
            matrix = np.stack([self._embedding(entries[x]) for x in others])
            ts = track_scores(p, matrix.astype(np.float64), cfg, gate)
            scores += [float(v) for v in ts]
            owners += [(index[p.identity], index[x]) for x in others]
            used += 1
            fires += int((ts >= t).any())
            false += bool(tracker_alerts(p, Matcher(Gallery(matrix, others), policy), cfg, gate))
            entry = entries.get(p.identity)
            if entry is not None and not p.holds(entry):
                ids = [*others, p.identity]
                rows = np.stack([self._embedding(entries[x]) for x in ids])
                alerts = tracker_alerts(p, Matcher(Gallery(rows, ids), policy), cfg, gate)
                listed += 1
                listed_ok += p.identity in alerts
                listed_wrong += any(a != p.identity for a in alerts)
        check = TrackerCheck(len(entries) - 1, used, false, fires, listed, listed_ok, listed_wrong)
        self.say(f"K-of-N: {used} passages, {len(scores)} track scores, {listed} listed passages")
        return np.array(scores), np.array(owners, np.int64).reshape(-1, 2), check

    @staticmethod
    def _embedding(s: Sighting) -> np.ndarray:
        assert s.embedding is not None  # entries and samples are gate-passing sightings
        return s.embedding
