"""hw/image/build's steps: the image root tree, the node's arm64 package, this fleet's configuration, the
disk image. Each step prints one line with its time; a failure is one line naming the step and the reason.
The build writes IMAGE.img, IMAGE.img.sha256 and IMAGE.json (what was built and the figures: sizes, times).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from configure import (
    ConfigureError,
    Console,
    agent_port,
    clean,
    consoles,
    install_package,
    lock_logins,
    place_fleet_root,
    system,
)
from disk import DiskBuildError, Ids, Layout, assemble, clamp_mtimes, make_boot, make_root, sorted_copy
from emulation import EmulationError, ensure_binfmt
from package import PackageBuildError, build_arm64_deb, installed_size
from recipe import ImageRootSpec
from rootfs import RootfsBuildError, RootfsCache
from timing import Clock
from wheels import WheelSetError

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
DEFAULT_CACHE = Path.home() / ".cache" / "edge-node"


class BuildError(Exception):
    """The build's one-line failure."""


@dataclass(frozen=True)
class Options:
    fleet_root: Path
    out: Path
    cache: Path
    console: Console
    epoch: int
    deb: Path | None
    rebuild: bool
    python: Path


@dataclass(frozen=True)
class Manifest:
    """IMAGE.json: what the image is and the build's figures."""

    image: str
    sha256: str
    size_bytes: int
    root_mib: int
    package: str
    package_installed_kib: int
    source_date_epoch: int
    debug_console: bool
    agent_port: str | None
    fleet_root_sha256: str
    kernel: str
    seconds: dict[str, float]




def check_fleet_root(python: Path, fleet_root: Path) -> str:
    """The file is a fleet root the agent will accept (parsed and its signatures checked by the node's own
    code, edge.trust.root); returns its sha256."""
    try:
        data = fleet_root.read_bytes()
    except OSError as exc:
        raise BuildError(f"--fleet-root {fleet_root}: {exc.strerror}") from None
    done = subprocess.run([str(python), "-c", "import sys; from edge.trust.root import TrustedRoot; "
                           "TrustedRoot.bootstrap(sys.stdin.buffer.read())"], input=data, capture_output=True,
                          check=False, cwd=CHECKOUT)
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"--fleet-root {fleet_root}: not a fleet root the device would accept: {last}")
    return hashlib.sha256(data).hexdigest()


def _version() -> str:
    import tomllib

    with (CHECKOUT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def build(opts: Options) -> Manifest:
    clock = Clock("build", 9)
    started = time.monotonic()
    logs = opts.cache / "image" / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["SOURCE_DATE_EPOCH"] = str(opts.epoch)  # mmdebstrap, dpkg and the tools below read it
    root_sha = check_fleet_root(opts.python, opts.fleet_root)
    ensure_binfmt()
    with clock.step("rootfs") as say:
        cached, built = RootfsCache(opts.cache / "image").get(ImageRootSpec(), logs / "mmdebstrap.log",
                                                              rebuild=opts.rebuild)
        say(f"{'built' if built else 'reused'} {cached}")
    work = opts.cache / "image" / "work" / logs.name
    try:
        with clock.step("package") as say:
            if opts.deb is None:
                package = build_arm64_deb(CHECKOUT, opts.python, opts.cache / "arm64", work / "deb",
                                          opts.out, opts.epoch, logs).deb
                say("built by scripts/build-deb in the arm64 root")
            else:
                package = opts.deb
                say("given")
            kib = installed_size(package)
            say(f"{package.name}, installed size {kib / 1024:.0f} MiB")
        with clock.step("configure") as say:
            tree = work / "tree"
            work.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(tree)], check=True)
            install_package(tree, package, opts.epoch)
            place_fleet_root(tree, opts.fleet_root)
            lock_logins(tree)
            consoles(tree, opts.console)
            agent_port(tree, opts.console)
            system(tree)
            clean(tree)
            kernel = sorted(p.name for p in (tree / "boot").glob("vmlinuz-*"))[-1].removeprefix("vmlinuz-")
            say(f"kernel {kernel}; console {'debug (root shell on the UART)' if opts.console.debug else 'off'}; "
                f"agent on {'/dev/' + opts.console.agent_port + ' as ' if opts.console.agent_port else ''}"
                "/dev/ttyGS0")
        with clock.step("disk") as say:
            firmware = work / "firmware"
            (tree / "boot/firmware").rename(firmware)
            (tree / "boot/firmware").mkdir()  # the mount point
            ordered = work / "ordered"
            sorted_copy(tree, ordered)
            shutil.rmtree(tree)
            tree = ordered
            clamp_mtimes(tree, opts.epoch)
            clamp_mtimes(firmware, opts.epoch)
            layout, ids = Layout(), Ids.from_epoch(opts.epoch)
            make_boot(firmware, work / "boot.vfat", layout, ids, opts.epoch)
            root_mib = make_root(tree, work / "root.ext4", layout, ids, opts.epoch)
            name = f"edge-node-pi4-{_version()}{'-debug' if opts.console.debug else ''}.img"
            opts.out.mkdir(parents=True, exist_ok=True)
            image = assemble(work / "boot.vfat", work / "root.ext4", opts.out / name, layout, ids, root_mib)
            digest = _sha256(image.path)
            (opts.out / (name + ".sha256")).write_text(f"{digest}  {name}\n")
            say(f"{image.path} {image.size_bytes / 2**20:.0f} MiB (boot {layout.boot_mib} MiB, root {root_mib} MiB)")
    finally:
        if work.exists():
            shutil.rmtree(work)
    seconds = dict(clock.seconds) | {"total": round(time.monotonic() - started, 1)}
    manifest = Manifest(name, digest, image.size_bytes, root_mib, package.name, kib, opts.epoch,
                        opts.console.debug, opts.console.agent_port, root_sha, kernel, seconds)
    (opts.out / (name.removesuffix(".img") + ".json")).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    print(f"build: ok: {image.path} {image.size_bytes / 2**20:.0f} MiB in {seconds['total'] / 60:.1f} min "
          f"(sha256 {digest[:16]}...)", flush=True)
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _default_epoch() -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=CHECKOUT, capture_output=True, text=True,
                         check=False).stdout.strip()
    return int(out) if out else int(time.time())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hw/image/build", description=__doc__)
    p.add_argument("--fleet-root", type=Path, required=True,
                   help="the fleet's root (F/root/root.N.json): put at /usr/share/edge-node/fleet-root.json")
    p.add_argument("--out", type=Path, default=CHECKOUT / "dist", help="where the image goes (default dist/)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help=f"cached root trees (image/ and arm64/) and logs (default {DEFAULT_CACHE})")
    p.add_argument("--deb", type=Path, help="install this edge-node_*_arm64.deb instead of building one")
    p.add_argument("--debug-console", action="store_true",
                   help="a test image: kernel console and a root shell on the serial console (never to a site)")
    p.add_argument("--agent-port", metavar="TTY",
                   help="a test image: the provisioning agent uses this tty (hvc0: qemu's virtio console) as "
                        "/dev/ttyGS0; needs --debug-console")
    p.add_argument("--epoch", type=int, help="SOURCE_DATE_EPOCH (default: $SOURCE_DATE_EPOCH, else the last commit)")
    p.add_argument("--rebuild", action="store_true", help="build the root tree afresh (takes the archive's updates)")
    p.add_argument("--python", type=Path, default=CHECKOUT / ".venv" / "bin" / "python",
                   help="the host venv that builds the wheel and checks the fleet root (default .venv)")
    args = p.parse_args(argv)
    if args.agent_port and not args.debug_console:
        p.error("--agent-port makes a test image: give --debug-console too")
    if args.agent_port and "/" in args.agent_port:
        p.error(f"--agent-port {args.agent_port}: a kernel tty name such as hvc0, not a path")
    if args.deb is not None and not args.deb.is_file():
        p.error(f"--deb {args.deb}: no such file")
    if os.geteuid() != 0:
        p.error("needs root (mmdebstrap --mode=root, chroot, file ownership in the image)")
    opts = Options(args.fleet_root.resolve(), args.out.resolve(), args.cache.expanduser().resolve(),
                   Console(args.debug_console, args.agent_port), args.epoch or _default_epoch(),
                   args.deb.resolve() if args.deb else None, args.rebuild, args.python)
    try:
        build(opts)
    except (BuildError, RootfsBuildError, WheelSetError, EmulationError, PackageBuildError, ConfigureError,
            DiskBuildError) as exc:
        print(f"build: FAILED: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"build: FAILED: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"build: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
