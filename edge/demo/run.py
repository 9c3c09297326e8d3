"""The demo: enrol two watch-listed people from photos, replay real footage, print match events.

Stdout carries one JSON line per match; the summary goes to stderr, so stdout stays machine-readable.
Faces that do not match are counted and their buffers released; nothing else of them is kept.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy

FOOTAGE = Path(__file__).parent / "footage"
# Opaque watch-list references; the photos stay with the "fleet" (here: this folder).
WATCHLIST = (("wl-7f3a", "obama.jpg"), ("wl-c41e", "astronaut.png"))
REPLAY = ("WolfgangLanger_Pexels.mp4", "biden.jpg", "obama2.jpg", "multi_face.jpg", "obama3.jpg")


class DemoError(Exception):
    """The bundled demo material is missing or unusable."""


@dataclass
class Tally:
    frames: int = 0
    faces: int = 0
    gated_out: int = 0
    alerts: int = 0
    discarded: int = 0


def frames(path: Path) -> Iterator[np.ndarray]:
    """RGB frames of a photo (one frame) or a clip, decoded into one reused buffer."""
    if path.suffix.lower() not in (".mp4", ".mkv", ".avi", ".mov"):
        yield read_rgb(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"{path}: cannot open video")
    bgr = rgb = None
    try:
        while True:
            ok, bgr = cap.read(bgr)
            if not ok:
                break
            if rgb is None or rgb.shape != bgr.shape:
                rgb = np.empty_like(bgr)
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=rgb)
            yield rgb
    finally:
        cap.release()


def enrol(analyzer: FaceAnalyzer) -> Gallery:
    rows, ids = [], []
    for entry_id, photo in WATCHLIST:
        embeddings = [f.embedding for f in analyzer.analyse(read_rgb(FOOTAGE / photo))
                      if f.embedding is not None]
        if not embeddings:
            raise DemoError(f"{FOOTAGE / photo}: no face of enrolment quality")
        rows.append(embeddings[0].copy())  # largest face passing the gate
        ids.append(entry_id)
    analyzer.release()
    return Gallery(np.stack(rows), ids)


def run_demo(config: VisionConfig, out: TextIO) -> int:
    analyzer = FaceAnalyzer(config)
    spec = analyzer.embedder_spec
    assert spec.match_threshold is not None
    gallery = enrol(analyzer)
    matcher = Matcher(gallery, MatchPolicy(threshold=spec.match_threshold, min_margin=0.02))
    tally = Tally()
    for source in REPLAY:
        for frame in frames(FOOTAGE / source):
            tally.frames += 1
            faces = analyzer.analyse(frame)
            tally.faces += len(faces)
            embedded = [f for f in faces if f.embedding is not None]
            tally.gated_out += len(faces) - len(embedded)
            if embedded:
                results = matcher.match(np.stack([f.embedding for f in embedded]))  # type: ignore[misc]
                for face, result in zip(embedded, results, strict=True):
                    if not result.matched:
                        tally.discarded += 1
                        continue
                    tally.alerts += 1
                    out.write(json.dumps({
                        "source": source, "frame": tally.frames, "entry_id": result.entry_id,
                        "score": round(result.score, 4), "threshold": matcher.policy.threshold,
                        "margin": round(result.margin, 4),
                        "box": [round(float(v)) for v in face.detection.box],
                        "model": {"id": spec.id, "sha256": spec.sha256},
                    }) + "\n")
                    out.flush()
            matcher.release()
            analyzer.release()
    print(f"demo: {tally.frames} frames, {tally.faces} faces seen, {tally.gated_out} below quality, "
          f"{tally.alerts} alerts, {tally.discarded} non-matching faces discarded "
          f"(watch list of {gallery.size}, threshold {matcher.policy.threshold})", file=sys.stderr)
    return 0
