"""The node's arm64 Debian package, built by scripts/build-deb inside a Debian bookworm arm64 root under
qemu-user.

Decision (docs/technician.md): the image installs the same `edge-node_<version>_arm64.deb` an admin installs
on Raspberry Pi OS or Jetson Linux, so the image and the package cannot drift apart (one layout: build-deb;
one postinst: the user, /etc/edge-node, the units enabled). build-deb makes the venv with the interpreter it
runs on and takes the dependencies from pip's index; here it runs in hw/arm64's cached root (bookworm's
python3.11 on arm64) with pip pointed at the aarch64 wheel set hw/arm64/wheels.py downloads (PIP_NO_INDEX,
PIP_FIND_LINKS), so the build is offline once the wheels are in and takes the same pinned releases as the
arm64 proof.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from emulation import Chroot
from rootfs import RootfsCache, RootfsSpec
from wheels import WheelTarget, build_project_wheel, download

# what build-deb reads from the checkout besides the wheel
BUILD_INPUTS = ("scripts/build-deb", "pyproject.toml", "packaging", "systemd", "hw/udev", "docs")
WHEELHOUSE = "/opt/wheelhouse"
SOURCE = "/opt/edge-node-source"


class PackageBuildError(Exception):
    """build-deb failed in the arm64 root (names the log)."""


@dataclass(frozen=True)
class BuiltPackage:
    """The .deb and what it holds."""

    deb: Path
    installed_kib: int  # Installed-Size from its control file


def build_arm64_deb(checkout: Path, python: Path, cache: Path, work: Path, out: Path, epoch: int,
                    logs: Path) -> BuiltPackage:
    """edge-node_<version>_arm64.deb into `out`, built in a copy of hw/arm64's root under `work`."""
    base, _ = RootfsCache(cache).get(RootfsSpec(), logs / "arm64-mmdebstrap.log")
    project = build_project_wheel(checkout, python, work / "dist", logs / "wheels.log")
    wheels = download(project, python, WheelTarget(), work / "wheelhouse", logs / "wheels.log")
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
    shutil.copytree(wheels.directory, root / WHEELHOUSE.lstrip("/"))
    source = root / SOURCE.lstrip("/")
    for name in BUILD_INPUTS:
        src, dst = checkout / name, source / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    for toml in checkout.glob("hw/*.toml"):
        shutil.copy2(toml, source / "hw" / toml.name)
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "SOURCE_DATE_EPOCH": str(epoch)}
    done = Chroot(root).run([f"{SOURCE}/scripts/build-deb", "--wheel", f"{WHEELHOUSE}/{project.name}",
                             "--out", "/opt/out", "--compress", "gzip"], env=env)
    (logs / "build-deb.log").write_text(f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PackageBuildError(f"build-deb in the arm64 root exited {done.returncode}: {last} "
                                f"(log: {logs / 'build-deb.log'})")
    debs = sorted((root / "opt/out").glob("edge-node_*_arm64.deb"))
    if len(debs) != 1:
        raise PackageBuildError(f"build-deb left {len(debs)} arm64 packages in /opt/out "
                                f"(log: {logs / 'build-deb.log'})")
    out.mkdir(parents=True, exist_ok=True)
    deb = out / debs[0].name
    shutil.copy2(debs[0], deb)
    shutil.rmtree(root)
    return BuiltPackage(deb, installed_size(deb))


def installed_size(deb: Path) -> int:
    """The package's Installed-Size (KiB), read by dpkg-deb on the host."""
    out = subprocess.run(["dpkg-deb", "--field", str(deb), "Installed-Size"], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())
