"""The node as an admin installs it: `python -m build` makes the sdist from the working tree and the wheel from
that sdist, pip installs the wheel (not editable) into a fresh venv, and its commands run from outside the
checkout. One build and one venv serve the whole module (building and installing take most of its time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS_DATA = "share/edge-node/models"  # pyproject.toml [tool.setuptools.data-files]


@dataclass(frozen=True)
class Release:
    """What a release build produced and where it is installed."""

    sdist: Path
    wheel: Path
    venv: Path
    outside: Path  # a working directory away from the checkout, with its own HOME

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("EDGE_MODELS_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
        return env | {"HOME": str(self.outside), "XDG_STATE_HOME": str(self.outside / "state")}

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / tool), *args], cwd=self.outside, env=self.env(),
                              capture_output=True, text=True, timeout=600, check=False)


def tree_files(*, under: str = "") -> set[str]:
    """The checkout's files as a release sees them: tracked or new, not ignored, not deleted."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", under or "."],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return {name for name in out.decode().split("\0") if name and (ROOT / name).is_file()}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    work = tmp_path_factory.mktemp("release")
    tree = work / "tree"  # a copy: the build writes build/ and egg-info, which must not touch the checkout
    for name in tree_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(tree)], check=True,
                   capture_output=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (wheel,) = dist.glob("edge_face_node-*.whl")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True)
    outside = work / "outside"
    outside.mkdir()
    (sdist,) = dist.glob("edge_face_node-*.tar.gz")
    yield Release(sdist, wheel, venv, outside)


def test_wheel_carries_schemas_demo_and_models(release: Release) -> None:
    names = set(zipfile.ZipFile(release.wheel).namelist())
    assert {n for n in tree_files(under="edge/events/schemas")} <= names
    assert {n for n in tree_files(under="edge/demo") if not n.endswith(".py")} <= names
    data = f"edge_face_node-{release.wheel.name.split('-')[1]}.data/data/{MODELS_DATA}/"
    manifest = json.loads((ROOT / "models" / "MANIFEST.json").read_text())
    wanted = {"MANIFEST.json", "LICENSES.md", *(m["file"] for m in manifest["models"].values())}
    assert {data + f for f in wanted} <= names
    assert not any(n.startswith(("tests/", "models/")) for n in names)  # the models only as the data dir


def test_sdist_holds_what_a_rebuild_needs(release: Release) -> None:
    """The wheel above was built from this sdist; beside it, what the models, the units and the docs need."""
    with tarfile.open(release.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    needed = {"pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "scripts/bootstrap"}
    for under in ("edge", "provisioning", "models", "systemd", "hw", "docs"):
        needed |= {n for n in tree_files(under=under) if not n.startswith("models/.build/")}
    assert needed - names == set()
    assert not any(n.startswith("tests/") for n in names)


def test_installed_node_verifies_models_and_runs_the_demo(release: Release) -> None:
    where = release.run("python", "-c", "import edge, edge.vision.manifest as m; print(edge.__file__); "
                        "print(m.default_models_dir())")
    code_file, models_dir = where.stdout.split()
    assert Path(code_file).is_relative_to(release.venv) and not Path(code_file).is_relative_to(ROOT)
    assert Path(models_dir) == release.venv / MODELS_DATA

    verify = release.run("edge-fleet", "models", "verify")
    assert verify.returncode == 0, verify.stderr
    lines = verify.stdout.splitlines()
    assert len(lines) == len(json.loads((ROOT / "models" / "MANIFEST.json").read_text())["models"])
    assert all(line.endswith(": ok") for line in lines)

    demo = release.run("edge-node", "demo")
    assert demo.returncode == 0, demo.stderr
    state = release.outside / "state" / "edge-node" / "demo"
    entries = json.loads((state / "fleet" / "watchlists" / "demo" / "entries.json").read_text())
    obama = next(e["id"] for e in entries["entries"] if e["reference"] == "WL-2026-0001")
    assert [json.loads(line)["entry_id"] for line in demo.stdout.splitlines()] == [obama, obama]
    assert "2 alerts" in demo.stderr


def test_installed_commands_fail_in_one_line(release: Release) -> None:
    """A broken demo directory (a FleetError deep in the fleet code) and a models directory without a manifest:
    exit 2 and one line naming the file, never a traceback."""
    broken = release.outside / "broken-demo"
    (broken / "fleet").mkdir(parents=True)
    (broken / "fleet" / "fleet.json").write_text("{not json")
    empty = release.outside / "no-models"
    empty.mkdir()
    cases = [
        (release.run("edge-node", "demo", "--demo-dir", str(broken)), "edge-node demo: FleetError: ", broken),
        (release.run("edge-node", "demo", "--models-dir", str(empty)), "edge-node demo: ModelManifestError: ", empty),
        (release.run("edge-fleet", "models", "verify", "--models-dir", str(empty)), "edge-fleet models: ", empty),
    ]
    for proc, prefix, path in cases:
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        last = proc.stderr.splitlines()[-1]
        assert last.startswith(prefix) and str(path) in last, proc.stderr
