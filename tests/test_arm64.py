"""The arm64 proof (hw/arm64/proof, docs/arm64.md).

Its agreement check runs always, on the real `edge-node faces --json` output of bundled photos: it must pass
two identical runs and name the image and face when a box, an embedding or the face count differs. The
emulated part runs only when asked for (EDGE_ARM64_CACHE names the proof's cache) and the proof's root
filesystem is already built there (it takes minutes to build): the arm64 root shows the Cortex-A72 cpuinfo,
and the whole proof passes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
HW = ROOT / "hw" / "arm64"
PHOTOS = [ROOT / "edge" / "demo" / "footage" / name for name in ("multi_face.jpg", "obama2.jpg")]


def _module(name: str) -> ModuleType:
    """A module of hw/arm64 (not a package: the proof puts its own directory on sys.path)."""
    if str(HW) not in sys.path:
        sys.path.insert(0, str(HW))
    spec = importlib.util.spec_from_file_location(name, HW / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


agreement = _module("agreement")


@pytest.fixture(scope="module")
def faces_json() -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "edge-node"), "faces", "--json", *map(str, PHOTOS)],
                          capture_output=True, text=True, check=True)
    return done.stdout


def _edited(text: str, image: int, edit: object) -> str:
    """The run's output with one image's document changed by `edit` (a callable on the parsed document)."""
    lines = text.splitlines()
    doc = json.loads(lines[image])
    edit(doc)  # type: ignore[operator]
    lines[image] = json.dumps(doc)
    return "\n".join(lines)


def test_identical_runs_agree(faces_json: str) -> None:
    run = agreement.parse_faces(faces_json, "x86_64")
    assert set(run) == {p.name for p in PHOTOS}
    result = agreement.compare_runs(run, run)
    assert result.images == 2 and result.faces == sum(len(i.faces) for i in run.values()) > 2
    assert result.min_iou == 1.0 and result.min_cosine == pytest.approx(1.0)


def test_a_moved_box_is_named(faces_json: str) -> None:
    def shift(doc: dict) -> None:  # type: ignore[type-arg]
        box = doc["faces"][0]["box"]
        width = box[2] - box[0]
        doc["faces"][0]["box"] = [box[0] + 0.01 * width, box[1], box[2] + 0.01 * width, box[3]]  # IoU ~0.98

    arm = agreement.parse_faces(_edited(faces_json, 1, shift), "arm64")
    with pytest.raises(agreement.DisagreementError, match=r"obama2.jpg face 0: box IoU 0\.98\d+ < 0.99"):
        agreement.compare_runs(arm, agreement.parse_faces(faces_json, "x86_64"))


def test_a_changed_embedding_is_named(faces_json: str) -> None:
    def bend(doc: dict) -> None:  # type: ignore[type-arg]
        emb = doc["faces"][0]["embedding"]
        emb[0] += 0.06  # unit vector, one component moved: cosine about 0.998

    arm = agreement.parse_faces(_edited(faces_json, 1, bend), "arm64")
    with pytest.raises(agreement.DisagreementError, match=r"obama2.jpg face 0: embedding cosine 0\.99[0-8]\d+ <"):
        agreement.compare_runs(arm, agreement.parse_faces(faces_json, "x86_64"))


def test_a_missing_face_and_a_failed_image_are_named(faces_json: str) -> None:
    ref = agreement.parse_faces(faces_json, "x86_64")
    fewer = agreement.parse_faces(_edited(faces_json, 0, lambda d: d["faces"].pop()), "arm64")
    n = len(ref["multi_face.jpg"].faces)
    with pytest.raises(agreement.DisagreementError, match=f"multi_face.jpg: {n - 1} faces on arm64, {n} on x86_64"):
        agreement.compare_runs(fewer, ref)
    other = agreement.parse_faces(_edited(faces_json, 1, lambda d: d["model"].update(sha256="0" * 64)), "arm64")
    with pytest.raises(agreement.DisagreementError, match=r"obama2\.jpg: embedder sha256 000000000000 on arm64"):
        agreement.compare_runs(other, ref)
    failed = '{"image": "/x/obama2.jpg", "error": "cannot decode"}'
    with pytest.raises(agreement.FacesOutputError, match=r"arm64 faces output line 1: .*obama2\.jpg: cannot decode"):
        agreement.parse_faces(failed, "arm64")
    with pytest.raises(agreement.DisagreementError, match="no faces found"):
        empty = agreement.parse_faces(_edited(faces_json, 0, lambda d: d["faces"].clear()), "x")
        only = {"multi_face.jpg": empty["multi_face.jpg"]}
        agreement.compare_runs(only, only)


# --- under emulation: only where the root filesystem is already built ---------------------------------------

def _cached_root() -> tuple[Path, Path]:
    rootfs = _module("rootfs")
    if "EDGE_ARM64_CACHE" not in os.environ:  # opt-in: a cache left on a CI machine must not add minutes to CI
        pytest.skip("the arm64 proof is a release check (docs/arm64.md): set EDGE_ARM64_CACHE to its --cache "
                    "directory (default ~/.cache/edge-node/arm64) to run its emulated tests")
    cache = Path(os.environ["EDGE_ARM64_CACHE"])
    try:
        tree = rootfs.RootfsCache(cache).path(rootfs.RootfsSpec())
    except rootfs.RootfsBuildError as exc:
        pytest.skip(f"no arm64 proof here: {exc}")
    if not tree.is_dir():
        pytest.skip(f"no prebuilt arm64 root filesystem at {tree}: build it with hw/arm64/proof "
                    f"(about 20 min: sudo hw/arm64/proof --cache {cache})")
    if os.geteuid() != 0:
        pytest.skip("the arm64 proof chroots: needs root")
    return cache, tree


def test_emulated_root_sees_an_arm64_cpu() -> None:
    """The trap: qemu-user shows the host's x86 cpuinfo unless the Cortex-A72 one is bound over it."""
    _, tree = _cached_root()
    emulation = _module("emulation")
    emulation.ensure_binfmt()
    bound = emulation.Chroot(tree).run(["sh", "-c", "uname -m; cat /proc/cpuinfo"], timeout=300)
    assert bound.returncode == 0, bound.stderr
    assert bound.stdout.startswith("aarch64\n") and "CPU part\t: 0xd08" in bound.stdout
    host = emulation.Chroot(tree, cpuinfo=None).run(["cat", "/proc/cpuinfo"], timeout=300)
    assert host.returncode == 0 and "CPU part" not in host.stdout and "vendor_id" in host.stdout


def test_proof_passes_on_the_cached_root(tmp_path: Path) -> None:
    """The whole proof (minutes under emulation): install offline, faces agree with x86_64 with XNNPACK on,
    the demo alerts on the listed person."""
    cache, _ = _cached_root()
    done = subprocess.run([str(HW / "proof"), "--cache", str(cache), "--python", sys.executable],
                          capture_output=True, text=True, timeout=3600, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["rootfs", "wheels", "install", "faces", "demo"]
    assert "reused" in lines[0] and "XNNPACK on" in lines[3] and "every alert on WL-2026-0001" in lines[4]
    assert lines[-1].startswith("proof: ok")
