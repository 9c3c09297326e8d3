"""The wheel set the arm64 root installs offline: the project's wheel, built from the checkout, and its
dependencies as aarch64 wheels for bookworm's CPython 3.11.

`pip download --platform` takes tags literally: a wheel tagged manylinux_2_27_aarch64 (ai-edge-litert 2.3.0)
is found only if that exact tag is listed, else pip falls back silently to an older release (ai-edge-litert
1.4.0). So every manylinux_2_N_aarch64 from 2_17 (manylinux2014) to bookworm's glibc 2.36 is listed. The
versions are pinned to the checkout's venv (`pip freeze`), so both architectures run the same releases.

A release with no Linux wheel at all (SOURCE_ONLY) is built here from its sdist as pure Python: the fallback
its own setup.py takes when no compiler is present, and what pip gives a device without build tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GLIBC_OLDEST = 17  # manylinux2014
GLIBC_BOOKWORM = 36  # Debian 12's glibc 2.36
SOURCE_ONLY = ("cobs",)  # sdist only on PyPI (its wheels are Windows'); its C extension is optional


class WheelSetError(Exception):
    """Building the project's wheel or downloading a dependency failed (names the log)."""


@dataclass(frozen=True)
class WheelTarget:
    """The interpreter and platform the wheels are for."""

    python_version: str = "3.11"
    abi: str = "cp311"
    machine: str = "aarch64"
    glibc_minor: int = GLIBC_BOOKWORM

    def platforms(self) -> list[str]:
        tags = [f"manylinux_2_{n}_{self.machine}" for n in range(GLIBC_OLDEST, self.glibc_minor + 1)]
        return [f"manylinux2014_{self.machine}", *tags]

    def download_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp",
                "--abi", self.abi]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args


@dataclass(frozen=True)
class WheelSet:
    """A directory holding the project's wheel and every wheel it needs."""

    directory: Path
    project: Path


def release_files(checkout: Path) -> list[str]:
    """The checkout's files as a release sees them: tracked or new, not ignored, not deleted."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=checkout,
                         capture_output=True, check=True).stdout
    return [n for n in out.decode().split("\0") if n and (checkout / n).is_file()]


def build_project_wheel(checkout: Path, python: Path, out: Path, log: Path) -> Path:
    """`python -m build --wheel` on a copy of the checkout (the build writes build/ and egg-info)."""
    with tempfile.TemporaryDirectory(prefix="arm64-tree-") as tmp:
        tree = Path(tmp)
        for name in release_files(checkout):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / name, tree / name)
        _logged([str(python), "-m", "build", "--wheel", "--outdir", str(out), str(tree)], log, "building the wheel")
    wheels = sorted(out.glob("edge_face_node-*.whl"))
    if len(wheels) != 1:
        raise WheelSetError(f"expected one edge_face_node wheel in {out}, found {len(wheels)}")
    return wheels[0]


def pinned_versions(python: Path, out: Path) -> Path:
    """The checkout venv's releases as a pip constraints file."""
    freeze = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                            text=True, check=True).stdout
    out.write_text("".join(line + "\n" for line in freeze.splitlines() if line and not line.startswith("#")))
    return out


def pure_wheel(name: str, python: Path, constraints: Path, directory: Path, log: Path) -> Path:
    """`name`'s pinned sdist built as a pure-Python wheel: with no C compiler (CC=false) its setup.py drops the
    optional extension."""
    with tempfile.TemporaryDirectory(prefix="arm64-sdist-") as tmp:
        _logged([str(python), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", tmp,
                 "--constraint", str(constraints), name], log, f"downloading {name}'s sdist")
        (sdist,) = Path(tmp).iterdir()
        _logged([str(python), "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--wheel-dir", str(directory),
                 str(sdist)], log, f"building {name} as pure Python", env=os.environ | {"CC": "false"})
    built = sorted(directory.glob(f"{name}-*-py3-none-any.whl"))
    if len(built) != 1:
        raise WheelSetError(f"{name}: no pure-Python wheel was built from {sdist.name} (log: {log})")
    return built[0]


def download(project: Path, python: Path, target: WheelTarget, directory: Path, log: Path) -> WheelSet:
    """The project's wheel and its dependencies for `target` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    constraints = pinned_versions(python, directory.parent / "constraints.txt")
    for name in SOURCE_ONLY:
        pure_wheel(name, python, constraints, directory, log)
    _logged([str(python), "-m", "pip", "download", "--dest", str(directory), "--find-links", str(directory),
             *target.download_args(), "--constraint", str(constraints), str(project)], log,
            f"pip download for {target.machine}")
    return WheelSet(directory, directory / project.name)


def _logged(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        done = subprocess.run(["nice", "-n", "10", *argv], stdout=out, stderr=subprocess.STDOUT, check=False,
                              env=env)
    if done.returncode != 0:
        raise WheelSetError(f"{what} exited {done.returncode} (log: {log})")
