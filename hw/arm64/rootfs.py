"""The Debian bookworm arm64 root filesystem the proof runs in, built by mmdebstrap and cached by its inputs.

A directory tree (no image, no loop device): mmdebstrap runs the arm64 maintainer scripts under qemu-user
through binfmt_misc. The cache key is a hash of everything that decides the tree (suite, architecture,
variant, packages, mirror, mmdebstrap's version), so a changed recipe builds a new tree beside the old one.
The archive moves on (security updates) without changing the key: `--rebuild` builds afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

RECIPE = 1  # bump when the way the tree is made changes beyond RootfsSpec's fields


class RootfsBuildError(Exception):
    """mmdebstrap failed or is missing (names the log)."""


@dataclass(frozen=True)
class RootfsSpec:
    """What goes into the tree."""

    suite: str = "bookworm"
    arch: str = "arm64"
    variant: str = "minbase"  # essential + apt: the smallest tree python3 installs into
    packages: tuple[str, ...] = ("python3", "python3-venv")
    mirror: str = "http://deb.debian.org/debian"

    def command(self, target: Path) -> list[str]:
        return ["mmdebstrap", "--mode=root", f"--arch={self.arch}", f"--variant={self.variant}",
                f"--include={','.join(self.packages)}", self.suite, str(target), self.mirror]

    def key(self, tool_version: str) -> str:
        """The content hash of the inputs (16 hex digits name the cached tree)."""
        doc = json.dumps({"spec": asdict(self), "recipe": RECIPE, "mmdebstrap": tool_version}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RootfsCache:
    """Cached trees under one directory, one per key; a tree appears (by rename) only once complete."""

    directory: Path

    def path(self, spec: RootfsSpec) -> Path:
        return self.directory / f"rootfs-{spec.arch}-{spec.suite}-{spec.key(mmdebstrap_version())}"

    def get(self, spec: RootfsSpec, log: Path, *, rebuild: bool = False, nice: int = 10) -> tuple[Path, bool]:
        """The tree for `spec` and whether it was built now (False: reused)."""
        final = self.path(spec)
        if final.is_dir() and not rebuild:
            return final, False
        partial = final.with_name(final.name + ".partial")
        if partial.exists():  # a build that was cut short
            shutil.rmtree(partial)
        self.directory.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            done = subprocess.run(["nice", "-n", str(nice), *spec.command(partial)], stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RootfsBuildError(f"mmdebstrap exited {done.returncode} (log: {log})")
        if final.exists():  # --rebuild: the old tree goes only once the new one is complete
            old = final.with_name(final.name + ".old")
            final.rename(old)
            shutil.rmtree(old)
        partial.rename(final)
        return final, True


def mmdebstrap_version() -> str:
    """`mmdebstrap --version`, or a clear error when it is not installed."""
    try:
        out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RootfsBuildError(f"mmdebstrap is needed (apt-get install mmdebstrap): {exc}") from None
    return out.strip()
