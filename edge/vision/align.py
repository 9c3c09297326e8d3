"""Alignment: a similarity transform that puts a face's eyes, nose tip and mouth centre where the
embedder was trained to see them (the template in MANIFEST.json)."""

from __future__ import annotations

import cv2
import numpy as np

from edge.vision.detect import Detection
from edge.vision.manifest import AlignmentSpec


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst (Umeyama 1991).

    Returns the 2x3 matrix for cv2.warpAffine. Closed form and deterministic, unlike RANSAC/LMEDS.
    """
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[-1] = -1
    r = u @ np.diag(e) @ vt
    scale = (sig * e).sum() / var_s if var_s > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def alignment_points(det: Detection) -> np.ndarray:
    """Image-left eye, image-right eye, nose tip, mouth centre (4x2)."""
    pts = det.keypoints[:4].astype(np.float64)
    if pts[0, 0] > pts[1, 0]:
        pts[[0, 1]] = pts[[1, 0]]
    return pts


class Aligner:
    """Warps detected faces into one reused buffer of the embedder's input size."""

    def __init__(self, spec: AlignmentSpec):
        self.size = spec.size
        self.template = np.array(spec.template, np.float64)
        self._out = np.zeros((spec.size, spec.size, 3), np.uint8)

    def matrix(self, det: Detection) -> np.ndarray:
        return similarity_transform(alignment_points(det), self.template)

    def align(self, rgb: np.ndarray, det: Detection) -> np.ndarray:
        """The aligned face; the buffer is overwritten by the next call."""
        cv2.warpAffine(rgb, self.matrix(det), (self.size, self.size), dst=self._out,
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return self._out

    def release(self) -> None:
        """Zero the buffer so no face outlives its use."""
        self._out.fill(0)
