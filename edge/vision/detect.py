"""BlazeFace face detection: anchors, decoding, weighted NMS, and tiling for small faces in crowds.

A single 192x192 pass over a 1280-px frame shrinks a 50-px face to 7 px, below what BlazeFace sees.
`TilePlan` adds overlapping tiles at a finer scale; detections from all passes are merged, and a
detection cut by an inner tile edge is dropped (the overlap guarantees a neighbour holds it whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.vision.errors import ModelLoadError
from edge.vision.manifest import AnchorSpec, ModelManifest, ModelSpec
from edge.vision.runtime import RuntimeConfig, TfliteModel
from edge.vision.timing import StageClock

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")


@dataclass(frozen=True)
class Detection:
    """One face: box [x0, y0, x1, y1] and 6 keypoints (subject's right eye first), in frame pixels."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass(frozen=True)
class Region:
    """A rectangle of the frame given to the detector in one pass."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class TileLevel:
    """Square tiles of `tile` frame pixels overlapping by `overlap`; the overlap must exceed the largest
    face this level is meant to find, so each such face lies whole inside at least one tile."""

    tile: int
    overlap: int


@dataclass(frozen=True)
class TilePlan:
    """The passes that cover a frame: optionally the whole frame, plus each level's tile grid."""

    levels: tuple[TileLevel, ...] = ()
    whole_frame: bool = True

    def regions(self, width: int, height: int) -> tuple[Region, ...]:
        out = [Region(0, 0, width, height)] if self.whole_frame or not self.levels else []
        for level in self.levels:
            if max(width, height) <= level.tile:
                continue
            xs = _positions(width, level.tile, level.overlap)
            ys = _positions(height, level.tile, level.overlap)
            tw, th = min(level.tile, width), min(level.tile, height)
            out += [Region(x, y, tw, th) for y in ys for x in xs]
        return tuple(out)


# Crowd plan for a 720p frame: 384-px tiles find faces of 40-96 px, 768-px tiles faces up to 200 px,
# the whole frame larger ones (measured in bench/detection.py).
CROWD_PLAN = TilePlan(levels=(TileLevel(384, 96), TileLevel(768, 200)))


def _positions(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = max(2, math.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def ssd_anchors(input_size: int, spec: AnchorSpec) -> np.ndarray:
    """Anchor centres (x, y), normalised to [0, 1], in the order the model emits them."""
    centres: list[tuple[float, float]] = []
    for stride, n in zip(spec.strides, spec.per_cell, strict=True):
        g = math.ceil(input_size / stride)
        for y in range(g):
            for x in range(g):
                centres += [((x + 0.5) / g, (y + 0.5) / g)] * n
    return np.array(centres, np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one box against many (x0, y0, x1, y1)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out: np.ndarray = inter / (area + areas - inter + 1e-9)
    return out


def weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray,
                 iou_threshold: float) -> list[Detection]:
    """MediaPipe's weighted suppression: overlapping candidates are averaged, weighted by score."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    used = np.zeros(len(scores), bool)
    out: list[Detection] = []
    for i in range(len(scores)):
        if used[i]:
            continue
        group = ~used & (iou(boxes[i], boxes) > iou_threshold)
        group[i] = True
        used |= group
        w = scores[group]
        total = float(w.sum())
        out.append(Detection(
            box=(boxes[group] * w[:, None]).sum(0) / total,
            keypoints=(kps[group] * w[:, None, None]).sum(0) / total,
            score=float(scores[i]),
        ))
    return out


@dataclass
class _Candidates:
    boxes: list[np.ndarray] = field(default_factory=list)
    kps: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)


class BlazeFace:
    """One BlazeFace model (short- or full-range) run on one region of a frame at a time."""

    def __init__(self, spec: ModelSpec, content: bytes, runtime: RuntimeConfig,
                 score_threshold: float = 0.5):
        if spec.anchors is None:
            raise ModelLoadError(f"{spec.id}: MANIFEST.json gives no anchors: not a detector")
        self.spec = spec
        self.model = TfliteModel(content, spec.id, runtime)
        self.size = spec.input_size
        self.anchors = ssd_anchors(self.size, spec.anchors)
        outs = sorted(range(len(self.model.outputs)), key=lambda i: -int(self.model.outputs[i]["shape"][-1]))
        self._reg_out, self._cls_out = outs[0], outs[1]
        n = int(self.model.outputs[self._cls_out]["shape"][1])
        if n != len(self.anchors):
            raise ModelLoadError(
                f"{spec.id}: model emits {n} anchors, MANIFEST.json's layout gives {len(self.anchors)}")
        self.logit_threshold = math.log(score_threshold / (1.0 - score_threshold))
        self._canvas = np.zeros((self.size, self.size, 3), np.uint8)
        self._filled = (self.size, self.size)  # part of the canvas the last region wrote
        self._mean = np.array(spec.input_mean, np.float32)
        self._scale = np.float32(spec.input_scale)
        self._resized: dict[tuple[int, int], np.ndarray] = {}  # one buffer per region shape, reused

    def prepare(self, rgb: np.ndarray, region: Region) -> float:
        """Letterbox the region into the input tensor (top-left aligned); returns the scale used."""
        s = self.size / max(region.w, region.h)
        nw, nh = max(1, round(region.w * s)), max(1, round(region.h * s))
        buf = self._resized.get((nh, nw))
        if buf is None:
            buf = self._resized[(nh, nw)] = np.empty((nh, nw, 3), np.uint8)
        roi = rgb[region.y:region.y + region.h, region.x:region.x + region.w]
        cv2.resize(roi, (nw, nh), dst=buf, interpolation=cv2.INTER_AREA)
        fh, fw = self._filled
        if fh > nh or fw > nw:
            self._canvas[:] = 0
        self._canvas[:nh, :nw] = buf
        self._filled = (nh, nw)
        view = self.model.input_view()
        np.subtract(self._canvas, self._mean, out=view[0], casting="unsafe")
        np.multiply(view, self._scale, out=view)
        del view
        return s

    def decode(self, region: Region, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, keypoints and scores of anchors above threshold, in frame pixels (before NMS)."""
        logits = self.model.output_view(self._cls_out)[0, :, 0]
        keep = np.flatnonzero(logits >= self.logit_threshold)
        if keep.size == 0:
            return _EMPTY_BOXES, _EMPTY_KPS, _EMPTY_SCORES
        reg = self.model.output_view(self._reg_out)[0, keep]  # fancy indexing copies the few kept rows
        a = self.anchors[keep] * self.size
        cx, cy = reg[:, 0] + a[:, 0], reg[:, 1] + a[:, 1]
        half_w, half_h = reg[:, 2] / 2, reg[:, 3] / 2
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1)
        kps = reg[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
        offset = np.array([region.x, region.y], np.float32)
        boxes = boxes / scale + np.tile(offset, 2)
        kps = kps / scale + offset
        scores = 1.0 / (1.0 + np.exp(-logits[keep]))
        del logits  # no view may outlive this call: the next invoke() refuses while one exists
        return boxes, kps, scores

    def release(self) -> None:
        """Zero every buffer that held frame pixels: canvas, resize buffers, the input tensor."""
        self._canvas.fill(0)
        for buf in self._resized.values():
            buf.fill(0)
        view = self.model.input_view()
        view.fill(0)
        del view

    def run(self, rgb: np.ndarray, region: Region,
            clock: StageClock | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = self.prepare(rgb, region)
        if clock:
            clock.lap("resize")
        self.model.invoke()
        if clock:
            clock.lap("detect_invoke")
        result = self.decode(region, scale)
        if clock:
            clock.lap("detect_decode")
        return result


_EMPTY_BOXES = np.zeros((0, 4), np.float32)
_EMPTY_KPS = np.zeros((0, 6, 2), np.float32)
_EMPTY_SCORES = np.zeros((0,), np.float32)


@dataclass(frozen=True)
class DetectorConfig:
    """Detector choice and the passes it makes over each frame."""

    model_id: str | None = None  # None: the manifest's default detector
    score_threshold: float = 0.5
    iou_threshold: float = 0.3
    tiles: TilePlan = CROWD_PLAN  # events are crowds; TilePlan() for one whole-frame pass
    edge_margin: float = 2.0  # px: a box this close to an inner tile edge is taken as cut


class FaceDetector:
    """Finds faces in a whole frame: runs every pass of the tile plan and merges the results."""

    def __init__(self, manifest: ModelManifest, runtime: RuntimeConfig, config: DetectorConfig):
        model_id = config.model_id or manifest.default_detector
        self.config = config
        self.blazeface = BlazeFace(manifest.spec(model_id), manifest.verified_bytes(model_id), runtime,
                                   config.score_threshold)

    def release(self) -> None:
        self.blazeface.release()

    def detect(self, rgb: np.ndarray, clock: StageClock | None = None) -> list[Detection]:
        h, w = rgb.shape[:2]
        found = _Candidates()
        for region in self.config.tiles.regions(w, h):
            boxes, kps, scores = self.blazeface.run(rgb, region, clock)
            if boxes.shape[0] and (region.w < w or region.h < h):
                whole = _inside_inner_edges(boxes, region, w, h, self.config.edge_margin)
                boxes, kps, scores = boxes[whole], kps[whole], scores[whole]
            found.boxes.append(boxes)
            found.kps.append(kps)
            found.scores.append(scores)
        if not any(s.size for s in found.scores):
            if clock:
                clock.lap("detect_decode")
            return []
        faces = weighted_nms(np.concatenate(found.boxes), np.concatenate(found.kps),
                             np.concatenate(found.scores), self.config.iou_threshold)
        if clock:
            clock.lap("detect_decode")
        return faces


def _inside_inner_edges(boxes: np.ndarray, r: Region, width: int, height: int, margin: float) -> np.ndarray:
    """Mask of boxes not cut by a tile edge that lies inside the frame."""
    ok = np.ones(len(boxes), bool)
    if r.x > 0:
        ok &= boxes[:, 0] >= r.x + margin
    if r.y > 0:
        ok &= boxes[:, 1] >= r.y + margin
    if r.x + r.w < width:
        ok &= boxes[:, 2] <= r.x + r.w - margin
    if r.y + r.h < height:
        ok &= boxes[:, 3] <= r.y + r.h - margin
    return ok
