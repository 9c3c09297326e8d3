"""Embedding fidelity: int8 / dynint8 against float32, and our pipeline against dlib's own C++ pipeline.

For every annotated devset face (detections matched to annotations by IoU) the float32, int8 and
dynint8 embedders see the *same* aligned crop. The reference is dlib itself: its 5-point shape
predictor on a dlib.rectangle made from our detection box (and, separately, from the annotation box),
then `face_recognition_model_v1.compute_face_descriptor`. Our float32 model is also run on dlib's own
aligned chip, which separates the model port (weights, normalisation) from our alignment.

Latency is the embedder invoke alone, the three models interleaved, reported as a ratio to float32
(median over rounds of each round's ratio), so a noisy shared machine does not bias one model.

Generic mode (`--embedder ID`): any embedder MANIFEST.json declares against its float model, for a force that
brings its own (docs/embedders.md, the path's fidelity check). The float model is the float32 embedder of the same
weights (the same source files in MANIFEST.json), or `--float ID`. Both see the same devset faces (the photo
faces, and every 16th frame of the clip's person: same-person pairs near the threshold), aligned by the template
they declare (which must be the same); the report gives the mean and minimum cosine between the two embeddings
of each face (target >= 0.99), the share of face pairs both call same or different at the embedder's declared
threshold and floor (target >= 99%), and the time per face (align + embed) of the embedder, of its float model
and of dlib int8, the default, measured in the same run: interleaved rounds, ratio to dlib int8. No dlib C++
needed. A float embedder is its own reference: only its time is measured. Exit 1: a target missed; 2: a bad
model id, manifest or devset.

usage: python3 bench/fidelity.py      (devset: tests/data/devset, or $EDGE_DEVSET)
       python3 bench/fidelity.py --embedder ID [--float ID] [--clip-every 16] [--rounds 15] [--reps 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from common import median_seconds, require_devset

from edge.vision.align import Aligner
from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import Detection, DetectorConfig, FaceDetector, iou
from edge.vision.embed import Embedder
from edge.vision.errors import ModelIntegrityError, ModelLoadError, ModelManifestError
from edge.vision.manifest import UNCALIBRATED_FLOOR, ModelManifest, ModelSpec, load_manifest
from edge.vision.quality import QualityConfig, QualityGate
from edge.vision.runtime import RuntimeConfig
from provisioning.accuracy.dataset import DatasetError, LabelledClip, load_labelled_set
from provisioning.accuracy.observe import LABEL_IOU
from provisioning.accuracy.observe import label as label_boxes

if TYPE_CHECKING:
    import dlib  # the C++ reference of the dlib mode (the `bench` extra); the generic mode runs without it

FLOAT, INT8, DYN = "dlib-resnet-v1-float32", "dlib-resnet-v1-int8", "dlib-resnet-v1-dynint8"
OURS = (FLOAT, INT8, DYN)
SHORT = {FLOAT: "float32", INT8: "int8", DYN: "dynint8"}
# The photos models/build.sh feeds the int8 quantiser as calibration data.
CALIBRATION = {f"images/vladmandic_face_api/sample{i}.jpg" for i in (2, 4, 5, 6)}
DLIB_DISTANCE = 0.6  # dlib's own same-person rule on raw descriptors
TARGET_COSINE = 0.99
TARGET_AGREEMENT = 0.99
UNVERIFIED = "identity_distinctness_unverified"




@dataclass
class Face:
    image: str
    identity: str
    flags: tuple[str, ...]
    ann_box: np.ndarray
    det_box: np.ndarray
    det_iou: float
    passed: bool
    emb: dict[str, np.ndarray] = field(default_factory=dict)  # unit-length
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # dlib raw descriptors

    @property
    def name(self) -> str:
        """The identity, and for a clip's frame its frame number."""
        return f"{self.identity}@{self.image.rsplit('#', 1)[1]}" if "#" in self.image else self.identity


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def matched(ann: np.ndarray, det: np.ndarray) -> list[tuple[int, int, float]]:
    """(annotation index, detection index, IoU) of every detection the harness's label() gives an annotation
    (greedy, one to one, IoU >= LABEL_IOU: BlazeFace boxes are square and sit lower than the annotations')."""
    return [(j, i, float(iou(det[i], ann[j : j + 1])[0])) for i, j in enumerate(label_boxes(det, ann)) if j is not None]


def rect(box: np.ndarray) -> dlib.rectangle:
    import dlib

    x0, y0, x1, y1 = (round(float(v)) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


def collect(devset: Path) -> tuple[list[Face], list[str], FaceAnalyzer, dict[str, Embedder], dict]:
    import dlib
    import face_recognition_models

    ann = json.loads((devset / "annotations.json").read_text())["faces"]
    analyzer = FaceAnalyzer(VisionConfig(embedder_id=FLOAT))
    runtime = RuntimeConfig()
    embedders = {FLOAT: analyzer.embedder}
    for mid in (INT8, DYN):
        embedders[mid] = Embedder.from_manifest(analyzer.manifest, runtime, mid)
    # Same float32 model, input scaled by 1/256 (dlib's input_rgb_image and face-api.js) instead of
    # the manifest's 1/255: a diagnostic of the normalisation only.
    div256 = Embedder.from_manifest(analyzer.manifest, runtime, FLOAT)
    div256._scale = np.float32(1.0 / 256.0)
    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    faces: list[Face] = []
    problems: list[str] = []
    max_analyse_diff = 0.0
    by_image: dict[str, list[dict]] = {}
    for a in ann:
        by_image.setdefault(a["image"], []).append(a)
    sample: dict = {}
    for image, items in by_image.items():
        rgb = read_rgb(devset / image)
        dets = analyzer.detector.detect(rgb)
        abox = np.array([a["box"] for a in items], np.float64)
        dbox = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        pairs = matched(abox, dbox)
        for ai in sorted(set(range(len(items))) - {p[0] for p in pairs}):
            best = float(iou(abox[ai], dbox).max()) if len(dbox) else 0.0
            problems.append(f"{items[ai]['identity']}: no detection with IoU >= {LABEL_IOU} "
                            f"(best {best:.2f})")
        # the analyser's own path, to check that our per-stage reconstruction equals it
        analysed = analyzer.analyse(rgb, embed_all=True)
        via_analyse = {tuple(np.round(f.detection.box, 3)): f.embedding.copy() for f in analysed
                       if f.embedding is not None}
        for ai, di, ov in pairs:
            item, det = items[ai], dets[di]
            crop = analyzer.aligner.align(rgb, det).copy()
            quality = analyzer.gate.judge(det, crop)
            f = Face(image, item["identity"], tuple(item["flags"]), abox[ai], dbox[di], ov, quality.passed)
            for mid, emb in embedders.items():
                f.emb[mid] = emb.embed(crop).astype(np.float64)
            ref = via_analyse.get(tuple(np.round(det.box, 3)))
            if ref is not None:
                max_analyse_diff = max(max_analyse_diff, float(np.abs(ref - f.emb[FLOAT]).max()))
            for tag, box in (("dlib@det", dbox[di]), ("dlib@ann", abox[ai])):
                shape = sp(rgb, rect(box))
                f.raw[tag] = np.array(rec.compute_face_descriptor(rgb, shape), np.float64)
                f.emb[tag] = unit(f.raw[tag])
                if tag == "dlib@det":
                    chip = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
                    f.emb["f32@dlibchip"] = embedders[FLOAT].embed(chip).astype(np.float64)
                    f.emb["f32/256@dlibchip"] = div256.embed(chip).astype(np.float64)
                    if not sample:
                        sample = {"crop": crop, "rgb": rgb, "shape": shape}
            faces.append(f)
    problems.append(f"analyse() vs per-stage float32 embeddings: max |diff| {max_analyse_diff:.2e}")
    return faces, problems, analyzer, embedders, sample


def cos(a: Face, b: Face, key: str) -> float:
    return float(a.emb[key] @ b.emb[key])


def stats(values: list[float]) -> str:
    return f"mean {np.mean(values):.5f}  min {np.min(values):.5f}  (n={len(values)})"


def agreement(pairs: list[tuple[Face, Face]], same_a, same_b) -> tuple[float, int, list[str]]:
    flips = []
    for a, b in pairs:
        da, db = same_a(a, b), same_b(a, b)
        if da != db:
            flips.append(f"{a.name} ~ {b.name}")
    return 1 - len(flips) / len(pairs), len(flips), flips


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def short(key: str) -> str:
    return SHORT.get(key, key)


def thresholds_of(spec: ModelSpec) -> list[tuple[str, float]]:
    """The declared threshold, and the floor where it differs (an uncalibrated floor of 1.0 decides nothing)."""
    threshold, floor = float(spec.match_threshold or 0), float(spec.threshold_floor or 0)
    out = [("declared threshold", threshold)]
    if floor != threshold and floor < UNCALIBRATED_FLOOR:
        out.append(("floor", floor))
    return out


def report_fidelity(faces: list[Face], pairs: list[tuple[Face, Face]], reference: str, subjects: Sequence[str],
                    thresholds: Sequence[tuple[str, float]], held_out: set[str]) -> list[bool]:
    """Each subject's embeddings against the reference's on the same aligned crops: per-face cosine and
    same/different decisions over every pair. One PASS/MISS per target."""
    checks = []
    print(f"\n== Against {short(reference)} (same aligned crops), target mean cosine >= {TARGET_COSINE}")
    unseen = [f for f in faces if f.image not in held_out]
    for mid in subjects:
        for part, subset in (("all faces", faces), ("not in calibration photos", unseen)):
            c = [float(f.emb[mid] @ f.emb[reference]) for f in subset]
            ok = float(np.mean(c)) >= TARGET_COSINE
            checks.append(ok)
            print(f"  {short(mid):8s} {part:27s} cosine {stats(c)}  {verdict(ok)}")
    print(f"\n== Same/different decision agreement with {short(reference)} over all {len(pairs)} face pairs, "
          f"target >= {TARGET_AGREEMENT:.0%}")
    for mid in subjects:
        for name, t in thresholds:
            rate, n, flips = agreement(pairs, lambda a, b, t=t: cos(a, b, reference) >= t,
                                       lambda a, b, t=t, mid=mid: cos(a, b, mid) >= t)
            ok = rate >= TARGET_AGREEMENT
            checks.append(ok)
            called = [sum(cos(a, b, k) >= t for a, b in pairs) for k in (reference, mid)]
            n_same = sum(1 for a, b in pairs if a.identity == b.identity
                         and (cos(a, b, reference) >= t) != (cos(a, b, mid) >= t))
            print(f"  {short(mid):8s} at {name} {t:.3f}: {rate:.2%} ({n} flips, {n_same} of them same-person; "
                  f"pairs called same: {short(reference)} {called[0]}, {short(mid)} {called[1]})  {verdict(ok)}"
                  + (f"  flips: {', '.join(flips[:5])}" if flips else ""))
    return checks


def report_reference(faces: list[Face], pairs: list[tuple[Face, Face]], threshold: float) -> list[bool]:
    checks = []
    print("\n== Ours vs dlib C++ reference (cosine of L2-normalised embeddings, per face)")
    rows = (("float32 (our align) vs dlib, rect = our detection", FLOAT, "dlib@det"),
            ("float32 (our align) vs dlib, rect = annotation box", FLOAT, "dlib@ann"),
            ("int8 (our align) vs dlib, rect = our detection", INT8, "dlib@det"),
            ("dynint8 (our align) vs dlib, rect = our detection", DYN, "dlib@det"),
            ("dlib rect=detection vs dlib rect=annotation", "dlib@det", "dlib@ann"),
            ("float32 on dlib's own chip vs dlib  [model only]", "f32@dlibchip", "dlib@det"),
            ("same, input /256 instead of /255 [diagnostic]", "f32/256@dlibchip", "dlib@det"),
            ("float32 our align vs float32 on dlib chip [align only]", FLOAT, "f32@dlibchip"))
    for label, x, y in rows:
        c = [float(f.emb[x] @ f.emb[y]) for f in faces]
        worst = min(faces, key=lambda f, x=x, y=y: float(f.emb[x] @ f.emb[y]))
        print(f"  {label:56s} {stats(c)}  worst: {worst.identity}")
    print("  (the first rows mix alignment differences -- our 4-point BlazeFace template vs dlib's 5-point"
          " shape predictor chip -- with model differences)")

    def dlib_same(a: Face, b: Face) -> bool:
        return float(np.linalg.norm(a.raw["dlib@det"] - b.raw["dlib@det"])) < DLIB_DISTANCE

    # dlib's raw descriptors are not unit length: distance 0.6 between two vectors of norm r is
    # cosine 1 - 0.18 / r^2; r = median raw norm gives the cosine that best mirrors dlib's rule.
    norms = [float(np.linalg.norm(f.raw["dlib@det"])) for f in faces]
    r = float(np.median(norms))
    cos_equiv = 1 - DLIB_DISTANCE**2 / (2 * r * r)
    n_dlib_same = sum(dlib_same(a, b) for a, b in pairs)
    print(f"\n  dlib raw descriptor norms: min {min(norms):.3f} median {r:.3f} max {max(norms):.3f}; "
          f"dlib's rule calls {n_dlib_same}/{len(pairs)} pairs 'same'")
    print(f"\n== Decision agreement, ours vs dlib reference (dlib rule: Euclidean distance < {DLIB_DISTANCE} "
          f"on raw descriptors, rect = our detection), target >= {TARGET_AGREEMENT:.0%}")
    for mid in OURS:
        for name, t in (("operating threshold", threshold), ("dlib-equivalent cosine", cos_equiv)):
            rate, n, flips = agreement(pairs, lambda a, b, t=t, mid=mid: cos(a, b, mid) >= t, dlib_same)
            ok = rate >= TARGET_AGREEMENT
            if name == "operating threshold":
                checks.append(ok)
            print(f"  {SHORT[mid]:8s} at {name} {t:.3f}: {rate:.2%} ({n} flips)  {verdict(ok)}"
                  + (f"  e.g. {', '.join(flips[:3])}" if flips else ""))
    print(f"  same rule on both sides (cosine >= {threshold} for ours and for dlib's normalised descriptor),"
          " isolating the embeddings from the rule [informative]:")
    for mid in OURS:
        rate, n, flips = agreement(pairs, lambda a, b, mid=mid: cos(a, b, mid) >= threshold,
                                   lambda a, b: cos(a, b, "dlib@det") >= threshold)
        print(f"  {SHORT[mid]:8s} {rate:.2%} ({n} flips)  {verdict(rate >= TARGET_AGREEMENT)}"
              + (f"  e.g. {', '.join(flips[:3])}" if flips else ""))
    return checks


def report_separation(faces: list[Face], pairs: list[tuple[Face, Face]], threshold: float,
                      floor: float) -> None:
    same = [(a, b) for a, b in pairs if a.identity == b.identity]
    diff = [(a, b) for a, b in pairs if a.identity != b.identity
            and not (UNVERIFIED in a.flags and UNVERIFIED in b.flags)]
    n_unv = sum(1 for a, b in pairs if UNVERIFIED in a.flags and UNVERIFIED in b.flags)
    print(f"\n== Same-person vs different-person scores (cosine; operating threshold {threshold}, "
          f"floor {floor})")
    print(f"  same-person pairs: {len(same)}; different-person pairs: {len(diff)} "
          f"({n_unv} pairs with both faces flagged {UNVERIFIED} excluded)")
    keys = (*OURS, "dlib@det")
    for key in keys:
        s = [cos(a, b, key) for a, b in same]
        ranked = sorted(diff, key=lambda p, key=key: -cos(p[0], p[1], key))
        top = ranked[0]
        name = SHORT.get(key, "dlib ref")
        extra = ""
        if key == "dlib@det":
            dist = [float(np.linalg.norm(a.raw[key] - b.raw[key])) for a, b in same]
            dmin = min(float(np.linalg.norm(a.raw[key] - b.raw[key])) for a, b in diff)
            extra = f"  [distance: same {', '.join(f'{d:.3f}' for d in dist)}; min different {dmin:.3f}]"
        print(f"  {name:8s} same: {', '.join(f'{x:.4f}' for x in s)}  | max different: "
              f"{cos(*top, key):.4f} ({top[0].identity} ~ {top[1].identity}){extra}")
        if key in OURS:
            miss = sum(1 for x in s if x < threshold)
            fa = sum(1 for a, b in diff if cos(a, b, key) >= floor)
            print(f"           same-person pairs below operating threshold: {miss}/{len(s)};"
                  f" different-person pairs at/above floor: {fa}")
    flagged = [(a, b) for a, b in diff if any(fl.startswith("may_equal") for fl in (*a.flags, *b.flags))]
    if flagged:
        top = max(flagged, key=lambda p: cos(p[0], p[1], FLOAT))
        print(f"  (pairs involving a 'may_equal_*' flag are kept above; highest float32: "
              f"{cos(*top, FLOAT):.4f} {top[0].identity} ~ {top[1].identity})")


def interleaved(fns: dict[str, Callable[[], object]], base: str, rounds: int,
                reps: int) -> tuple[dict[str, list[float]], list[float]]:
    """Each round times every fn (median of `reps` calls), a different one first each round, so a noisy shared
    machine does not bias one. Returns each fn's per-round ratio to `base`, and base's seconds per round."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    base_s = []
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        t = {k: median_seconds(fns[k], reps) for k in order}
        base_s.append(t[base])
        for k in names:
            ratios[k].append(t[k] / t[base])
    return ratios, base_s


def print_ratios(ratios: dict[str, list[float]], base_s: list[float]) -> None:
    """Median of the per-round ratios, its IQR, and the ms it means at the base's median."""
    base_ms = statistics.median(base_s) * 1e3
    for k, rs in ratios.items():
        q = np.percentile(rs, [25, 75])
        med = statistics.median(rs)
        print(f"  {k:24s} {med:.3f}x  (IQR {q[0]:.3f}-{q[1]:.3f}; ~{med * base_ms:.2f} ms)")


def report_latency(embedders: dict[str, Embedder], sample: dict, rounds: int = 15, reps: int = 8) -> None:
    import dlib
    import face_recognition_models

    crop = sample["crop"]
    rec = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    out = np.empty(128, np.float32)

    fns: dict[str, Callable[[], object]] = {SHORT[m]: (lambda e=e: e.embed_into(crop, out))
                                            for m, e in embedders.items()}
    fns["dlib C++ ref"] = lambda: rec.compute_face_descriptor(sample["rgb"], sample["shape"])
    ratios, base_s = interleaved(fns, "float32", rounds, reps)
    print(f"\n== Embedder invoke latency, interleaved, {rounds} rounds x {reps} calls, ratio to float32 "
          f"(median of per-round ratios; float32 median {statistics.median(base_s) * 1e3:.2f} ms on this machine)")
    print_ratios(ratios, base_s)
    print("  (ours: RuntimeConfig() = XNNPACK, 2 threads; dlib ref includes its chip extraction and "
          "runs with its own threading)")


class FidelityError(Exception):
    """The embedders named cannot be compared; the message names the model and the MANIFEST.json field."""


@dataclass(frozen=True)
class Comparison:
    """The embedder under test, the float model it is checked against (itself, if it is float), and dlib int8,
    the default, which its time per face is measured against."""

    subject: ModelSpec
    reference: ModelSpec
    baseline: ModelSpec

    @property
    def ids(self) -> list[str]:
        """Each model once: subject, reference, baseline."""
        return list(dict.fromkeys((self.subject.id, self.reference.id, self.baseline.id)))


def embedder_spec(manifest: ModelManifest, model_id: str) -> ModelSpec:
    spec = manifest.spec(model_id)
    if spec.role != "embedder":
        raise FidelityError(f"{manifest.directory / 'MANIFEST.json'}: models.{model_id}.role is {spec.role!r}, "
                            "not an embedder")
    return spec


def float_reference(manifest: ModelManifest, subject: ModelSpec) -> ModelSpec:
    """The float32 embedder of the same weights: the same source files (registry, name, version, path, sha256)
    in MANIFEST.json. A float32 embedder is its own reference."""
    if subject.variant == "float32":
        return subject
    where = manifest.directory / "MANIFEST.json"
    if not subject.source:
        raise FidelityError(f"{where}: models.{subject.id}.source is empty, so no float model of the same "
                            "weights can be found: name it with --float ID")
    found = [s for s in manifest.models.values()
             if s.role == "embedder" and s.variant == "float32" and s.source == subject.source]
    if len(found) != 1:
        which = ", ".join(s.id for s in found) or "none"
        raise FidelityError(f"{where}: {len(found)} float32 embedders share models.{subject.id}.source "
                            f"({which}): name the float model with --float ID")
    return found[0]


def check_comparable(manifest: ModelManifest, subject: ModelSpec, reference: ModelSpec) -> None:
    """A float reference must see the same aligned faces and give vectors of the same kind."""
    for name, a, b in (("alignment", subject.alignment, reference.alignment),
                       ("embedding_size", subject.embedding_size, reference.embedding_size),
                       ("output.normalisation", subject.normalisation, reference.normalisation),
                       ("metric", subject.metric, reference.metric)):
        if a != b:
            raise FidelityError(f"{manifest.directory / 'MANIFEST.json'}: models.{subject.id}.{name} ({a}) differs "
                                f"from models.{reference.id}.{name} ({b}): {reference.id} cannot be its float "
                                "reference")


@dataclass(frozen=True)
class TimedFace:
    """One devset frame and detection, aligned and embedded by each model in turn to time it."""

    rgb: np.ndarray
    detection: Detection


class AlignedModels:
    """Each model's embedder and aligner, so one detection gives each model the crop its template declares."""

    def __init__(self, manifest: ModelManifest, ids: Sequence[str], runtime: RuntimeConfig):
        self.embedders = {mid: Embedder.from_manifest(manifest, runtime, mid) for mid in ids}
        self.aligners = {mid: Aligner(e.spec.alignment) for mid, e in self.embedders.items()
                         if e.spec.alignment is not None}

    def embed(self, rgb: np.ndarray, det: Detection, face: Face) -> np.ndarray:
        """Fill face.emb for every model; returns the first model's crop (the gate judges it)."""
        first = None
        for mid, embedder in self.embedders.items():
            crop = self.aligners[mid].align(rgb, det)
            first = crop.copy() if first is None else first
            face.emb[mid] = embedder.embed(crop).astype(np.float64)
        assert first is not None
        return first

    def release(self) -> None:
        for e in self.embedders.values():
            e.release()
        for al in self.aligners.values():
            al.release()


def clip_frames(root: Path, clip: LabelledClip, every: int) -> Iterator[tuple[int, np.ndarray]]:
    """Every `every`-th frame of a clip that shows its person, decoded one at a time (RGB)."""
    cap = cv2.VideoCapture(str(root / clip.path))
    if not cap.isOpened():
        raise FidelityError(f"{root / clip.path}: not a video this bench can decode")
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            if clip.holds(i) and i % every == 0:
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


def collect_aligned(devset: Path, manifest: ModelManifest, cmp: Comparison, runtime: RuntimeConfig,
                    clip_every: int) -> tuple[list[Face], list[str], TimedFace]:
    """Every annotated devset face matched to a detection, and every `clip_every`-th frame of each clip's person
    (its largest detection, as the harness labels it), embedded by each model of `cmp` on the crop its own
    template gives (the subject's and the reference's are the same: check_comparable). The clip's frames add
    same-person pairs of a turning head, whose scores straddle the threshold."""
    labelled = load_labelled_set(devset)
    detector = FaceDetector(manifest, runtime, DetectorConfig())
    gate = QualityGate(QualityConfig())
    models = AlignedModels(manifest, cmp.ids, runtime)
    faces: list[Face] = []
    problems: list[str] = []
    timed: TimedFace | None = None
    try:
        for image in labelled.images():
            items = labelled.faces_in(image)
            rgb = read_rgb(devset / image)
            dets = detector.detect(rgb)
            abox = np.array([f.box for f in items], np.float64)
            dbox = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
            pairs = matched(abox, dbox)
            for ai in sorted(set(range(len(items))) - {p[0] for p in pairs}):
                problems.append(f"{items[ai].identity} ({image}): no detection with IoU >= {LABEL_IOU}")
            for ai, di, ov in pairs:
                f = Face(image, items[ai].identity, items[ai].flags, abox[ai], dbox[di], ov, False)
                f.passed = gate.judge(dets[di], models.embed(rgb, dets[di], f)).passed
                faces.append(f)
                timed = timed or TimedFace(rgb, dets[di])
        for clip in labelled.clips:
            for i, rgb in clip_frames(devset, clip, clip_every):
                dets = sorted(detector.detect(rgb), key=lambda d: -d.width * d.height)
                if not dets:
                    problems.append(f"{clip.path} frame {i}: its person is not detected")
                    continue
                box = np.array(dets[0].box, np.float64)
                f = Face(f"{clip.path}#{i}", clip.identity, (), box, box, 1.0, False)
                f.passed = gate.judge(dets[0], models.embed(rgb, dets[0], f)).passed
                faces.append(f)
    finally:
        models.release()
        gate.release()
        detector.release()
    if timed is None:
        raise FidelityError(f"{devset}: no annotated face was detected; nothing to compare")
    return faces, problems, timed


def report_speed(manifest: ModelManifest, cmp: Comparison, runtime: RuntimeConfig, timed: TimedFace,
                 rounds: int, reps: int) -> None:
    """Time per face (align + embed, what the node pays per face for its embedder) of each model, interleaved,
    as a ratio to dlib int8."""
    fns: dict[str, Callable[[], object]] = {}
    for mid in cmp.ids:
        embedder = Embedder.from_manifest(manifest, runtime, mid)
        assert embedder.spec.alignment is not None  # an embedder: collect_aligned built the same
        aligner = Aligner(embedder.spec.alignment)
        out = np.empty(embedder.dim, np.float32)
        fns[mid] = lambda e=embedder, al=aligner, out=out: e.embed_into(al.align(timed.rgb, timed.detection), out)
    ratios, base_s = interleaved(fns, cmp.baseline.id, rounds, reps)
    print(f"\n== Time per face (align + embed), interleaved, {rounds} rounds x {reps} calls, ratio to "
          f"{cmp.baseline.id} (median of per-round ratios; {statistics.median(base_s) * 1e3:.2f} ms per face "
          f"on this machine, {runtime.num_threads} threads)")
    print_ratios(ratios, base_s)


def run_generic(args: argparse.Namespace, devset: Path) -> int:
    """--embedder ID: the fidelity of any declared embedder against its float model, and its time per face."""
    t0 = time.perf_counter()
    manifest = load_manifest(args.models_dir)
    subject = embedder_spec(manifest, args.embedder)
    reference = embedder_spec(manifest, args.float_id) if args.float_id else float_reference(manifest, subject)
    check_comparable(manifest, subject, reference)
    cmp = Comparison(subject, reference, embedder_spec(manifest, INT8))
    runtime = RuntimeConfig()
    faces, problems, timed = collect_aligned(devset, manifest, cmp, runtime, args.clip_every)
    pairs = list(itertools.combinations(faces, 2))
    for spec, role in ((subject, "embedder"), (reference, "float reference"), (cmp.baseline, "timed against")):
        print(f"{role:16s} {spec.id} ({spec.variant}, {spec.file}, sha256 {spec.sha256[:12]}), threshold "
              f"{spec.match_threshold}, floor {spec.threshold_floor}")
    n_clip = sum(f.identity.startswith("clip:") for f in faces)
    print(f"devset {devset}: {len(faces) - n_clip} photo faces matched to a detection (IoU >= {LABEL_IOU}) and "
          f"{n_clip} clip frames (every {args.clip_every}th), "
          f"{sum(f.passed for f in faces)} pass the quality gate; {len(pairs)} pairs "
          f"({sum(a.identity == b.identity for a, b in pairs)} of one identity)")
    for p in problems:
        print(f"  note: {p}")
    checks: list[bool] = []
    if reference.id == subject.id:
        print(f"\n{subject.id} is a float32 model, its own reference: no fidelity check, time only")
    else:
        held_out = set(args.calibration_photos)
        checks = report_fidelity(faces, pairs, reference.id, (subject.id,), thresholds_of(subject), held_out)
    report_speed(manifest, cmp, runtime, timed, args.rounds, args.reps)
    met = f"{sum(checks)}/{len(checks)} targets met" if checks else "a float model: time only"
    print(f"\nOVERALL: {verdict(all(checks))} ({met}); {time.perf_counter() - t0:.0f} s")
    return 0 if all(checks) else 1


def run_dlib(devset: Path) -> int:
    """The dlib files against each other and against dlib's C++ pipeline."""
    t0 = time.perf_counter()
    faces, problems, analyzer, embedders, sample = collect(devset)
    spec = analyzer.embedder_spec
    threshold, floor = float(spec.match_threshold or 0), float(spec.threshold_floor or 0)
    pairs = list(itertools.combinations(faces, 2))
    n_ann = len(json.loads((devset / "annotations.json").read_text())["faces"])
    print(f"devset {devset}: {n_ann} annotated faces, {len(faces)} matched to a detection "
          f"(IoU >= {LABEL_IOU}; median IoU {np.median([f.det_iou for f in faces]):.2f}), "
          f"{sum(f.passed for f in faces)} pass the quality gate; {len(pairs)} pairs")
    for p in problems:
        print(f"  note: {p}")
    checks = report_fidelity(faces, pairs, FLOAT, (INT8, DYN),
                             (("operating threshold", threshold), ("floor", floor)), CALIBRATION)
    checks += report_reference(faces, pairs, threshold)
    report_separation(faces, pairs, threshold, floor)
    report_latency(embedders, sample)
    print(f"\nOVERALL: {verdict(all(checks))} ({sum(checks)}/{len(checks)} targets met); "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedder", help="generic mode: this declared embedder against its float model")
    ap.add_argument("--float", dest="float_id",
                    help="the float model to check against (default: MANIFEST.json's float32 of the same weights)")
    ap.add_argument("--models-dir", type=Path, help="the models directory (default: the node's)")
    ap.add_argument("--calibration-photos", nargs="*", default=sorted(CALIBRATION),
                    help="devset photos the quantiser was calibrated on, also reported apart (default: "
                         "models/build.sh's)")
    ap.add_argument("--clip-every", type=int, default=16, help="every n-th frame of each clip's person (16)")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds (15)")
    ap.add_argument("--reps", type=int, default=8, help="faces timed per model and round (8)")
    args = ap.parse_args(argv)
    if args.embedder is None and (args.float_id or args.models_dir):
        ap.error("--float and --models-dir go with --embedder")
    for name in ("clip_every", "rounds", "reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a whole number >= 1")
    devset = require_devset()
    if devset is None:
        return 2
    if args.embedder is None:
        return run_dlib(devset)
    try:
        return run_generic(args, devset)
    except (FidelityError, DatasetError, ModelManifestError, ModelIntegrityError, ModelLoadError) as exc:
        print(f"fidelity: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
