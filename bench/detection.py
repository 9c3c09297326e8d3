"""Detection recall and cost: devset recall, false detections on a no-face clip, and crowd mosaics.

1. Recall on the devset annotations (faces whose shorter side >= 40 px) at IoU >= 0.5 and >= 0.3, for
   the whole-frame plan and CROWD_PLAN, with every miss listed with its best IoU. The annotations are
   forehead-to-chin boxes (OpenCV res10 SSD, hand-checked); BlazeFace's boxes are square and sit lower,
   so a found face can score IoU < 0.5 -- hence the second column.
2. False detections per frame on videos/no_face.mp4, and how many of them pass the quality gate.
3. Crowd: 1280x720 mosaics built from the real devset photos (each face cut with its surroundings,
   scaled so its annotation box is ~40 / 50 / 60 px tall, the box scaled along), recall per plan and
   detector time per frame as a ratio to the whole-frame pass, measured interleaved in this run.

usage: python3 bench/detection.py      (devset: tests/data/devset, or $EDGE_DEVSET)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from common import require_devset

from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import CROWD_PLAN, DetectorConfig, FaceDetector, TileLevel, TilePlan, iou
from edge.vision.manifest import load_manifest
from edge.vision.runtime import RuntimeConfig

MIN_FACE = 40  # px, shorter side of the annotation box
FRAME_W, FRAME_H = 1280, 720
CROWD_SIZES = (40, 50, 60)  # annotation-box height in the mosaic, px
MOSAICS_PER_SIZE = 2
CELL = 2.0  # mosaic cell edge / face height: the face plus about its own size of surroundings
ROUNDS = 7

WHOLE = TilePlan()
PLANS: dict[str, TilePlan] = {
    "whole frame": WHOLE,
    "whole + 384/96": TilePlan(levels=(TileLevel(384, 96),)),
    "CROWD_PLAN": CROWD_PLAN,
    "whole + 448/112": TilePlan(levels=(TileLevel(448, 112),)),
    "whole + 512/128": TilePlan(levels=(TileLevel(512, 128),)),
}




def match(ann: np.ndarray, det: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching by IoU: per annotation, matched?; and its best IoU with any detection."""
    hit = np.zeros(len(ann), bool)
    if len(ann) == 0 or len(det) == 0:
        return hit, np.zeros(len(ann))
    m = np.stack([iou(a, det) for a in ann])
    best = m.max(1)
    while m.size:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < min_iou:
            break
        hit[i] = True
        m[i, :] = -1
        m[:, j] = -1
    return hit, best


def boxes_of(dets: list) -> np.ndarray:
    return np.array([d.box for d in dets], np.float64).reshape(-1, 4)


@dataclass
class Frame:
    rgb: np.ndarray
    boxes: np.ndarray  # annotation boxes (N x 4)
    names: list[str]


def devset_frames(devset: Path) -> list[Frame]:
    ann = json.loads((devset / "annotations.json").read_text())["faces"]
    by: dict[str, list[dict]] = {}
    for a in ann:
        by.setdefault(a["image"], []).append(a)
    frames = []
    for image, items in by.items():
        boxes = np.array([a["box"] for a in items], np.float64)
        frames.append(Frame(read_rgb(devset / image), boxes, [a["identity"] for a in items]))
    return frames


def devset_recall(frames: list[Frame], detectors: dict[str, FaceDetector]) -> None:
    print(f"== Devset recall (annotated faces with shorter side >= {MIN_FACE} px)")
    for name, det in detectors.items():
        n = hit5 = hit3 = 0
        misses = []
        extra = 0
        for fr in frames:
            keep = np.minimum(fr.boxes[:, 2] - fr.boxes[:, 0], fr.boxes[:, 3] - fr.boxes[:, 1]) >= MIN_FACE
            found = boxes_of(det.detect(fr.rgb))
            h5, best = match(fr.boxes, found, 0.5)
            h3, _ = match(fr.boxes, found, 0.3)
            extra += len(found) - int(h3.sum())
            n += int(keep.sum())
            hit5 += int((h5 & keep).sum())
            hit3 += int((h3 & keep).sum())
            misses += [f"{fr.names[i]} (IoU {best[i]:.2f})" for i in np.flatnonzero(keep & ~h5)]
        print(f"  {name:16s} IoU>=0.5: {hit5}/{n} = {hit5 / n:.1%}   IoU>=0.3: {hit3}/{n} = {hit3 / n:.1%}   "
              f"unmatched detections: {extra}")
        if misses:
            print(f"    misses at 0.5: {'; '.join(misses)}")


def no_face_clip(devset: Path, analyzers: dict[str, FaceAnalyzer]) -> None:
    path = devset / "videos" / "no_face.mp4"
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        print(f"\n== {path.name}: cannot decode")
        return
    h, w = frames[0].shape[:2]
    print(f"\n== False detections on videos/no_face.mp4 ({len(frames)} frames, {w}x{h}; no face annotated)")
    for name, an in analyzers.items():
        dets = passed = with_det = 0
        top = 0.0
        for rgb in frames:
            faces = an.analyse(rgb)
            dets += len(faces)
            with_det += bool(faces)
            passed += sum(f.quality.passed for f in faces)
            top = max([top, *(f.detection.score for f in faces)])
        print(f"  {name:16s} {dets / len(frames):.3f} detections/frame ({dets} total, in {with_det} frames; "
              f"max score {top:.3f}); passing the quality gate: {passed}")


def crowd_mosaics(frames: list[Frame], seed: int = 7) -> list[tuple[int, Frame]]:
    """1280x720 mosaics of real faces with their surroundings, faces ~size px tall."""
    rng = np.random.default_rng(seed)
    sources = [(fr, i) for fr in frames for i in range(len(fr.boxes))]
    out = []
    for size in CROWD_SIZES:
        cell = round(size * CELL)
        for _ in range(MOSAICS_PER_SIZE):
            canvas = np.empty((FRAME_H, FRAME_W, 3), np.uint8)
            canvas[:] = rng.integers(60, 200, 3, dtype=np.uint8)
            boxes, names = [], []
            ox, oy = (int(v) for v in rng.integers(0, cell // 2, 2))
            for y in range(oy, FRAME_H - cell + 1, cell):
                for x in range(ox, FRAME_W - cell + 1, cell):
                    fr, i = sources[int(rng.integers(len(sources)))]
                    x0, y0, x1, y1 = fr.boxes[i]
                    s = size / (y1 - y0)  # annotation box height -> size px
                    # a cell-sized window of the scaled photo, the face at a jittered spot inside it
                    jx, jy = rng.uniform(-0.12, 0.12, 2) * cell
                    cx = (x0 + x1) / 2 * s - cell / 2 + jx
                    cy = (y0 + y1) / 2 * s - cell / 2 + jy
                    m = np.array([[s, 0, -cx], [0, s, -cy]], np.float64)
                    patch = cv2.warpAffine(fr.rgb, m, (cell, cell), flags=cv2.INTER_AREA,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
                    canvas[y:y + cell, x:x + cell] = patch
                    boxes.append([x0 * s - cx + x, y0 * s - cy + y, x1 * s - cx + x, y1 * s - cy + y])
                    names.append(f"{size}px")
            out.append((size, Frame(canvas, np.array(boxes), names)))
    return out


def crowd(frames: list[Frame], detectors: dict[str, FaceDetector]) -> None:
    mosaics = crowd_mosaics(frames)
    n_faces = {s: sum(len(f.boxes) for sz, f in mosaics if sz == s) for s in CROWD_SIZES}
    regions = {k: len(d.config.tiles.regions(FRAME_W, FRAME_H)) for k, d in detectors.items()}
    print(f"\n== Crowd mosaics {FRAME_W}x{FRAME_H}: {len(mosaics)} frames, faces per size "
          f"{', '.join(f'{s}px: {n}' for s, n in n_faces.items())} (cut from devset photos, with context)")
    # recall (untimed pass)
    rows = {}
    for name, det in detectors.items():
        hits5 = dict.fromkeys(CROWD_SIZES, 0)
        hits3 = dict.fromkeys(CROWD_SIZES, 0)
        false = 0
        for size, fr in mosaics:
            found = boxes_of(det.detect(fr.rgb))
            h5, _ = match(fr.boxes, found, 0.5)
            h3, _ = match(fr.boxes, found, 0.3)
            hits5[size] += int(h5.sum())
            hits3[size] += int(h3.sum())
            false += len(found) - int(h3.sum())
        rows[name] = (hits5, hits3, false)
    # cost: every plan over all mosaics per round, plan order rotated each round
    names = list(detectors)
    for det in detectors.values():
        det.detect(mosaics[0][1].rgb)
    ratios: dict[str, list[float]] = {k: [] for k in names}
    base = []
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[:r % len(names)]
        t = {}
        for k in order:
            per = []
            for _, fr in mosaics:
                t0 = time.perf_counter()
                detectors[k].detect(fr.rgb)
                per.append(time.perf_counter() - t0)
            t[k] = statistics.median(per)
        base.append(t["whole frame"] * 1e3)
        for k in names:
            ratios[k].append(t[k] / t["whole frame"])
    print(f"  recall at IoU>=0.5 (IoU>=0.3) per face size; detector time per frame as ratio to the "
          f"whole-frame pass\n  (median of {ROUNDS} interleaved rounds of per-frame medians; whole frame = "
          f"{statistics.median(base):.1f} ms here)")
    print(f"  {'plan':16s} {'passes':>6s}  " + "  ".join(f"{s:>13d}px" for s in CROWD_SIZES)
          + "   other/frame   time ratio (IQR)")
    for name in names:
        hits5, hits3, false = rows[name]
        cells = "  ".join(f"{hits5[s] / n_faces[s]:6.1%} ({hits3[s] / n_faces[s]:6.1%})" for s in CROWD_SIZES)
        q = np.percentile(ratios[name], [25, 75])
        print(f"  {name:16s} {regions[name]:6d}  {cells}   {false / len(mosaics):11.2f}   "
              f"{statistics.median(ratios[name]):6.2f}x ({q[0]:.2f}-{q[1]:.2f})")
    print("  other/frame: detections matching no mosaic face (IoU < 0.3); the cells carry their photo's\n"
          "  surroundings, so these are mostly real but unannotated neighbours from the group photos")


def main() -> int:
    devset = require_devset()
    if devset is None:
        return 2
    t0 = time.perf_counter()
    manifest = load_manifest()
    runtime = RuntimeConfig()
    print(f"detector {manifest.default_detector}, runtime {runtime}")
    detectors = {k: FaceDetector(manifest, runtime, DetectorConfig(tiles=p)) for k, p in PLANS.items()}
    frames = devset_frames(devset)
    devset_recall(frames, {k: detectors[k] for k in ("whole frame", "CROWD_PLAN")})
    analyzers = {k: FaceAnalyzer(VisionConfig(detector=DetectorConfig(tiles=PLANS[k])), manifest)
                 for k in ("whole frame", "CROWD_PLAN")}
    no_face_clip(devset, analyzers)
    crowd(frames, detectors)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
