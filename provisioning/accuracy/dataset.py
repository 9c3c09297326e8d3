"""A labelled evaluation set in the devset's format (tests/data/README.md).

`annotations.json` holds `faces`: one object per face with `image` (path under the set), `box`
[x0, y0, x1, y1], `identity` and optional `flags`; and `videos`: clip path -> frame ranges [first, last]
(inclusive) in which the clip's one person is in view. A clip's person is an identity of its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANNOTATIONS = "annotations.json"
UNVERIFIED = "identity_distinctness_unverified"  # may be the same person as another such face elsewhere
MAY_EQUAL = "may_equal_"  # prefix: may be the same person as someone else from the same source (folder)


class DatasetError(Exception):
    """The labelled set cannot be read; the message names the file and the key at fault."""

    def __init__(self, path: Path, where: str, problem: str):
        super().__init__(f"{path}: {where}: {problem}")
        self.path = path
        self.where = where


@dataclass(frozen=True)
class LabelledFace:
    """One annotated face of a photo."""

    image: str
    box: tuple[float, float, float, float]
    identity: str
    flags: tuple[str, ...] = ()

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]


@dataclass(frozen=True)
class LabelledClip:
    """A clip and the frame ranges (inclusive) that show its one person; no ranges: nobody is in it."""

    path: str
    ranges: tuple[tuple[int, int], ...]

    @property
    def identity(self) -> str:
        return f"clip:{Path(self.path).stem}"

    def holds(self, frame: int) -> bool:
        return any(a <= frame <= b for a, b in self.ranges)


@dataclass(frozen=True)
class LabelledSet:
    """The faces and clips of one set, with the rule for pairs whose identities are not certainly distinct."""

    root: Path
    faces: tuple[LabelledFace, ...]
    clips: tuple[LabelledClip, ...]

    def images(self) -> list[str]:
        """Every annotated photo, in the order of first appearance."""
        return list(dict.fromkeys(f.image for f in self.faces))

    def faces_in(self, image: str) -> list[LabelledFace]:
        return [f for f in self.faces if f.image == image]

    def identities(self) -> list[str]:
        """Photo identities in order of first appearance, then the clips' persons."""
        ids = list(dict.fromkeys(f.identity for f in self.faces))
        return ids + [c.identity for c in self.clips if c.ranges]

    def doubtful(self, a: str, b: str) -> bool:
        """True when identities a != b may be one person: they never share a photo (two faces of one photo are
        two people), and both are flagged unverified, or either carries a `may_equal_*` flag and their photos
        come from the same folder (the same source package)."""
        if a == b:
            return False
        fa, fb = [f for f in self.faces if f.identity == a], [f for f in self.faces if f.identity == b]
        if {f.image for f in fa} & {f.image for f in fb}:
            return False
        flags_a = {x for f in fa for x in f.flags}
        flags_b = {x for f in fb for x in f.flags}
        if UNVERIFIED in flags_a and UNVERIFIED in flags_b:
            return True
        same_source = {Path(f.image).parent for f in fa} & {Path(f.image).parent for f in fb}
        return bool(same_source) and any(x.startswith(MAY_EQUAL) for x in flags_a | flags_b)


def load_labelled_set(root: Path) -> LabelledSet:
    """Read and check `root/annotations.json`: every bad field is a DatasetError naming file and key."""
    path = root / ANNOTATIONS
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(path, "file", "not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, "file", f"unreadable: {exc}") from None
    if not isinstance(doc, Mapping):
        raise DatasetError(path, "top level", "must be an object with `faces` and `videos`")
    raw_faces = doc.get("faces", [])
    if not isinstance(raw_faces, list):
        raise DatasetError(path, "faces", "must be a list")
    faces = tuple(_face(root, path, i, f) for i, f in enumerate(raw_faces))
    raw_videos = doc.get("videos", {})
    if not isinstance(raw_videos, Mapping):
        raise DatasetError(path, "videos", "must be an object: clip path -> [[first, last], ...]")
    clips = tuple(_clip(root, path, str(k), v) for k, v in raw_videos.items())
    if not faces and not clips:
        raise DatasetError(path, "faces", "the set holds no face and no clip")
    return LabelledSet(root, faces, clips)


def _face(root: Path, path: Path, i: int, raw: Any) -> LabelledFace:
    where = f"faces[{i}]"
    if not isinstance(raw, Mapping):
        raise DatasetError(path, where, "must be an object")
    image, identity, box, flags = raw.get("image"), raw.get("identity"), raw.get("box"), raw.get("flags", [])
    if not isinstance(image, str) or not image:
        raise DatasetError(path, f"{where}.image", "must be a path under the set")
    if not (root / image).is_file():
        raise DatasetError(path, f"{where}.image", f"no file {root / image}")
    if not isinstance(identity, str) or not identity:
        raise DatasetError(path, f"{where}.identity", "must be a non-empty string")
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
        raise DatasetError(path, f"{where}.box", "must be [x0, y0, x1, y1] numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise DatasetError(path, f"{where}.box", f"{box}: x1 > x0 and y1 > y0 needed")
    if not isinstance(flags, list) or not all(isinstance(x, str) for x in flags):
        raise DatasetError(path, f"{where}.flags", "must be a list of strings")
    return LabelledFace(image, (x0, y0, x1, y1), identity, tuple(flags))


def _clip(root: Path, path: Path, clip: str, raw: Any) -> LabelledClip:
    where = f"videos[{clip!r}]"
    if not (root / clip).is_file():
        raise DatasetError(path, where, f"no file {root / clip}")
    if not isinstance(raw, list):
        raise DatasetError(path, where, "must be a list of [first, last] frame ranges")
    ranges = []
    for j, r in enumerate(raw):
        if (not isinstance(r, list) or len(r) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in r) or not 0 <= r[0] <= r[1]):
            raise DatasetError(path, f"{where}[{j}]", f"{r!r}: must be [first, last] frames, 0 <= first <= last")
        ranges.append((int(r[0]), int(r[1])))
    return LabelledClip(clip, tuple(ranges))
