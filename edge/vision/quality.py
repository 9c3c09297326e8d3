"""Quality gate: only faces big, sharp and frontal enough to embed reliably are matched.

A poor face gives an unreliable embedding, and unreliable embeddings are where false alerts come from
(GOVERNANCE G12); a face that fails the gate is counted and discarded, never matched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.vision.detect import Detection

# BlazeFace's nose tip sits this far from the eye line towards the mouth centre on a frontal face.
FRONTAL_NOSE_RATIO = 0.53


@dataclass(frozen=True)
class QualityConfig:
    """Gate thresholds. Pose angles are estimates from the detector's keypoints, in degrees."""

    min_face_px: float = 40.0  # shorter side of the detection box
    min_score: float = 0.6
    min_sharpness: float = 25.0  # variance of the Laplacian of the aligned face (grey, 0-255)
    max_yaw: float = 40.0
    max_roll: float = 45.0  # alignment undoes roll; only extreme tilt hurts
    max_pitch: float = 30.0


@dataclass(frozen=True)
class Quality:
    """What the gate measured for one face, and its verdict."""

    face_px: float
    score: float
    sharpness: float
    yaw: float
    roll: float
    pitch: float
    passed: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def pose(det: Detection) -> tuple[float, float, float]:
    """Yaw, roll and pitch (degrees) estimated from eyes, nose tip and mouth centre.

    Roll is the tilt of the eye line. Yaw comes from how far the nose sits from the eyes' midline,
    relative to half the eye distance; pitch from where the nose sits between eye line and mouth
    (about 0.53 of the way down on a frontal face, measured on the devset). Coarse, but monotonic and cheap.
    """
    kp = det.keypoints.astype(np.float64)
    right_eye, left_eye, nose, mouth = kp[0], kp[1], kp[2], kp[3]
    eye_vec = left_eye - right_eye
    eye_dist = float(np.hypot(*eye_vec)) + 1e-6
    roll = float(np.degrees(np.arctan2(eye_vec[1], eye_vec[0])))
    if roll > 90:
        roll -= 180
    elif roll < -90:
        roll += 180
    # express nose and mouth in the face's own frame (x along the eye line)
    c, s = eye_vec / eye_dist
    mid = (left_eye + right_eye) / 2

    def local(p: np.ndarray) -> tuple[float, float]:
        d = p - mid
        return float(d[0] * c + d[1] * s), float(-d[0] * s + d[1] * c)

    nx, ny = local(nose)
    _, my = local(mouth)
    yaw = float(np.degrees(np.arcsin(np.clip(nx / (eye_dist / 2), -1, 1))))
    ratio = ny / my if abs(my) > 1e-6 else 0.0
    pitch = float(np.clip((ratio - FRONTAL_NOSE_RATIO) * 150.0, -90, 90))
    return yaw, roll, pitch


class QualityGate:
    """Measures and judges one face: size and score from the detection, sharpness from the aligned crop."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self._grey: np.ndarray | None = None
        self._lap: np.ndarray | None = None

    def sharpness(self, aligned: np.ndarray) -> float:
        h, w = aligned.shape[:2]
        if self._grey is None or self._grey.shape != (h, w):
            self._grey = np.empty((h, w), np.uint8)
            self._lap = np.empty((h, w), np.float32)
        assert self._lap is not None
        cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY, dst=self._grey)
        cv2.Laplacian(self._grey, cv2.CV_32F, dst=self._lap)
        return float(self._lap.var())

    def judge(self, det: Detection, aligned: np.ndarray) -> Quality:
        cfg = self.config
        face_px = min(det.width, det.height)
        sharp = self.sharpness(aligned)
        yaw, roll, pitch = pose(det)
        reasons = []
        if face_px < cfg.min_face_px:
            reasons.append("too_small")
        if det.score < cfg.min_score:
            reasons.append("low_score")
        if sharp < cfg.min_sharpness:
            reasons.append("blurred")
        if abs(yaw) > cfg.max_yaw:
            reasons.append("yaw")
        if abs(roll) > cfg.max_roll:
            reasons.append("roll")
        if abs(pitch) > cfg.max_pitch:
            reasons.append("pitch")
        return Quality(round(face_px, 1), round(det.score, 4), round(sharp, 1), round(yaw, 1),
                       round(roll, 1), round(pitch, 1), not reasons, tuple(reasons))

    def release(self) -> None:
        for buf in (self._grey, self._lap):
            if buf is not None:
                buf.fill(0)
