"""The canary test's leak detector: searches bytes (files, logs, MQTT payloads, decrypted rows, memory) for
any trace of the canary faces described by `canary_footage.Needles`.

What counts as a trace, and how each is looked for:
- marker blocks: rows of each 16x16 block as RGB, BGR and grey bytes, and as hex text (a raw dump of a frame
  or of an unscaled crop, in any channel order);
- embeddings: every 8-byte window of each canary face's float32 embedding (byte-exact, at any offset), and a
  vector search that finds any 128 consecutive values correlating >= 0.98 with a canary embedding when the
  bytes are read as float64, float32, float16 or int8 at every alignment, or as decimal numbers in text (so a
  re-computed, rounded, quantised or printed copy is found as well);
- scores: each canary face's cosine against every gallery entry as text at 4-6 decimals anywhere, at 2-3
  decimals next to a score-like word, and as bytes (the matcher's float32 row, float64 singles);
- images: every JPEG and PNG (found by signature at any offset, also inside base64, hex or gzip) is decoded,
  searched for marker rows (lossless formats keep them) and run through the project's `FaceAnalyzer`; each
  face in it is compared with the canary faces and the listed face (a crop or context image of a canary
  face embeds at >= 0.98 with it, two different people in the development set at <= 0.955).

Text encodings are unwrapped before searching: base64 (standard and URL-safe, every alignment), hex, gzip and
zlib streams, to a depth of two.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from canary_footage import Needles, score_renderings

from edge.vision.analyzer import FaceAnalyzer

VECTOR_MIN_CORR = 0.98  # a copy of an embedding, however rounded or quantised, correlates ~1.0 with it
CANARY_FACE_SIM = 0.93  # a face this close to a canary face is taken for it (crops measured >= 0.98)
LISTED_FACE_SIM = 0.93  # ... and this close to the listed face, and clearly closer to it than to any canary
MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 2
_B64 = re.compile(rb"[A-Za-z0-9+/_-]{32,}={0,2}")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2}){24,}")
_NUMBER = re.compile(rb"-?\d+\.\d+(?:[eE][-+]?\d+)?")
_SCORE_WORDS = rb"(?:score|similar\w*|cosine|cos|margin|runner\w*|best|dist\w*|confidence|prob\w*|match\w*)"
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


@dataclass(frozen=True)
class Finding:
    """One trace of a canary face: what kind, where (file, payload, row; offset), which face or marker."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}: {self.detail}"


@dataclass(frozen=True)
class FaceSeen:
    """A face in an image found somewhere, with what it is closest to."""

    where: str
    nearest_canary: str
    canary_sim: float
    listed_sim: float

    @property
    def verdict(self) -> str:
        if self.canary_sim >= CANARY_FACE_SIM:
            return "canary"
        if self.listed_sim >= LISTED_FACE_SIM and self.listed_sim - self.canary_sim >= 0.05:
            return "listed"
        return "unknown"

    def __str__(self) -> str:
        return (f"face in {self.where}: {self.verdict} (nearest canary {self.nearest_canary} at "
                f"{self.canary_sim:.3f}, listed face at {self.listed_sim:.3f})")


@dataclass(frozen=True)
class ImageSeen:
    where: str
    shape: tuple[int, ...]
    faces: tuple[FaceSeen, ...]


@dataclass
class LeakSearch:
    """Accumulates findings over everything it is given."""

    needles: Needles
    analyzer: FaceAnalyzer
    listed: np.ndarray | None = None  # the listed person's embedding (the second run), else None
    allowed_numbers: frozenset[str] = frozenset()  # renderings that are legitimately there (an alert's score)
    findings: list[Finding] = field(default_factory=list)
    images: list[ImageSeen] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    bytes_searched: int = 0

    def __post_init__(self) -> None:
        e = self.needles.embeddings.astype(np.float64)
        centred = e - e.mean(axis=1, keepdims=True)
        self._centred = (centred / np.linalg.norm(centred, axis=1, keepdims=True)).astype(np.float32)
        self._dim = int(e.shape[1])
        self._window_keys = np.array(sorted(int.from_bytes(k, "little") for k in self.needles.embedding_windows),
                                     np.uint64)
        self._window_label = {int.from_bytes(k, "little"): v for k, v in self.needles.embedding_windows.items()}
        by_text: dict[str, str] = {}
        short: dict[str, str] = {}
        for label, value in self.needles.score_values:
            for r in score_renderings(value):
                (short if len(r.split(".")[1]) < 4 else by_text).setdefault(r, label)
        self._score_long = by_text
        self._score_short = short
        self._long_re = self._alternation(by_text)
        self._short_re = None if not short else re.compile(
            rb"(?i)" + _SCORE_WORDS + rb"[^0-9\n]{0,24}?(?<![\d.])(" +
            b"|".join(re.escape(s.encode()) for s in sorted(short, key=len, reverse=True)) + rb")(?!\d)")

    @staticmethod
    def _alternation(texts: Iterable[str]) -> re.Pattern[bytes] | None:
        items = sorted(texts, key=len, reverse=True)
        if not items:
            return None
        return re.compile(rb"(?<![\d.])(" + b"|".join(re.escape(s.encode()) for s in items) + rb")(?!\d)")

    # -- entry points ----------------------------------------------------------------------------------------
    def tree(self, root: Path, skip: Iterable[Path] = ()) -> None:
        skipped = [p.resolve() for p in skip]
        if not root.exists():
            return
        for path in sorted(root.rglob("*")):
            if any(path.resolve().is_relative_to(s) for s in skipped):
                continue
            if path.is_file() and not path.is_symlink():
                self.file(path)

    def file(self, path: Path, exact_only: bool = False, may_vanish: bool = False) -> None:
        """`exact_only`: only traces unique to this test session (markers, the exact bytes of embeddings and
        scores), for places other processes write to at the same time; `may_vanish`: such a place's files may
        be deleted while the search runs."""
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                self.findings.append(Finding("unsearched", str(path), f"{size} bytes: larger than the search limit"))
                return
            data = path.read_bytes()
        except FileNotFoundError:
            if may_vanish:
                return
            raise
        except OSError as exc:
            self.findings.append(Finding("unsearched", str(path), f"unreadable: {exc}"))
            return
        self.blob(data, str(path), exact_only=exact_only)

    def blob(self, data: bytes, where: str, depth: int = 0, exact_only: bool = False) -> None:
        if depth == 0:
            self.searched.append(where)
        self.bytes_searched += len(data)
        self._markers(data, where)
        self._embedding_bytes(data, where)
        self._score_bytes(data, where)
        if not exact_only:
            self._score_text(data, where)
            self._vectors(data, where)
            self._images(data, where, depth)
        if depth < MAX_DEPTH:
            for inner, how in self._unwrapped(data):
                self.blob(inner, f"{where} ({how})", depth + 1, exact_only)

    def array(self, arr: np.ndarray, where: str) -> None:
        """A buffer in memory: bytes and vectors (its own dtype included)."""
        self.searched.append(where)
        if not arr.any():
            return  # zero everywhere: nothing to find
        data = np.ascontiguousarray(arr).tobytes()
        self.bytes_searched += len(data)
        self._markers(data, where)
        self._embedding_bytes(data, where)
        self._score_bytes(data, where)
        self._vectors(data, where)
        if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 32 and arr.any():
            self._faces(np.ascontiguousarray(arr), where)

    # -- the searches ----------------------------------------------------------------------------------------
    def _markers(self, data: bytes, where: str) -> None:
        hits: dict[str, int] = {}
        for label, row in self.needles.marker_rows:
            at = data.find(row)
            if at >= 0 and label not in hits:
                hits[label] = at
        for label, at in hits.items():
            self.findings.append(Finding("marker", f"{where} @{at}", label))

    def _embedding_bytes(self, data: bytes, where: str) -> None:
        seen: set[str] = set()
        for off in range(4):
            n = (len(data) - off) // 4
            if n < 2:
                break
            u = np.frombuffer(data, "<u4", count=n, offset=off).astype(np.uint64)
            keys = u[:-1] | (u[1:] << np.uint64(32))
            hit = np.nonzero(np.isin(keys, self._window_keys))[0]
            for i in hit[:16]:
                label = self._window_label[int(keys[i])]
                if label not in seen:
                    seen.add(label)
                    self.findings.append(Finding("embedding-bytes", f"{where} @{off + 4 * int(i)}",
                                                 f"float32 bytes of {label}"))

    def _score_bytes(self, data: bytes, where: str) -> None:
        for label, needle in self.needles.score_bytes:
            at = data.find(needle)
            if at >= 0:
                self.findings.append(Finding("score-bytes", f"{where} @{at}", label))

    def _score_text(self, data: bytes, where: str) -> None:
        for pattern, table in ((self._long_re, self._score_long), (self._short_re, self._score_short)):
            if pattern is None:
                continue
            seen: set[str] = set()
            for m in pattern.finditer(data):
                text = m.group(1).decode()
                if text in self.allowed_numbers or text in seen:
                    continue
                seen.add(text)  # the first place each value is found (a log repeats it per frame)
                self.findings.append(Finding("score-text", f"{where} @{m.start(1)}",
                                             f"{text!r} = score of {table[text]}"))

    def _vectors(self, data: bytes, where: str) -> None:
        d = self._dim
        views: list[tuple[str, np.ndarray]] = []
        for dtype, width in (("<f8", 8), ("<f4", 4), ("<f2", 2), ("i1", 1)):
            for off in range(width):
                n = (len(data) - off) // width
                if n >= d:
                    views.append((f"{np.dtype(dtype).name}+{off}", np.frombuffer(data, dtype, count=n, offset=off)))
        numbers = _NUMBER.findall(data)
        if len(numbers) >= d:
            views.append(("decimal text", np.array([float(x) for x in numbers], np.float64)))
        for how, raw in views:
            seen: set[str] = set()
            for pos, label, corr in self._correlate(raw):
                if label not in seen:
                    seen.add(label)
                    self.findings.append(Finding("embedding-vector", f"{where} @{how}[{pos}]",
                                                 f"{label} (correlation {corr:.4f})"))

    def _correlate(self, raw: np.ndarray) -> list[tuple[int, str, float]]:
        d = self._dim
        with np.errstate(all="ignore"):
            a = raw.astype(np.float64)
            if raw.dtype.kind == "f":
                a[~np.isfinite(a)] = 0.0
                a[np.abs(a) > 1.0] = 0.0  # components of a unit vector; anything else is not one
        nz = np.concatenate([[0], np.cumsum(a != 0)])
        s1 = np.concatenate([[0.0], np.cumsum(a)])
        s2 = np.concatenate([[0.0], np.cumsum(a * a)])
        n = a.size - d + 1
        count = nz[d:d + n] - nz[:n]
        w1 = s1[d:d + n] - s1[:n]
        var = (s2[d:d + n] - s2[:n]) - w1 * w1 / d
        candidates = np.nonzero((count >= 0.9 * d) & (var > 1e-12))[0]
        out: list[tuple[int, str, float]] = []
        if candidates.size == 0:
            return out
        windows = np.lib.stride_tricks.sliding_window_view(a.astype(np.float32), d)
        norms = np.sqrt(var[candidates]).astype(np.float32)
        for start in range(0, candidates.size, 8192):
            idx = candidates[start:start + 8192]
            corr = (windows[idx] @ self._centred.T) / norms[start:start + 8192, None]
            for i, j in zip(*np.nonzero(corr >= VECTOR_MIN_CORR), strict=True):
                if len(out) < 16:
                    out.append((int(idx[i]), self.needles.labels[int(j)], float(corr[i, j])))
        return out

    def _images(self, data: bytes, where: str, depth: int) -> None:
        offsets: list[int] = []
        for sig in IMAGE_SIGNATURES:
            at = data.find(sig)
            while at >= 0 and len(offsets) < 64:
                offsets.append(at)
                at = data.find(sig, at + 1)
        for at in sorted(offsets):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8, offset=at), cv2.IMREAD_COLOR)
            if bgr is None or min(bgr.shape[:2]) < 16:
                continue
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            name = f"{where} @{at} (image {rgb.shape[1]}x{rgb.shape[0]})"
            self._markers(rgb.tobytes(), name)
            self._markers(bgr.tobytes(), name)
            self._faces(rgb, name)
        if b"\x93NUMPY" in data:
            at = data.find(b"\x93NUMPY")
            try:
                arr = np.load(io.BytesIO(data[at:]), allow_pickle=False)
            except (ValueError, OSError, EOFError):
                return
            if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= 16:
                self._faces(np.ascontiguousarray(arr), f"{where} @{at} (npy {arr.shape})")

    def _faces(self, rgb: np.ndarray, where: str) -> None:
        """Every face the analyser finds in the image, as it is and centred on a canvas twice its size (a
        tight crop has too little around the face for the detector)."""
        h, w = rgb.shape[:2]
        canvas = np.full((2 * h, 2 * w, 3), 118, np.uint8)
        canvas[h // 2:h // 2 + h, w // 2:w // 2 + w] = rgb
        embeddings: list[np.ndarray] = []
        for img in (rgb, canvas):
            if max(img.shape[:2]) > 4096:
                continue
            for face in self.analyzer.analyse(img, embed_all=True):
                if face.embedding is not None:
                    embeddings.append(face.embedding.copy())
            self.analyzer.release()
        faces: list[FaceSeen] = []
        kept: list[np.ndarray] = []
        for e in embeddings:
            if any(float(e @ k) > 0.99 for k in kept):
                continue  # the same face found in both views
            kept.append(e)
            sims = self.needles.embeddings @ e
            j = int(np.argmax(sims))
            listed = float(self.listed @ e) if self.listed is not None else -1.0
            faces.append(FaceSeen(where, self.needles.labels[j], float(sims[j]), listed))
        self.images.append(ImageSeen(where, tuple(rgb.shape), tuple(faces)))

    @staticmethod
    def _unwrapped(data: bytes) -> list[tuple[bytes, str]]:
        out: list[tuple[bytes, str]] = []
        for m in _B64.finditer(data):
            run = m.group(0).rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
            if len(set(run[:4096])) < 24:
                continue  # not base64 of anything binary (e.g. a run of one grey level in raw pixels)
            for off in range(4):
                part = run[off:]
                if len(part) % 4 == 1:
                    part = part[:-1]
                part += b"=" * (-len(part) % 4)  # the last group decoded too: a JPEG keeps its end marker
                try:
                    inner = base64.b64decode(part, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if len(inner) >= 24:
                    out.append((inner, f"base64@{m.start()}+{off}"))
        for m in _HEX.finditer(data):
            run = m.group(0)
            if len(set(run[:4096].lower())) < 8:
                continue
            for off in (0, 1):
                part = run[off:]
                out.append((bytes.fromhex(part[: len(part) // 2 * 2].decode()), f"hex@{m.start()}+{off}"))
        for magic, wbits, how in ((b"\x1f\x8b\x08", 16 + zlib.MAX_WBITS, "gzip"), (b"\x78\x9c", zlib.MAX_WBITS, "zlib"),
                                  (b"\x78\xda", zlib.MAX_WBITS, "zlib"), (b"\x78\x01", zlib.MAX_WBITS, "zlib")):
            at, tries = data.find(magic), 0
            while at >= 0 and tries < 32:
                tries += 1
                try:
                    inner = zlib.decompressobj(wbits).decompress(data[at:], MAX_FILE_BYTES)
                except zlib.error:
                    inner = b""
                if len(inner) >= 24:
                    out.append((inner, f"{how}@{at}"))
                at = data.find(magic, at + 1)
        return out

    # -- verdicts --------------------------------------------------------------------------------------------
    def faces(self) -> list[FaceSeen]:
        return [f for img in self.images for f in img.faces]

    def report(self, limit: int = 40) -> str:
        lines = [str(f) for f in self.findings[:limit]]
        lines += [f"image in {img.where}: {', '.join(str(f) for f in img.faces) or 'no face found'}"
                  for img in self.images[:limit]]
        return "\n".join(lines) or "(nothing found)"
