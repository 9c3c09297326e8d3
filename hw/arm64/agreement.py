"""Do two `edge-node faces --json` runs (arm64 under emulation, x86_64 native) find the same faces?

Each image must have the same number of faces; each face on one side is paired with the face of highest box
IoU on the other, and the pair must overlap (IoU >= MIN_IOU) and embed alike (cosine >= MIN_COSINE). Images
are keyed by file name: the two runs read the same bundled photos from different directories.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

MIN_IOU = 0.99
MIN_COSINE = 0.999


class FacesOutputError(Exception):
    """A `faces --json` line cannot be read (names the run and the line)."""


class DisagreementError(Exception):
    """The two architectures disagree (names the image, the face and the measure)."""


@dataclass(frozen=True)
class Face:
    """One detected face as `faces --json` prints it."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    embedding: tuple[float, ...] | None


@dataclass(frozen=True)
class ImageFaces:
    """One image's faces."""

    name: str
    model: str  # the embedder's sha256: both runs must use the same bytes
    faces: tuple[Face, ...]


@dataclass(frozen=True)
class PairAgreement:
    """How closely one face agrees across the two runs."""

    iou: float
    cosine: float


@dataclass(frozen=True)
class Agreement:
    """Every image agreed: the face count, and the worst IoU and cosine seen."""

    images: int
    faces: int
    min_iou: float
    min_cosine: float

    def line(self) -> str:
        return (f"{self.images} images, {self.faces} faces: same count, min box IoU {self.min_iou:.4f} "
                f"(>= {MIN_IOU}), min cosine {self.min_cosine:.5f} (>= {MIN_COSINE})")


def parse_faces(text: str, run: str) -> dict[str, ImageFaces]:
    """The images of one run's stdout, by file name; `run` names the run in errors."""
    images: dict[str, ImageFaces] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            image = _image(doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise FacesOutputError(f"{run} faces output line {number}: {type(exc).__name__}: {exc}") from None
        if image.name in images:
            raise FacesOutputError(f"{run} faces output line {number}: {image.name} appears twice")
        images[image.name] = image
    return images


def _image(doc: Mapping[str, Any]) -> ImageFaces:
    if "error" in doc:
        raise ValueError(f"{doc['image']}: {doc['error']}")
    faces = []
    for f in doc["faces"]:
        x1, y1, x2, y2 = (float(v) for v in f["box"])
        emb = f["embedding"]
        faces.append(Face((x1, y1, x2, y2), None if emb is None else tuple(float(v) for v in emb)))
    return ImageFaces(PurePath(str(doc["image"])).name, str(doc["model"]["sha256"]), tuple(faces))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors of one length."""
    if len(a) != len(b):
        raise ValueError(f"embedding lengths differ: {len(a)} and {len(b)}")
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb) if na and nb else 0.0


def compare_image(arm: ImageFaces, ref: ImageFaces) -> list[PairAgreement]:
    """Pair each arm64 face with its best-overlapping x86_64 face; raise on the first disagreement."""
    if arm.model != ref.model:
        raise DisagreementError(f"{arm.name}: embedder sha256 {arm.model[:12]} on arm64, {ref.model[:12]} on x86_64")
    if len(arm.faces) != len(ref.faces):
        raise DisagreementError(f"{arm.name}: {len(arm.faces)} faces on arm64, {len(ref.faces)} on x86_64")
    pairs = []
    for i, face in enumerate(arm.faces):
        best = max(ref.faces, key=lambda r: iou(face.box, r.box))
        overlap = iou(face.box, best.box)
        if overlap < MIN_IOU:
            raise DisagreementError(f"{arm.name} face {i}: box IoU {overlap:.4f} < {MIN_IOU} "
                                    f"(arm64 {face.box}, x86_64 {best.box})")
        if (face.embedding is None) != (best.embedding is None):
            raise DisagreementError(f"{arm.name} face {i}: embedded on one architecture only")
        similar = 1.0 if face.embedding is None or best.embedding is None else cosine(face.embedding, best.embedding)
        if similar < MIN_COSINE:
            raise DisagreementError(f"{arm.name} face {i}: embedding cosine {similar:.5f} < {MIN_COSINE}")
        pairs.append(PairAgreement(overlap, similar))
    return pairs


def compare_runs(arm: Mapping[str, ImageFaces], ref: Mapping[str, ImageFaces]) -> Agreement:
    """Both runs hold the same images and every image agrees."""
    if set(arm) != set(ref):
        raise DisagreementError(f"images differ: arm64 only {sorted(set(arm) - set(ref))}, "
                                f"x86_64 only {sorted(set(ref) - set(arm))}")
    pairs: list[PairAgreement] = []
    for name in sorted(arm):
        pairs += compare_image(arm[name], ref[name])
    if not pairs:
        raise DisagreementError("no faces found on either architecture: nothing was compared")
    return Agreement(len(arm), len(pairs), _least(p.iou for p in pairs), _least(p.cosine for p in pairs))


def _least(values: Iterable[float]) -> float:
    return min(values, default=1.0)
