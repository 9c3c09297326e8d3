"""Model integrity and runtime selection: a changed model file or a missing delegate is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from edge.vision.errors import (
    DelegateUnavailableError,
    ModelIntegrityError,
    ModelLoadError,
    ModelManifestError,
)
from edge.vision.manifest import default_models_dir, load_manifest
from edge.vision.runtime import Delegate, RuntimeConfig, TfliteModel
from provisioning.cli import main as fleet_main


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    dst.mkdir()
    src = default_models_dir()
    manifest = load_manifest(src)
    for spec in manifest.models.values():
        shutil.copy(src / spec.file, dst / spec.file)
    shutil.copy(src / "MANIFEST.json", dst / "MANIFEST.json")
    return dst


def test_every_shipped_model_matches_its_manifest() -> None:
    manifest = load_manifest()
    for mid in manifest.models:
        assert len(manifest.verified_bytes(mid)) > 100_000
    assert manifest.spec(manifest.default_embedder).variant == "int8"


def test_corrupted_model_is_refused_naming_the_file(models_copy: Path) -> None:
    manifest = load_manifest(models_copy)
    path = models_copy / manifest.spec(manifest.default_embedder).file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as err:
        FaceAnalyzer(VisionConfig(models_dir=models_copy))
    assert str(path) in str(err.value) and "sha256" in str(err.value)
    assert fleet_main(["models", "verify", "--models-dir", str(models_copy)]) == 1


def test_missing_model_file_is_refused(models_copy: Path) -> None:
    manifest = load_manifest(models_copy)
    (models_copy / manifest.spec(manifest.default_detector).file).unlink()
    with pytest.raises(ModelIntegrityError, match="file missing"):
        FaceAnalyzer(VisionConfig(models_dir=models_copy))


def test_manifest_field_errors_name_the_field(models_copy: Path) -> None:
    doc = json.loads((models_copy / "MANIFEST.json").read_text())
    del doc["models"]["dlib-resnet-v1-int8"]["alignment"]["template"]
    (models_copy / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(ModelManifestError,
                       match=r"models\.dlib-resnet-v1-int8\.alignment\.template: missing"):
        load_manifest(models_copy)
    (models_copy / "MANIFEST.json").write_text("{not json")
    with pytest.raises(ModelManifestError, match=r"MANIFEST\.json: unreadable"):
        load_manifest(models_copy)


def test_missing_delegate_is_named_or_falls_back() -> None:
    manifest = load_manifest()
    content = manifest.verified_bytes(manifest.default_detector)
    with pytest.raises(DelegateUnavailableError, match=r"libedgetpu\.so\.1"):
        TfliteModel(content, "det", RuntimeConfig(delegate=Delegate.EDGETPU))
    with pytest.raises(DelegateUnavailableError, match=r"/nonexistent/libgpu\.so"):
        TfliteModel(content, "det",
                    RuntimeConfig(delegate=Delegate.GPU, delegate_library="/nonexistent/libgpu.so"))
    model = TfliteModel(content, "det", RuntimeConfig(delegate=Delegate.EDGETPU, fallback_to_cpu=True))
    assert model.delegate is Delegate.XNNPACK
    model.invoke()


def test_reference_cpu_kernels_agree_with_xnnpack() -> None:
    manifest = load_manifest()
    content = manifest.verified_bytes(manifest.default_detector)
    outs = []
    for delegate in (Delegate.XNNPACK, Delegate.CPU):
        model = TfliteModel(content, "det", RuntimeConfig(delegate=delegate))
        view = model.input_view()
        view[:] = np.linspace(-1, 1, view.size, dtype=np.float32).reshape(view.shape)
        del view
        model.invoke()
        outs.append(model.output(0))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-3)


def test_manifest_that_disagrees_with_the_model_is_a_load_error(models_copy: Path) -> None:
    doc = json.loads((models_copy / "MANIFEST.json").read_text())
    detector = doc["models"]["blazeface-full-range"]
    embedder = doc["models"]["dlib-resnet-v1-int8"]
    # a detector file posing as the embedder
    embedder["file"], embedder["sha256"] = detector["file"], detector["sha256"]
    (models_copy / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=r"dlib-resnet-v1-int8: model input 192 px / output .* differ"):
        FaceAnalyzer(VisionConfig(models_dir=models_copy))


E = "dlib-resnet-v1-int8"


def _set(doc: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = doc["models"][E]
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("metric", "euclidean", r"models\.dlib-resnet-v1-int8\.metric: 'euclidean' is not one the node implements "
                            r"\(cosine\)"),
    ("output.normalisation", DELETE, r"models\.dlib-resnet-v1-int8\.output\.normalisation: missing"),
    ("output.normalisation", "none", r"output\.normalisation: 'none' is not one the node implements \(l2\)"),
    ("training_data.licence", DELETE, r"models\.dlib-resnet-v1-int8\.training_data\.licence: missing"),
    ("training_data", DELETE, r"models\.dlib-resnet-v1-int8\.training_data: missing"),
    ("match.floor_from", DELETE, r"models\.dlib-resnet-v1-int8\.match\.floor_from: missing"),
    ("match.floor_from.date", DELETE, r"match\.floor_from\.date: missing"),
    ("match.floor_from.calibration", None, r"match\.floor: 0\.94 has no calibration behind it"),
    ("match.floor", 0.97, r"match: floor 0\.97 is above threshold 0\.94"),
    ("match.threshold", 94, r"must be cosine scores in \(0, 1\]"),
    ("alignment.size", 112, r"alignment\.size: 112 differs from input\.size 150"),
    ("alignment.points", ["nose tip", "image-left eye", "image-right eye", "mouth centre"],
     r"alignment\.points: .* the detector gives \['image-left eye', 'image-right eye', 'nose tip', 'mouth centre'\]"),
    ("alignment.template", [[1, 2], [3, 4], [5, 6]], r"alignment\.template: expected 4 \[x, y\] points"),
])
def test_bad_embedder_declaration_names_the_field(models_copy: Path, path: str, value: object,
                                                  message: str) -> None:
    doc = json.loads((models_copy / "MANIFEST.json").read_text())
    _set(doc, path, value)
    (models_copy / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(ModelManifestError, match=message) as err:
        load_manifest(models_copy)
    assert str(models_copy / "MANIFEST.json") in str(err.value)


def test_every_embedder_declares_what_a_replacement_must(models_copy: Path) -> None:
    manifest = load_manifest(models_copy)
    for spec in manifest.models.values():
        if spec.role != "embedder":
            continue
        assert spec.alignment is not None and spec.alignment.size == spec.input_size
        assert (spec.normalisation, spec.metric) == ("l2", "cosine")
        assert spec.training_data is not None and spec.training_data.licence and spec.licence
        src = spec.floor_source
        assert src is not None and src.calibration is not None  # every shipped embedder is calibrated
        record = json.loads((default_models_dir() / src.calibration).read_text())
        assert (record["model_id"], record["model_sha256"], record["when"]) == (spec.id, spec.sha256, src.date)
        assert spec.match_threshold is not None and spec.threshold_floor is not None
        assert spec.threshold_floor <= spec.match_threshold
