"""A clone needs nothing beside it: the tests and benchmarks read only what the repository holds (issue 12).

Two checks: no source in the project points outside the checkout by default (a reference to a sibling
`shared/` folder, the checkout's parent, or an absolute home of someone else's machine), and the development
set resolves inside the repository and matches its checksums. `.ci/run` also hides any `shared/` folder beside
the clone while the suite runs, so a dependency that slips past these patterns fails CI, not a user.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from devset import DEVSET, REPO, DevsetMissingError, locate_devset

SOURCES = ("edge", "provisioning", "tests", "bench", "scripts", "models", "hw", "systemd", ".ci")
TEXT_SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".json", ".service", ".timer", ".conf", ""}
SIBLING = "shared"  # the folder CI machines lay beside the clone; named once, so this file holds no path to it
OUTSIDE = [
    (re.compile(r"\.\./" + SIBLING + r"\b"), f"a sibling {SIBLING} folder"),
    (re.compile(rf"""["']{SIBLING}["']\s*/|/\s*["']{SIBLING}["']"""), f"a path through a folder named {SIBLING}"),
    (re.compile(r"\bREPO\.parent\b|\bROOT\.parent\b"), "the checkout's parent folder"),
    (re.compile(r"""["']/(work|home|root)/"""), "an absolute path on a developer's machine"),
]


def project_sources() -> list[Path]:
    files = []
    for top in SOURCES:
        for path in (REPO / top).rglob("*"):
            if (path.is_file() and path.suffix in TEXT_SUFFIXES and "data" not in path.relative_to(REPO).parts
                    and ".build" not in path.parts and "__pycache__" not in path.parts):
                files.append(path)
    return files


def test_no_source_points_outside_the_checkout() -> None:
    allowed = {Path(__file__).resolve(), REPO / ".ci" / "run"}  # this file's patterns; CI's lines that hide the folder
    found = []
    for path in project_sources():
        if path.resolve() in allowed:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {what}: {line.strip()}")
    assert len(project_sources()) > 100  # the scan saw the tree
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for() -> None:
    samples = [f'REPO.parent / "{SIBLING}" / "data" / "devset"', "see ../" + SIBLING + "/data/devset",
               "Path('/work/" + SIBLING + "/data')", f'root / "{SIBLING}" / "data"']
    for sample in samples:
        assert any(p.search(sample) for p, _ in OUTSIDE), sample


def test_devset_resolves_inside_the_repository_and_matches_its_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_DEVSET", raising=False)
    path = locate_devset()
    assert path == DEVSET and path.resolve().is_relative_to(REPO.resolve())
    sums = (path / "SHA256SUMS").read_text().splitlines()
    assert len(sums) >= 20
    for line in sums:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest, name
    listed = {line.split(maxsplit=1)[1].removeprefix("./") for line in sums}
    held = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert held == listed  # every file is accounted for in tests/data/README.md's table and the sums


def test_a_missing_set_names_the_command_that_restores_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DEVSET", str(tmp_path / "nowhere"))
    with pytest.raises(DevsetMissingError, match="unset EDGE_DEVSET"):
        locate_devset()
    # From a copy of the locator in a tree without the data: the message is the restore command, no foreign path.
    tree = tmp_path / "clone" / "tests"
    tree.mkdir(parents=True)
    (tree / "devset.py").write_text((REPO / "tests" / "devset.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "EDGE_DEVSET"}
    proc = subprocess.run([sys.executable, "-c", "import devset; devset.locate_devset()"], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "git checkout HEAD -- tests/data" in proc.stderr
    assert str(tmp_path) not in proc.stderr.splitlines()[-1]
