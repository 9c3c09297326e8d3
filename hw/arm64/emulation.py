"""Running arm64 programs in a root filesystem on an x86_64 host: qemu-user through binfmt_misc, in a chroot.

Traps of qemu-user 7.2 (docs/arm64.md): the emulated process reads the host's x86 `/proc/cpuinfo`, and
without `/sys` LiteRT silently runs without XNNPACK; with `/sys` but the x86 cpuinfo it segfaults in
`allocate_tensors`. So each run mounts proc, binds /sys and /dev, and binds an arm64 (Cortex-A72)
cpuinfo over ROOT/proc/cpuinfo. And qemu's default CPU (`max`) offers features no Pi has, for which XNNPACK
picks int8 kernels whose embeddings came out wrong (cosine about 0.1 to x86_64, boxes right): QEMU_CPU
makes the emulated CPU the one the cpuinfo describes. The mounts live in a private mount namespace
(`unshare --mount`): they vanish with the process, whatever way it ends, and never show on the host.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = "qemu-aarch64"  # Debian's qemu-user-static registers it with flag F (no qemu copy in the root)
HERE = Path(__file__).resolve().parent
CORTEX_A72_CPUINFO = HERE / "cpuinfo-cortex-a72"  # as a Raspberry Pi 4 shows it under a 64-bit kernel
CORTEX_A72 = "cortex-a72"  # qemu's name for the Pi 4's core (`qemu-aarch64-static -cpu help`)

# The mounts, then the program; R is the root, C the cpuinfo file, the program's argv follows.
_ENTER = """set -e
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
if [ -n "$C" ]; then mount --bind "$C" "$R/proc/cpuinfo"; fi
exec chroot "$R" "$@"
"""


class EmulationError(Exception):
    """arm64 programs cannot run here (names what is missing)."""


def ensure_binfmt() -> None:
    """qemu-aarch64 registered with binfmt_misc: mount binfmt_misc and enable the entry if needed (root)."""
    entry = BINFMT_DIR / BINFMT_ENTRY
    if _enabled(entry):
        return
    if not (BINFMT_DIR / "register").exists():
        _run_or_explain(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    _run_or_explain(["update-binfmts", "--enable", BINFMT_ENTRY], "enabling qemu-aarch64 (qemu-user-static)")
    if not _enabled(entry):
        raise EmulationError(f"{entry} is not enabled after update-binfmts: is qemu-user-static installed?")


def _enabled(entry: Path) -> bool:
    try:
        return entry.read_text().splitlines()[0] == "enabled"
    except (OSError, IndexError):
        return False


def _run_or_explain(argv: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise EmulationError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise EmulationError(f"{what}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Chroot:
    """Runs commands inside an arm64 root, with proc, /sys, /dev and (unless None) the arm64 cpuinfo, on an
    emulated CPU of that model (None: qemu's default, `max`)."""

    root: Path
    cpuinfo: Path | None = CORTEX_A72_CPUINFO
    cpu: str | None = CORTEX_A72
    nice: int = 10

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """The host command line: a clean environment inside (`env -i`), nothing of the host's leaks in."""
        inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
        return ["nice", "-n", str(self.nice), "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _ENTER, "enter", *inner]

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        if self.cpu is not None:
            base["QEMU_CPU"] = self.cpu  # read by qemu-user (started by binfmt_misc) in every process
        host_env = {"R": str(self.root), "C": "" if self.cpuinfo is None else str(self.cpuinfo),
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        return subprocess.run(self.command(argv, base | dict(env or {})), env=host_env, capture_output=True,
                              text=True, timeout=timeout, check=False)
