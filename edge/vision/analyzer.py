"""From an RGB frame to faces with quality verdicts and embeddings: detect -> align -> gate -> embed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.vision.align import Aligner
from edge.vision.detect import Detection, DetectorConfig, FaceDetector
from edge.vision.embed import Embedder
from edge.vision.errors import ImageDecodeError
from edge.vision.manifest import ModelManifest, ModelSpec, load_manifest
from edge.vision.quality import Quality, QualityConfig, QualityGate
from edge.vision.runtime import RuntimeConfig
from edge.vision.timing import StageClock


@dataclass(frozen=True)
class VisionConfig:
    """Everything that shapes the vision core: runtime, detector passes, quality gate, embedder."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    embedder_id: str | None = None  # None: the manifest's default embedder
    models_dir: Path | None = None


@dataclass(frozen=True)
class AnalysedFace:
    """One face of a frame. `embedding` is a row of the analyser's reused buffer (copy to keep)."""

    detection: Detection
    quality: Quality
    embedding: np.ndarray | None


class FaceAnalyzer:
    """Owns the models and every reused buffer of the per-frame vision path."""

    def __init__(self, config: VisionConfig | None = None, manifest: ModelManifest | None = None,
                 max_faces: int = 64):
        self.config = config or VisionConfig()
        self.manifest = manifest or load_manifest(self.config.models_dir)
        self.detector = FaceDetector(self.manifest, self.config.runtime, self.config.detector)
        self.embedder = Embedder.from_manifest(self.manifest, self.config.runtime, self.config.embedder_id)
        assert self.embedder.spec.alignment is not None
        self.aligner = Aligner(self.embedder.spec.alignment)
        self.gate = QualityGate(self.config.quality)
        self._embeddings = np.zeros((max_faces, self.embedder.dim), np.float32)

    @property
    def embedder_spec(self) -> ModelSpec:
        return self.embedder.spec

    def analyse(self, rgb: np.ndarray, embed_all: bool = False, clock: StageClock | None = None,
                detect_on: np.ndarray | None = None) -> list[AnalysedFace]:
        """Faces of the frame, largest first. Faces failing the gate are embedded only if embed_all.

        `detect_on`: a smaller view of the same frame (picamera2's lores stream, from the camera's ISP) to
        run detection on; boxes and keypoints are scaled to `rgb`, where faces are aligned and cropped."""
        if clock:
            clock.start()
        if detect_on is None:
            detections = self.detector.detect(rgb, clock)
        else:
            sx, sy = rgb.shape[1] / detect_on.shape[1], rgb.shape[0] / detect_on.shape[0]
            scale = np.array([sx, sy], np.float32)
            detections = [Detection(d.box * np.tile(scale, 2), d.keypoints * scale, d.score)
                          for d in self.detector.detect(detect_on, clock)]
        detections.sort(key=lambda d: -d.width * d.height)
        detections = detections[: self._embeddings.shape[0]]
        out = []
        for i, det in enumerate(detections):
            face = self.aligner.align(rgb, det)
            if clock:
                clock.lap("align")
            quality = self.gate.judge(det, face)
            if clock:
                clock.lap("quality")
            embedding = None
            if quality.passed or embed_all:
                embedding = self._embeddings[i]
                self.embedder.embed_into(face, embedding)
                if clock:
                    clock.lap("embed_invoke")
            out.append(AnalysedFace(det, quality, embedding))
        return out

    def release(self) -> None:
        """Zero every buffer that held face pixels or embeddings."""
        self._embeddings.fill(0)
        self.detector.release()
        self.aligner.release()
        self.gate.release()
        self.embedder.release()


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8; anything unreadable is an ImageDecodeError naming the file."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageDecodeError(path, "empty file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(path, "not an image format this node can decode")
    rgb: np.ndarray = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return rgb
