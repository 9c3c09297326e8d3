"""The quality gate's sharpness test and the embedder's alignment template, measured on the devset.

1. Sharpness (`--part gate`). Every devset face that passes the gate's size, score and pose tests (stills
   plus every `--stride`-th frame of the clip) is aligned as the node aligns it, then altered:
   - kept sharp: as is, brightness x0.5 and x0.25, gamma 0.5 and 2.0 (at the embedder input);
   - blurred: Gaussian sigma 2 and 3 at the embedder input (also darkened), and motion blur of 7, 9 and
     13 px at the embedder input in three directions, applied to the frame before alignment (a camera
     integrates motion before the image is sampled; the crop then samples it as the node does).
   For the previous test (variance of the Laplacian >= 25), for candidate normalisations and for the gate's
   own `QualityGate.sharpness`, it prints how many faces each alteration leaves refused or passed, the
   threshold the data suggests (geometric mean of the lowest sharp and the highest blurred value), and
   what each alteration does to the int8 embedding (cosine to the unaltered face's). Then the same faces
   shrunk to 40 / 56 / 80 px in the frame: how many the sharpness test refuses.
2. Alignment (`--part align`, needs the `bench` extra: dlib-bin, face_recognition_models). For each face,
   dlib's 5-point shape predictor (rectangle = our detection) and dlib's own face chip (get_face_chip,
   150 px, padding 0.25); the chip's image-to-chip transform maps BlazeFace's four points into the chip.
   The fitted template is the mean of those mapped points (least squares), and is also fitted with each
   source (photo, or the whole clip) left out and evaluated on it. For the previous template, the
   leave-one-out fit and the full fit: cosine of our crop's embedding to the embedding of dlib's chip
   (float32 isolates the alignment; int8 is what the node runs), and same/different-person scores.

usage: python3 bench/gate_and_alignment.py [--part gate|align|all] [--stride 8]    (~2 min)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from common import require_devset

from edge.vision.align import Aligner, alignment_points
from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import Detection, iou
from edge.vision.embed import Embedder
from edge.vision.manifest import AlignmentSpec
from edge.vision.quality import QualityGate

CLIP = "videos/WolfgangLanger_Pexels.mp4"
CLIP_IDENTITY = "clip:WolfgangLanger_Pexels"
MATCH_IOU = 0.3  # as bench/fidelity.py: BlazeFace boxes sit lower than the annotations'
UNVERIFIED = "identity_distinctness_unverified"
PREVIOUS_MIN_LAPLACIAN_VAR = 25.0  # the gate's test before issue 13: variance of the Laplacian >= 25
# The template before issue 13: dlib's mean-face positions of the four points (write_manifest.py's history).
PREVIOUS_TEMPLATE = ((47.6, 46.6), (100.5, 46.6), (74.0, 76.6), (74.0, 105.4))
FLOAT, INT8 = "dlib-resnet-v1-float32", "dlib-resnet-v1-int8"
SMALL_FACES_PX = (40, 56, 80)

Alteration = Callable[[np.ndarray], np.ndarray]


@dataclass
class Face:
    source: str  # image path, or the clip
    identity: str
    flags: tuple[str, ...]
    frame: np.ndarray  # RGB, shared by the faces of one image
    det: Detection
    crop: np.ndarray  # aligned as the node aligns it (the manifest's template)
    scale: float  # crop px per frame px


# ---------------------------------------------------------------- collection

def match_annotations(ann: list[dict], dets: list[Detection]) -> list[tuple[dict, Detection]]:
    """Greedy one-to-one pairing by descending IoU (>= MATCH_IOU)."""
    if not ann or not dets:
        return []
    m = np.stack([iou(np.array(a["box"], np.float64), np.array([d.box for d in dets], np.float64))
                  for a in ann])
    out = []
    while m.size and m.max() >= MATCH_IOU:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        out.append((ann[int(i)], dets[int(j)]))
        m[i, :] = -1
        m[:, j] = -1
    return out


def usable(analyzer: FaceAnalyzer, frame: np.ndarray, det: Detection) -> bool:
    """Passes every gate test but sharpness (the one under study)."""
    q = analyzer.gate.judge(det, analyzer.aligner.align(frame, det))
    return set(q.reasons) <= {"blurred"}


def make_face(analyzer: FaceAnalyzer, source: str, identity: str, flags: tuple[str, ...], frame: np.ndarray,
              det: Detection) -> Face:
    m = analyzer.aligner.matrix(det)
    return Face(source, identity, flags, frame, det, analyzer.aligner.align(frame, det).copy(),
                float(math.hypot(m[0, 0], m[0, 1])))


def collect(devset: Path, analyzer: FaceAnalyzer, stride: int) -> list[Face]:
    ann = json.loads((devset / "annotations.json").read_text())
    faces = []
    by_image: dict[str, list[dict]] = {}
    for a in ann["faces"]:
        by_image.setdefault(a["image"], []).append(a)
    for image, items in sorted(by_image.items()):
        frame = read_rgb(devset / image)
        for a, det in match_annotations(items, analyzer.detector.detect(frame)):
            if usable(analyzer, frame, det):
                faces.append(make_face(analyzer, image, a["identity"], tuple(a["flags"]), frame, det))
    (first, last), = ann["videos"][CLIP]
    cap = cv2.VideoCapture(str(devset / CLIP))
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if first <= i <= last and i % stride == 0:
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets = sorted(analyzer.detector.detect(frame), key=lambda d: -d.width * d.height)
            if dets and usable(analyzer, frame, dets[0]):
                faces.append(make_face(analyzer, CLIP, CLIP_IDENTITY, (), frame, dets[0]))
        i += 1
    cap.release()
    return faces


# ---------------------------------------------------------------- part 1: sharpness

def brightness(k: float) -> Alteration:
    return lambda c: np.clip(c.astype(np.float32) * k + 0.5, 0, 255).astype(np.uint8)


def gamma(g: float) -> Alteration:
    lut = np.clip(255 * (np.arange(256) / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)
    return lambda c: lut[c]


def gaussian(sigma: float, then: Alteration | None = None) -> Alteration:
    def f(c: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(c, (0, 0), sigma)
        return then(out) if then else out
    return f


def motion_kernel(length: float, degrees: float) -> np.ndarray:
    """A line of `length` px (fractional ends weighted), rotated; sums to 1."""
    n = 2 * math.ceil(length / 2) + 3
    k = np.zeros((n, n), np.float32)
    c = n // 2
    half = length / 2
    for x in range(n):
        k[c, x] = float(np.clip(half + 0.5 - abs(x - c), 0, 1))
    rot = cv2.getRotationMatrix2D((c, c), degrees, 1.0)
    k = cv2.warpAffine(k, rot, (n, n), flags=cv2.INTER_LINEAR)
    return k / k.sum()


def motion_in_frame(analyzer: FaceAnalyzer, face: Face, length: float, degrees: float) -> np.ndarray:
    """Motion blur of `length` px *at the embedder input*, applied to the frame, then aligned."""
    kernel = motion_kernel(length / face.scale, degrees)
    x0, y0, x1, y1 = face.det.box
    w, h = x1 - x0, y1 - y0
    fh, fw = face.frame.shape[:2]
    rx0, ry0 = max(0, int(x0 - w)), max(0, int(y0 - h))
    rx1, ry1 = min(fw, int(x1 + w) + 1), min(fh, int(y1 + h) + 1)
    frame = face.frame.copy()
    frame[ry0:ry1, rx0:rx1] = cv2.filter2D(face.frame[ry0:ry1, rx0:rx1], -1, kernel)
    return analyzer.aligner.align(frame, face.det).copy()


def grey(c: np.ndarray) -> np.ndarray:
    g: np.ndarray = cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return g


def laplacian_var(c: np.ndarray) -> float:
    """The previous test."""
    return float(cv2.Laplacian(grey(c), cv2.CV_32F).var())


def local_var(g: np.ndarray, sigma: float = 4.0) -> float:
    mu = cv2.GaussianBlur(g, (0, 0), sigma)
    return float((cv2.GaussianBlur(g * g, (0, 0), sigma) - mu * mu).mean())


def laplacian_over_global(c: np.ndarray) -> float:
    g = grey(c)
    return 1000 * float(cv2.Laplacian(g, cv2.CV_32F).var()) / (float(g.var()) + 1)


def laplacian_over_local(c: np.ndarray) -> float:
    g = grey(c)
    return 1000 * float((cv2.Laplacian(g, cv2.CV_32F) ** 2).mean()) / (local_var(g) + 1)


def weakest_direction(g: np.ndarray) -> float:
    lx = np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]], np.float32)
    ld = np.array([[0, 0, 1], [0, -2, 0], [1, 0, 0]], np.float32) / 2
    return min(float((cv2.filter2D(g, cv2.CV_32F, k) ** 2).mean()) for k in (lx, lx.T, ld, ld[:, ::-1]))


def directional_over_global(c: np.ndarray) -> float:
    g = grey(c)
    return 1000 * weakest_direction(g) / (float(g.var()) + 1)


def directional_over_local(c: np.ndarray) -> float:
    """The gate's measure without taking off the 8-bit rounding energy."""
    g = grey(c)
    return 1000 * weakest_direction(g) / (local_var(g) + 1)


def report_gate(analyzer: FaceAnalyzer, faces: list[Face]) -> None:
    gate: QualityGate = analyzer.gate
    threshold = gate.config.min_sharpness
    sharp_alts: dict[str, Alteration] = {
        "as is": lambda c: c, "brightness x0.5": brightness(0.5), "brightness x0.25": brightness(0.25),
        "gamma 0.5": gamma(0.5), "gamma 2.0": gamma(2.0)}
    blur_alts: dict[str, Alteration] = {
        "gauss 2": gaussian(2), "gauss 3": gaussian(3), "gauss 2, x0.5": gaussian(2, brightness(0.5)),
        "gauss 2, x0.25": gaussian(2, brightness(0.25)), "gauss 3, x0.25": gaussian(3, brightness(0.25))}
    motions = [(length, deg) for length in (7, 9, 13) for deg in (0, 45, 90)]
    crops: dict[str, list[np.ndarray]] = {}
    for name, fn in sharp_alts.items():
        crops[name] = [fn(f.crop) for f in faces]
    for name, fn in blur_alts.items():
        crops[name] = [fn(f.crop) for f in faces]
    for length, deg in motions:
        crops[f"motion {length} @{deg}"] = [motion_in_frame(analyzer, f, length, deg) for f in faces]
    sharp_names = list(sharp_alts)
    blur_names = [n for n in crops if n not in sharp_alts]

    measures: dict[str, Callable[[np.ndarray], float]] = {
        "var(Laplacian) [previous]": laplacian_var,
        "var(Laplacian) / var(grey)": laplacian_over_global,
        "mean Laplacian^2 / local var": laplacian_over_local,
        "weakest direction / var(grey)": directional_over_global,
        "weakest direction / local var, rounding kept": directional_over_local,
        "weakest direction / local var [gate]": gate.sharpness,
    }
    values = {m: {n: np.array([fn(c) for c in cs]) for n, cs in crops.items()} for m, fn in measures.items()}
    n = len(faces)
    print(f"\n== Sharpness: {n} faces passing size/score/pose ({sum(f.source != CLIP for f in faces)} "
          f"stills, {sum(f.source == CLIP for f in faces)} clip frames); each altered as listed")
    print("  candidate measures: lowest value over kept-sharp faces vs highest over blurred ones")
    for m, v in values.items():
        lo = min(v[k].min() for k in sharp_names)
        hi = max(v[k].max() for k in blur_names)
        worst = max(blur_names, key=lambda k, v=v: v[k].max())
        print(f"  {m:44s} sharp min {lo:9.3f}  blurred max {hi:9.3f} ({worst})  ratio {lo / hi:5.2f}"
              + (f"  suggests threshold {math.sqrt(lo * hi):.2f}" if lo > hi else "  (overlap)"))
    old, new = values["var(Laplacian) [previous]"], values["weakest direction / local var [gate]"]
    emb = analyzer.embedder
    ref = [emb.embed(f.crop) for f in faces]
    print(f"\n  per alteration: refused as blurred by the previous test (var(L) < {PREVIOUS_MIN_LAPLACIAN_VAR:g})"
          f" and by the gate now (sharpness < {threshold:g}), of {n}; int8 embedding cosine to the unaltered face")
    for name in crops:
        cos = [float(emb.embed(c) @ r) for c, r in zip(crops[name], ref, strict=True)]
        kind = "sharp  " if name in sharp_alts else "blurred"
        print(f"  {kind} {name:17s} previous {int((old[name] < PREVIOUS_MIN_LAPLACIAN_VAR).sum()):3d}   "
              f"now {int((new[name] < threshold).sum()):3d}   (now: min {new[name].min():7.2f} max "
              f"{new[name].max():7.2f})   cosine mean {np.mean(cos):.4f} min {np.min(cos):.4f}")
    stills = [f for f in faces if f.source != CLIP]
    print(f"\n  the {len(stills)} still faces shrunk in the frame (INTER_AREA) so that the detection box is:")
    for px in SMALL_FACES_PX:
        o, w = [], []
        for f in stills:
            k = px / min(f.det.width, f.det.height)
            small = cv2.resize(f.frame, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
            crop = analyzer.aligner.align(small, Detection(f.det.box * k, f.det.keypoints * k, f.det.score))
            o.append(laplacian_var(crop))
            w.append(gate.sharpness(crop))
        print(f"  {px:3d} px: refused as blurred: previous {sum(x < PREVIOUS_MIN_LAPLACIAN_VAR for x in o):2d}, "
              f"now {sum(x < threshold for x in w):2d} of {len(stills)}   (now: min {min(w):.2f}, "
              f"median {float(np.median(w)):.2f})")
    t = _median_ms(lambda: gate.sharpness(faces[0].crop))
    t_old = _median_ms(lambda: laplacian_var(faces[0].crop))
    print(f"\n  cost per face: gate.sharpness {t:.2f} ms, previous var(Laplacian) {t_old:.2f} ms (same run)")


def _median_ms(fn: Callable[[], object], reps: int = 200) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


# ---------------------------------------------------------------- part 2: alignment

def dlib_chip_matrix(details: object) -> np.ndarray:
    """Image -> chip affine map of a dlib chip_details (dlib's get_mapping_to_chip)."""
    r = details.rect  # type: ignore[attr-defined]
    left, top, right, bottom = r.left(), r.top(), r.right(), r.bottom()
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    a = details.angle  # type: ignore[attr-defined]
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    src = np.array([rot @ (np.array(p, np.float64) - centre) + centre
                    for p in ((left, top), (right, top), (right, bottom))], np.float32)
    cols, rows = details.cols, details.rows  # type: ignore[attr-defined]
    dst = np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1]], np.float32)
    m: np.ndarray = cv2.getAffineTransform(src, dst).astype(np.float64)
    return m


def separation(emb: list[np.ndarray], faces: list[Face], threshold: float, floor: float) -> str:
    same, diff = [], []
    for (a, ea), (b, eb) in itertools.combinations(zip(faces, emb, strict=True), 2):
        s = float(ea @ eb)
        if a.identity == b.identity:
            same.append(s)
        elif not (UNVERIFIED in a.flags and UNVERIFIED in b.flags):
            diff.append(s)
    s, d = np.array(same), np.array(diff)
    top = d.max()
    gap = (s.mean() - d.mean()) / math.sqrt((s.var() + d.var()) / 2)
    return (f"same {len(s)}: min {s.min():.4f} mean {s.mean():.4f}, < {threshold}: {int((s < threshold).sum())}"
            f" | different {len(d)}: max {top:.4f} p99 {np.percentile(d, 99):.4f}, >= floor {floor}: "
            f"{int((d >= floor).sum())} | same lost above every different pair: {np.mean(s <= top):.1%}"
            f" | gap (mean same - mean different) / pooled sd {gap:.2f}")


def report_alignment(analyzer: FaceAnalyzer, faces: list[Face]) -> tuple[tuple[float, float], ...]:
    import dlib
    import face_recognition_models

    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    floats = Embedder.from_manifest(analyzer.manifest, analyzer.config.runtime, FLOAT)
    int8 = Embedder.from_manifest(analyzer.manifest, analyzer.config.runtime, INT8)
    spec = analyzer.manifest.spec(INT8)
    threshold, floor = float(spec.match_threshold or 0), float(spec.threshold_floor or 0)
    mapped, chip_f, chip_i, exact_f = [], [], [], []
    for f in faces:
        x0, y0, x1, y1 = (round(float(v)) for v in f.det.box)
        shape = sp(f.frame, dlib.rectangle(x0, y0, x1, y1))
        m = dlib_chip_matrix(dlib.get_face_chip_details(shape, size=150, padding=0.25))
        pts = alignment_points(f.det)
        mapped.append(pts @ m[:, :2].T + m[:, 2])
        chip = dlib.get_face_chip(f.frame, shape, size=150, padding=0.25)
        chip_f.append(floats.embed(chip))
        chip_i.append(int8.embed(chip))
        ours_exact = cv2.warpAffine(f.frame, m, (150, 150), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
        exact_f.append(floats.embed(ours_exact))
    pts_all = np.stack(mapped)  # faces x 4 x 2, BlazeFace points in dlib's chip
    fitted = pts_all.mean(0)
    sources = sorted({f.source for f in faces})
    loo = {s: pts_all[[f.source != s for f in faces]].mean(0) for s in sources}
    print(f"\n== Alignment: {len(faces)} faces; BlazeFace's points mapped into dlib's own chip (dlib's 5-point"
          " shape, rectangle = our detection)")
    print("  point            previous template   fitted (mean)    sd over faces")
    for i, name in enumerate(("image-left eye", "image-right eye", "nose tip", "mouth centre")):
        sd = pts_all[:, i].std(0)
        print(f"  {name:16s} ({PREVIOUS_TEMPLATE[i][0]:5.1f}, {PREVIOUS_TEMPLATE[i][1]:5.1f})   "
              f"({fitted[i, 0]:5.1f}, {fitted[i, 1]:5.1f})   ({sd[0]:.1f}, {sd[1]:.1f})")
    c = [float(a @ b) for a, b in zip(exact_f, chip_f, strict=True)]
    print(f"  dlib's own transform, our resampling (cv2 bilinear) vs dlib's chip, float32: cosine mean {np.mean(c):.4f}"
          f" min {np.min(c):.4f}  [resampling only]")
    rounded = tuple((round(float(x), 1), round(float(y), 1)) for x, y in fitted)
    templates: dict[str, Callable[[Face], tuple[tuple[float, float], ...]]] = {
        "previous": lambda f: PREVIOUS_TEMPLATE,
        "fitted, source left out": lambda f: tuple(map(tuple, loo[f.source])),  # type: ignore[arg-type]
        "fitted on all (shipped)": lambda f: rounded,
    }
    print(f"\n  per template: cosine of our crop's embedding to dlib chip's (float32 / int8); int8 scores "
          f"(threshold {threshold}, floor {floor}; pairs of two unverified faces left out)")
    for name, tmpl in templates.items():
        ef, ei = [], []
        for f in faces:
            aligner = Aligner(AlignmentSpec(size=150, template=tmpl(f)))
            crop = aligner.align(f.frame, f.det)
            ef.append(floats.embed(crop))
            ei.append(int8.embed(crop))
        cf = [float(a @ b) for a, b in zip(ef, chip_f, strict=True)]
        ci = [float(a @ b) for a, b in zip(ei, chip_i, strict=True)]
        worst = faces[int(np.argmin(cf))]
        print(f"  {name:25s} vs dlib chip: float32 mean {np.mean(cf):.4f} min {np.min(cf):.4f} ({worst.identity}); "
              f"int8 mean {np.mean(ci):.4f} min {np.min(ci):.4f}")
        print(f"  {'':25s} {separation(ei, faces, threshold, floor)}")
        stills = [i for i, f in enumerate(faces) if f.source != CLIP]
        still_scores = separation([ei[i] for i in stills], [faces[i] for i in stills], threshold, floor)
        print(f"  {'':25s} stills only: {still_scores}")
    print(f"  (reference) dlib's chip, int8:      {separation(chip_i, faces, threshold, floor)}")
    print(f"\n  template to ship (models/tools/write_manifest.py DLIB_TEMPLATE): {[list(p) for p in rounded]}")
    return rounded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("gate", "align", "all"), default="all")
    ap.add_argument("--stride", type=int, default=8, help="every n-th clip frame (default 8)")
    args = ap.parse_args()
    devset = require_devset()
    if devset is None:
        return 2
    t0 = time.perf_counter()
    analyzer = FaceAnalyzer(VisionConfig())
    faces = collect(devset, analyzer, args.stride)
    print(f"devset {devset}: {len(faces)} faces; embedder {analyzer.embedder_spec.id}, template "
          f"{[list(p) for p in analyzer.embedder_spec.alignment.template]}")  # type: ignore[union-attr]
    if args.part in ("gate", "all"):
        report_gate(analyzer, faces)
    if args.part in ("align", "all"):
        report_alignment(analyzer, faces)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
