"""The node's own vision path (detect, gate, align, embed: `FaceAnalyzer`) over labelled photos and clips.

Every detection is labelled with the annotation it overlaps most (greedy, one to one, IoU >= LABEL_IOU:
BlazeFace boxes sit lower than the annotations'). Faces failing the gate are embedded too (`embed_all`) so
that what the gate costs can be shown; every score set built later uses only faces that passed it, as the
node does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.vision.analyzer import FaceAnalyzer
from edge.vision.detect import iou
from edge.vision.quality import Quality
from provisioning.accuracy.dataset import DatasetError, LabelledClip, LabelledFace

LABEL_IOU = 0.3
NOT_DETECTED = "not detected"
FRAME_W, FRAME_H = 1280, 720  # a held still is fitted into a 720p camera frame

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Sighting:
    """One labelled face in one analysed frame, as the pipeline saw it."""

    source: str  # photo or clip path under the set
    frame: int  # 0 for a photo; the frame index of a clip or a held still
    identity: str
    size_px: float  # face width in the analysed frame: the annotation's (photos), the detection's (clips)
    detected: bool
    passed: bool  # detected and through the quality gate
    reasons: tuple[str, ...]  # why the gate refused it, or NOT_DETECTED
    box: np.ndarray | None  # the detection's box
    embedding: np.ndarray | None  # unit length, a copy; None when not detected
    quality: Quality | None = None  # what the gate measured (the track template weighs frames by it)


@dataclass(frozen=True)
class FrameResult:
    """The labelled faces of one analysed frame, and the detections no annotation explains."""

    sightings: tuple[Sighting, ...]
    unlabelled: int


@dataclass(frozen=True)
class ClipResult:
    """A clip's person frame by frame (None: not in view or not detected) and its false detections."""

    clip: LabelledClip
    person: tuple[Sighting | None, ...]
    false_detections: int

    @property
    def frames(self) -> int:
        return len(self.person)


def label(boxes: np.ndarray, truth: np.ndarray) -> list[int | None]:
    """For each detection box, the index of the annotation box it is labelled with (greedy by IoU)."""
    out: list[int | None] = [None] * len(boxes)
    if len(boxes) == 0 or len(truth) == 0:
        return out
    m = np.stack([iou(b, truth) for b in boxes])
    while m.size:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < LABEL_IOU:
            break
        out[int(i)] = int(j)
        m[i, :] = -1
        m[:, j] = -1
    return out


def fit_frame(rgb: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """`rgb` scaled by `scale`, after fitting it into a 1280x720 frame when larger; and the factor used."""
    s = min(1.0, FRAME_W / rgb.shape[1], FRAME_H / rgb.shape[0]) * scale
    if s == 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA), s


def jitter(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float, float]:
    """One camera frame of a held still (no camera gives the same frame twice): scale 0.97-1.03 and a sub-pixel
    shift, gain/offset, sensor noise, JPEG at quality 70-92. Returns the frame and its (scale, tx, ty)."""
    h, w = rgb.shape[:2]
    s = rng.uniform(0.97, 1.03)
    tx = (1 - s) * w / 2 + rng.uniform(-1.5, 1.5)
    ty = (1 - s) * h / 2 + rng.uniform(-1.5, 1.5)
    m = np.array([[s, 0, tx], [0, s, ty]], np.float64)
    out = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    f = out.astype(np.float32) * rng.uniform(0.92, 1.08) + rng.uniform(-8, 8)
    f += rng.standard_normal(f.shape, dtype=np.float32) * rng.uniform(1.0, 3.0)
    out = np.clip(f, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 93))])
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if bgr is None:  # cannot happen with a valid uint8 frame; keep the unjittered pixels rather than fail
        return out, s, tx, ty
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), s, tx, ty


class Observer:
    """Runs one FaceAnalyzer over frames and labels what it finds."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer

    def frame(self, rgb: np.ndarray, faces: Sequence[LabelledFace], boxes: np.ndarray, source: str,
              frame: int = 0) -> FrameResult:
        """Analyse one frame whose annotated faces sit at `boxes` (in this frame's pixels)."""
        try:
            found = self.analyzer.analyse(rgb, embed_all=True)
            det = np.array([f.detection.box for f in found], np.float64).reshape(-1, 4)
            labels = label(det, boxes)
            by_face = {j: i for i, j in enumerate(labels) if j is not None}
            out = []
            for j, face in enumerate(faces):
                width = float(boxes[j, 2] - boxes[j, 0])
                i = by_face.get(j)
                if i is None:
                    out.append(Sighting(source, frame, face.identity, width, False, False, (NOT_DETECTED,),
                                        None, None))
                    continue
                f = found[i]
                emb = None if f.embedding is None else np.array(f.embedding, np.float32)
                out.append(Sighting(source, frame, face.identity, width, True, f.quality.passed,
                                    f.quality.reasons, np.array(f.detection.box, np.float32), emb, f.quality))
            return FrameResult(tuple(out), sum(1 for j in labels if j is None))
        finally:
            self.analyzer.release()

    def photo(self, rgb: np.ndarray, faces: Sequence[LabelledFace], scale: float = 1.0) -> FrameResult:
        """A photo as it is, or scaled by `scale` (a person further away)."""
        if scale != 1.0:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = np.array([f.box for f in faces], np.float64).reshape(-1, 4) * scale
        return self.frame(rgb, faces, boxes, faces[0].image if faces else "")

    def held(self, rgb: np.ndarray, faces: Sequence[LabelledFace], hold: int,
             rng: np.random.Generator) -> list[FrameResult]:
        """A photo held in front of a 720p camera for `hold` frames, each one jittered."""
        base, s0 = fit_frame(rgb)
        ann = np.array([f.box for f in faces], np.float64).reshape(-1, 4) * s0
        out = []
        for i in range(hold):
            frame, s, tx, ty = jitter(base, rng)
            out.append(self.frame(frame, faces, ann * s + np.array([tx, ty, tx, ty]), faces[0].image, i))
        return out

    def clip(self, root: Path, clip: LabelledClip, progress: Progress | None = None) -> ClipResult:
        """Every frame of a clip: inside its ranges the largest detection is its person; every other
        detection is a false one."""
        cap = cv2.VideoCapture(str(root / clip.path))
        if not cap.isOpened():
            raise DatasetError(root / clip.path, "video", "cannot be decoded")
        person: list[Sighting | None] = []
        false = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                i = len(person)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                try:
                    found = self.analyzer.analyse(rgb, embed_all=True)
                    if clip.holds(i) and found:
                        f = found[0]
                        emb = None if f.embedding is None else np.array(f.embedding, np.float32)
                        person.append(Sighting(clip.path, i, clip.identity, f.detection.width, True,
                                               f.quality.passed, f.quality.reasons,
                                               np.array(f.detection.box, np.float32), emb, f.quality))
                        false += len(found) - 1
                    else:
                        person.append(None)
                        false += len(found)
                finally:
                    self.analyzer.release()
                if progress and i % 100 == 99:
                    progress(f"{clip.path}: {i + 1} frames")
        finally:
            cap.release()
        if not person:
            raise DatasetError(root / clip.path, "video", "holds no frame")
        return ClipResult(clip, tuple(person), false)
