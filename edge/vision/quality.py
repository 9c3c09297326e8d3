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
# Sharpness: the weakest of four directional second-difference energies of the aligned grey face, over its
# mean local variance (Gaussian window of this sigma, px of the embedder input), times SHARPNESS_SCALE.
LOCAL_CONTRAST_SIGMA = 4.0
SHARPNESS_SCALE = 1000.0


@dataclass(frozen=True)
class QualityConfig:
    """Gate thresholds. Pose angles are estimates from the detector's keypoints, in degrees."""

    min_face_px: float = 40.0  # shorter side of the detection box
    min_score: float = 0.6
    # contrast-normalised detail of the aligned face (QualityGate.sharpness); fitted by
    # bench/gate_and_alignment.py: sharp faces at any brightness pass; Gaussian blur of sigma >= 2 and most
    # motion blur of >= 9 px at the embedder input fail (docs/vision.md)
    min_sharpness: float = 10.0
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
        # second differences along x, y and both diagonals (a diagonal step is sqrt(2) px: hence / 2)
        lx = np.array([[0, 0, 0], [1, -2, 1], [0, 0, 0]], np.float32)
        ld = np.array([[0, 0, 1], [0, -2, 0], [1, 0, 0]], np.float32) / 2
        self._kernels: tuple[np.ndarray, ...] = (lx, lx.T.copy(), ld, ld[:, ::-1].copy())
        # what rounding grey levels to integers alone puts into each (uniform noise, variance 1/12)
        self._rounding_energy = tuple(float((k * k).sum()) / 12 for k in self._kernels)
        self._shape: tuple[int, int] | None = None
        self._buffers: tuple[np.ndarray, ...] = ()

    def _buffers_for(self, h: int, w: int) -> tuple[np.ndarray, ...]:
        if self._shape != (h, w):
            self._shape = (h, w)
            self._buffers = (np.empty((h, w), np.uint8), *(np.empty((h, w), np.float32) for _ in range(4)))
        return self._buffers

    def sharpness(self, aligned: np.ndarray) -> float:
        """Detail of the aligned face relative to its own contrast: brightness- and contrast-invariant.

        The energy of the second difference along x, y and both diagonals, the weakest direction taken
        (motion blur removes detail along one direction only), divided by the mean local variance of the
        grey face (Gaussian window, LOCAL_CONTRAST_SIGMA): halving the brightness scales both by 1/4, so a
        dark but sharp face measures as sharp. The energy that rounding to 8-bit grey levels alone gives is
        taken off first: in a very dark crop it would otherwise read as detail (a blurred face at a quarter
        of the brightness measured sharp). A flat crop measures 0. bench/gate_and_alignment.py compares this
        with the plain variance of the Laplacian and with global-contrast normalisations.
        """
        h, w = aligned.shape[:2]
        grey8, grey, diff, mean, mean_sq = self._buffers_for(h, w)
        cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY, dst=grey8)
        np.copyto(grey, grey8, casting="unsafe")
        n = h * w
        weakest = min(float(cv2.norm(cv2.filter2D(grey, cv2.CV_32F, k, dst=diff), cv2.NORM_L2SQR)) / n - q
                      for k, q in zip(self._kernels, self._rounding_energy, strict=True))
        cv2.GaussianBlur(grey, (0, 0), LOCAL_CONTRAST_SIGMA, dst=mean)
        np.multiply(grey, grey, out=diff)
        cv2.GaussianBlur(diff, (0, 0), LOCAL_CONTRAST_SIGMA, dst=mean_sq)
        local_var = float(cv2.sumElems(mean_sq)[0] - cv2.norm(mean, cv2.NORM_L2SQR)) / n
        return float(SHARPNESS_SCALE * max(weakest, 0.0) / (max(local_var, 0.0) + 1.0))

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
        """Zero every buffer that held face pixels."""
        for buf in self._buffers:
            buf.fill(0)
