"""Calibration at a venue, and the fleet policy that shard issuing enforces with it.

A rehearsal: footage of people who are on no list, taken where the cameras will stand, searched against the
deployment's real watch list. Every face that passes the gate and scores against an entry is an impostor
pair; their tail model (docs/accuracy.md) gives the chance p(t) that one pair reaches threshold t, and a
passer-by meets N entries: predicted false alerts per 1,000 passers-by = 1000 (1 - (1 - p(t))^N). No credit
is taken for the tracker's K-of-N rule (a lookalike scores high on every frame): the prediction is an upper
bound, and the real matcher and tracker are run over the rehearsal at the proposed threshold to show what
they did. The record (F/calibration/<model id>.json) keeps p(t) on a grid of thresholds, so that `edge-fleet
shard issue` can refuse a deployment whose threshold and list size break the fleet's policy
(`max_false_alerts_per_1000` in fleet.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from edge.config import TrackingConfig
from edge.fsutil import write_atomic
from edge.pipeline import MIN_MARGIN
from edge.tracking import FaceObservation, Tracker
from edge.vision.analyzer import FaceAnalyzer, read_rgb
from edge.vision.detect import iou
from edge.vision.manifest import ModelSpec
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy
from provisioning.accuracy.kofn import FPS
from provisioning.accuracy.observe import Progress
from provisioning.accuracy.stats import TailBootstrap, passer_by
from provisioning.fleet import Fleet, FleetError

POLICY_KEY = "max_false_alerts_per_1000"  # in fleet.json: false alerts per 1,000 passers-by a deployment may predict
GRID_STEP = 0.001
LINK_IOU = 0.3  # a face in the next analysed frame overlapping this much is the same passer-by
MAX_GAP = 2  # analysed frames a passer-by may go undetected and still continue
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class CalibrationError(FleetError):
    """Calibration cannot proceed or its record cannot be used; the message says which file or option."""


class PolicyError(FleetError):
    """A deployment predicts more false alerts than the fleet's policy allows; the message gives the figures."""


@dataclass(frozen=True)
class CalibrationRecord:
    """What a rehearsal measured, kept by the fleet for its model."""

    model_id: str
    model_sha256: str
    when: str
    footage: tuple[str, ...]
    faces: int
    entries: int
    pairs: int
    grid: tuple[float, ...]  # thresholds
    rates: tuple[float, ...]  # p(t) per pair: the data below the tail, the tail model above
    rates_high: tuple[float, ...]  # the bootstrap's 95th percentile of p(t)

    def rate(self, threshold: float) -> tuple[float, float]:
        """p and its upper bound at the largest grid threshold <= `threshold` (never optimistic)."""
        i = int(np.searchsorted(np.array(self.grid), threshold + 1e-9, side="right")) - 1
        if i < 0:
            return 1.0, 1.0
        return self.rates[i], self.rates_high[i]

    def predicted(self, threshold: float, entries: int) -> tuple[float, float]:
        """False alerts per 1,000 passers-by on a list of `entries`: (model, 95% upper)."""
        p, high = self.rate(threshold)
        return 1000 * float(passer_by(p, entries)), 1000 * float(passer_by(high, entries))


def record_path(fleet: Fleet, model_id: str) -> Path:
    return fleet.dir / "calibration" / f"{model_id}.json"


def save_record(fleet: Fleet, record: CalibrationRecord) -> Path:
    path = record_path(fleet, record.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(record), indent=1).encode() + b"\n", 0o644)
    return path


def load_record(fleet: Fleet, model: ModelSpec) -> CalibrationRecord:
    path = record_path(fleet, model.id)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        record = CalibrationRecord(
            str(doc["model_id"]), str(doc["model_sha256"]), str(doc["when"]), tuple(map(str, doc["footage"])),
            int(doc["faces"]), int(doc["entries"]), int(doc["pairs"]), tuple(map(float, doc["grid"])),
            tuple(map(float, doc["rates"])), tuple(map(float, doc["rates_high"])))
    except KeyError as exc:
        raise CalibrationError(f"{path}: key {exc} missing (calibrate again)") from None
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no calibration of {model.id} in this fleet (run `edge-fleet "
                               "calibrate`)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc})") from None
    if record.model_sha256 != model.sha256:
        raise CalibrationError(f"{path}: calibrated for another build of {model.id} "
                               f"({record.model_sha256[:16]}, this one {model.sha256[:16]}): calibrate again")
    return record


def policy_limit(fleet: Fleet) -> float | None:
    """The fleet's limit on predicted false alerts per 1,000 passers-by, or None when it sets none."""
    v = fleet.meta().get(POLICY_KEY)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
        raise CalibrationError(f"{fleet.meta_path}: {POLICY_KEY} = {v!r} must be a number >= 0")
    return float(v)


def check_policy(fleet: Fleet, model: ModelSpec, threshold: float, entries: int) -> None:
    """Refuse (PolicyError, with the figures) a deployment predicted to break the fleet's policy."""
    limit = policy_limit(fleet)
    if limit is None:
        return
    record = load_record(fleet, model)
    predicted, high = record.predicted(threshold, entries)
    if predicted > limit:
        lowest = next((t for t in record.grid if record.predicted(t, entries)[0] <= limit), None)
        hint = (f"a threshold of {lowest:.3f} would meet it" if lowest is not None
                else "no threshold on the calibration grid meets it")
        raise PolicyError(f"threshold {threshold} with {entries} entries predicts {predicted:.3g} false alerts per "
                          f"1,000 passers-by (95% upper {high:.3g}; calibration of {model.id}, {record.when}, "
                          f"{record.pairs} pairs); fleet policy {POLICY_KEY} = {limit:g} in {fleet.meta_path}: "
                          f"{hint}")


@dataclass(frozen=True, eq=False)
class RehearsalFace:
    frame: int  # running frame number over all footage
    box: np.ndarray
    embedding: np.ndarray


def passers_by(faces: Sequence[RehearsalFace], breaks: Sequence[int]) -> np.ndarray:
    """A passer-by index per face, for a bootstrap over people rather than frames. A face continues the person
    of a face in the last analysed frame with faces (at most MAX_GAP frames back, same file) whose box it overlaps
    by LINK_IOU or more (greedy, best overlap first); otherwise it starts a new person. `faces` in frame order."""
    ids = np.empty(len(faces), np.int64)
    prev: list[tuple[int, np.ndarray]] = []  # (person, box) in the last frame that had faces
    last_frame, people, i = -(MAX_GAP + 2), 0, 0
    while i < len(faces):
        frame = faces[i].frame
        j = i
        while j < len(faces) and faces[j].frame == frame:
            j += 1
        if frame - last_frame > MAX_GAP + 1 or any(last_frame < b <= frame for b in breaks):
            prev = []  # too long a gap, or a new file: nobody continues
        pairs = sorted(((float(iou(faces[k].box, box[None, :])[0]), k, n)
                        for k in range(i, j) for n, (_p, box) in enumerate(prev)), reverse=True)
        taken: set[int] = set()
        used: set[int] = set()
        for overlap, k, n in pairs:
            if overlap >= LINK_IOU and k not in taken and n not in used:
                ids[k] = prev[n][0]
                taken.add(k)
                used.add(n)
        for k in range(i, j):
            if k not in taken:
                ids[k] = people
                people += 1
        prev = [(int(ids[k]), faces[k].box) for k in range(i, j)]
        last_frame, i = frame, j
    return ids


class Rehearsal:
    """Faces of unlisted people in rehearsal footage, through the node's own analyser (kept in memory only)."""

    def __init__(self, analyzer: FaceAnalyzer, footage: Sequence[Path], every: int = 1,
                 progress: Progress | None = None):
        self.footage = tuple(footage)
        self.faces: list[RehearsalFace] = []
        self.frames = 0
        self.breaks: list[int] = []  # frame numbers where a new file starts (tracks end there)
        for path in footage:
            self.breaks.append(self.frames)
            for i, rgb in enumerate(_frames(path)):
                if i % every == 0:
                    for f in analyzer.analyse(rgb):
                        if f.embedding is not None:
                            self.faces.append(RehearsalFace(self.frames, np.array(f.detection.box, np.float32),
                                                            np.array(f.embedding, np.float32)))
                    analyzer.release()
                    self.frames += 1
            if progress:
                progress(f"{path}: {len(self.faces)} faces so far")
        if not self.faces:
            raise CalibrationError("the rehearsal footage holds no face that passes the quality gate")

    def passers_by(self) -> np.ndarray:
        """A passer-by index per face (see `passers_by`)."""
        return passers_by(self.faces, self.breaks)

    def wipe(self) -> None:
        for f in self.faces:
            f.embedding.fill(0)
        self.faces = []

    def alerts(self, gallery: Gallery, threshold: float, config: TrackingConfig) -> tuple[int, int]:
        """The node's matcher and tracker over the rehearsal: (alerts, tracks). Everyone is unlisted, so
        every alert is false; tracks stand for passers-by (a track broken in two counts twice)."""
        matcher = Matcher(gallery, MatchPolicy(threshold, MIN_MARGIN))
        tracker = Tracker(config, gallery.dim)
        canvas = np.zeros((8, 8, 3), np.uint8)
        by_frame: dict[int, list[RehearsalFace]] = {}
        for f in self.faces:
            by_frame.setdefault(f.frame, []).append(f)
        alerts = tracks = 0
        try:
            for i in range(self.frames):
                if i in self.breaks:
                    tracks += tracker.ended + tracker.active
                    tracker.reset()
                    tracker = Tracker(config, gallery.dim)
                faces = by_frame.get(i, [])
                obs = []
                if faces:
                    results = matcher.match(np.stack([f.embedding for f in faces]))
                    obs = [FaceObservation(f.box, f.embedding, r.entry_id, r.score if r.matched else 0.0)
                           for f, r in zip(faces, results, strict=True)]
                alerts += len(tracker.update(i / FPS, canvas, obs, [f.box for f in faces], matcher))  # both rules
            tracks += tracker.ended + tracker.active
        finally:
            tracker.reset()
            matcher.release()
        return alerts, tracks


def _frames(path: Path) -> Iterator[np.ndarray]:
    """A photo's one frame, or a clip's frames decoded one at a time."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield read_rgb(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CalibrationError(f"{path}: not a video or image this tool can decode")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


@dataclass(frozen=True)
class Proposal:
    record: CalibrationRecord
    list_size: int
    target: float
    threshold: float | None  # None: no threshold >= the floor meets the target
    floor: float
    alerts: int  # the real matcher and tracker at the proposed threshold (or the floor)
    tracks: int


def calibrate(rehearsal: Rehearsal, gallery: Gallery, model: ModelSpec, list_size: int, target: float,
              config: TrackingConfig, bootstrap: int = 200, seed: int = 0) -> Proposal:
    """Fit the impostor tail of rehearsal faces against the list and propose the lowest threshold (not below the
    model's floor) whose predicted false alerts per 1,000 passers-by at `list_size` entries are <= `target`."""
    emb = np.stack([f.embedding for f in rehearsal.faces]).astype(np.float64)
    scores = (emb @ gallery.matrix.T.astype(np.float64)).ravel()
    faces, entries = emb.shape[0], gallery.size
    # the bootstrap resamples passers-by, not faces: the frames of one person are not independent draws
    people = rehearsal.passers_by()
    walkers = int(people.max()) + 1
    owners = np.stack([np.repeat(people, entries), np.tile(np.arange(entries) + walkers, faces)], axis=1)
    tail = TailBootstrap(scores, owners, bootstrap, seed)
    floor = model.threshold_floor or 0.0
    grid = tuple(float(t) for t in np.round(np.arange(min(floor, tail.model.u), 1.0, GRID_STEP), 3))
    rates, highs = [], []
    for t in grid:
        e = tail.estimate(t, level=0.9)
        rates.append(e.model if t > tail.model.u else e.empirical)
        highs.append(max(e.high, rates[-1]))
    record = CalibrationRecord(model.id, model.sha256, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                               tuple(str(p) for p in rehearsal.footage), faces, entries, len(scores), grid,
                               tuple(rates), tuple(highs))
    threshold = next((t for t in grid if t >= floor and record.predicted(t, list_size)[0] <= target), None)
    alerts, tracks = rehearsal.alerts(gallery, threshold if threshold is not None else floor, config)
    return Proposal(record, list_size, target, threshold, floor, alerts, tracks)


def proposal_text(p: Proposal) -> str:
    """The calibration report (Markdown): figures only, no face data."""
    r = p.record
    at = p.threshold if p.threshold is not None else p.floor
    pred, high = r.predicted(at, p.list_size)
    lines = [
        f"# Calibration of {r.model_id}",
        "",
        f"- {r.when}; model sha256 `{r.model_sha256[:16]}`",
        f"- rehearsal: {', '.join(r.footage)}: {r.faces} faces of unlisted people passed the gate, searched "
        f"against {r.entries} entries ({r.pairs} pairs)",
        f"- target: at most {p.target:g} false alerts per 1,000 passers-by on a list of {p.list_size} entries; "
        f"floor {p.floor}",
        "",
        (f"**Proposed threshold: {p.threshold:.3f}**" if p.threshold is not None
         else f"**No threshold at or above the floor {p.floor} meets the target.**"),
        "",
        f"At {at:.3f}: predicted {pred:.3g} false alerts per 1,000 passers-by (95% upper {high:.3g}); the node's "
        f"matcher and tracker over the rehearsal raised {p.alerts} alerts on {p.tracks} tracks.",
        "",
        "| threshold | p per pair | false alerts per 1,000 passers-by (model) | 95% upper |",
        "|---|---|---|---|",
    ]
    for t in (0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98):
        if t >= r.grid[0]:
            rate, _h = r.rate(t)
            a, b = r.predicted(t, p.list_size)
            lines.append(f"| {t:.2f} | {rate:.2g} | {a:.3g} | {b:.3g} |")
    lines += ["", "Method: docs/accuracy.md (calibration). No K-of-N credit is taken: the prediction is an upper "
                  "bound for passers-by the tracker follows."]
    return "\n".join(lines) + "\n"
