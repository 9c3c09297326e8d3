"""The arm64 proof's steps: root filesystem, wheel set, offline install, faces against x86_64, a short demo.

Each step prints one line with its time; any failure is one line naming the step and the reason, with the
full output kept in the log directory. The root copy the node is installed into is thrown away at the end
(`--keep` leaves it); the cached root filesystem itself is never changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agreement import DisagreementError, FacesOutputError, compare_runs, parse_faces
from emulation import Chroot, EmulationError, ensure_binfmt
from rootfs import RootfsBuildError, RootfsCache, RootfsSpec
from timing import Clock
from wheels import GLIBC_OLDEST, WheelSet, WheelSetError, WheelTarget, build_project_wheel, download

CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path.home() / ".cache" / "edge-node" / "arm64"
VENV = "/opt/edge-node/.venv"  # where the Debian package puts it (scripts/build-deb)
WHEELHOUSE = "/opt/wheelhouse"
DEMO_DIR = "/var/tmp/edge-node-demo"  # in the root; its fleet holds the watch list the alerts are checked against
# LiteRT's own stderr line when it applies XNNPACK; without it the models ran on the reference kernels.
XNNPACK_LINE = "Created TensorFlow Lite XNNPACK delegate for CPU."
PHOTOS = ("astronaut.png", "biden.jpg", "multi_face.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")  # edge/demo
CLIP = "WolfgangLanger_Pexels.mp4"  # the demo's clip of a person who is not listed (472 frames)
LISTED = "WL-2026-0001"  # edge/demo/watchlist.csv: the listed person the demo's photos show twice


class ProofError(Exception):
    """A step failed: the one line the proof ends with."""


@dataclass(frozen=True)
class Options:
    cache: Path
    logs: Path
    rebuild: bool
    keep: bool
    clip_frames: int
    host_python: Path




def _failed(what: str, done: subprocess.CompletedProcess[str], log: Path) -> ProofError:
    log.write_text(f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return ProofError(f"{what} exited {done.returncode}: {last} (log: {log})")


def install(chroot: Chroot, wheels: WheelSet, logs: Path) -> str:
    """A venv at VENV from the wheel set alone (no index): what an admin does on a device."""
    house = chroot.root / WHEELHOUSE.lstrip("/")
    shutil.copytree(wheels.directory, house)
    for what, argv in (("python3 -m venv", ["python3", "-m", "venv", VENV]),
                       ("pip install", [f"{VENV}/bin/pip", "install", "--no-index", "--find-links", WHEELHOUSE,
                                        f"{WHEELHOUSE}/{wheels.project.name}"])):
        done = chroot.run(argv, env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if done.returncode != 0:
            raise _failed(f"{what} in the arm64 root", done, logs / "install.log")
    verify = chroot.run([f"{VENV}/bin/edge-fleet", "models", "verify"])
    if verify.returncode != 0:
        raise _failed("edge-fleet models verify in the arm64 root", verify, logs / "verify.log")
    litert = chroot.run([f"{VENV}/bin/python", "-c",
                         "import importlib.metadata as m, platform; "
                         "print(platform.machine(), 'ai-edge-litert', m.version('ai-edge-litert'))"])
    if litert.returncode != 0:
        raise _failed("reading the installed ai-edge-litert version", litert, logs / "install.log")
    return f"{len(list(wheels.directory.glob('*.whl')))} wheels; {litert.stdout.strip()}; models verify ok"


def faces(chroot: Chroot, python: Path, logs: Path) -> str:
    """`edge-node faces --json` on the bundled photos, arm64 (XNNPACK on) against x86_64."""
    footage = f"{VENV}/lib/python3.11/site-packages/edge/demo/footage"
    arm = chroot.run([f"{VENV}/bin/edge-node", "faces", "--json", *(f"{footage}/{p}" for p in PHOTOS)])
    (logs / "faces-arm64.jsonl").write_text(arm.stdout)
    (logs / "faces-arm64.err").write_text(arm.stderr)
    if arm.returncode != 0:
        raise _failed("edge-node faces on arm64", arm, logs / "faces-arm64.log")
    if XNNPACK_LINE not in arm.stderr:
        raise ProofError(f"edge-node faces on arm64 ran without XNNPACK: no '{XNNPACK_LINE}' on stderr "
                         f"(log: {logs / 'faces-arm64.err'})")
    here = CHECKOUT / "edge" / "demo" / "footage"
    x86 = subprocess.run(["nice", "-n", "10", str(python.parent / "edge-node"), "faces", "--json",
                          *(str(here / p) for p in PHOTOS)], capture_output=True, text=True, check=False)
    (logs / "faces-x86_64.jsonl").write_text(x86.stdout)
    if x86.returncode != 0:
        raise _failed("edge-node faces on x86_64", x86, logs / "faces-x86_64.log")
    try:
        agreed = compare_runs(parse_faces(arm.stdout, "arm64"), parse_faces(x86.stdout, "x86_64"))
    except (FacesOutputError, DisagreementError) as exc:
        raise ProofError(str(exc)) from None
    return f"XNNPACK on; {agreed.line()}"


def cut_clip(python: Path, src: Path, dst: Path, frames: int) -> None:
    """The first `frames` frames of the demo's clip (OpenCV, mp4v), so the demo is short under emulation."""
    script = ("import sys, cv2\n"
              "src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
              "cap = cv2.VideoCapture(src)\n"
              "fps, w, h = cap.get(cv2.CAP_PROP_FPS), int(cap.get(3)), int(cap.get(4))\n"
              "out = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))\n"
              "for _ in range(n):\n"
              "    ok, frame = cap.read()\n"
              "    if not ok:\n"
              "        sys.exit(f'{src}: fewer than {n} frames')\n"
              "    out.write(frame)\n"
              "out.release()\n")
    done = subprocess.run([str(python), "-c", script, str(src), str(dst), str(frames)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or not dst.is_file():
        raise ProofError(f"cutting {src.name} to {frames} frames: {done.stderr.strip() or 'no file written'}")


def demo(chroot: Chroot, python: Path, frames: int, logs: Path) -> str:
    """`edge-node demo` in the root, its clip cut short: it must alert, and only on the listed person."""
    clip = chroot.root / VENV.lstrip("/") / "lib/python3.11/site-packages/edge/demo/footage" / CLIP
    cut_clip(python, CHECKOUT / "edge" / "demo" / "footage" / CLIP, clip, frames)
    done = chroot.run([f"{VENV}/bin/edge-node", "demo", "--demo-dir", DEMO_DIR])
    (logs / "demo.out").write_text(done.stdout)
    (logs / "demo.err").write_text(done.stderr)
    if done.returncode != 0:
        raise _failed("edge-node demo on arm64", done, logs / "demo.log")
    entries_file = chroot.root / DEMO_DIR.lstrip("/") / "fleet/watchlists/demo/entries.json"
    try:
        entries = json.loads(entries_file.read_text())["entries"]
    except (OSError, ValueError, KeyError) as exc:
        raise ProofError(f"the demo's watch list {entries_file}: {exc}") from None
    listed = next((e["id"] for e in entries if e["reference"] == LISTED), None)
    if listed is None:
        raise ProofError(f"{entries_file}: no entry {LISTED}")
    alerts = [json.loads(line)["entry_id"] for line in done.stdout.splitlines() if line.strip()]
    if not alerts:
        raise ProofError(f"edge-node demo on arm64 raised no alert (log: {logs / 'demo.err'})")
    if set(alerts) != {listed}:
        raise ProofError(f"edge-node demo on arm64 alerted on {sorted(set(alerts) - {listed})}, not only {LISTED}")
    summary = next((line for line in done.stderr.splitlines() if " frames, " in line), "").removeprefix("demo: ")
    return f"clip cut to {frames} frames: {summary.split(' (')[0]}; every alert on {LISTED}"


def prove(opts: Options) -> None:
    clock = Clock("proof", 8)
    opts.logs.mkdir(parents=True, exist_ok=True)
    ensure_binfmt()
    with clock.step("rootfs") as say:
        cached, built = RootfsCache(opts.cache).get(RootfsSpec(), opts.logs / "mmdebstrap.log", rebuild=opts.rebuild)
        say(f"{'built' if built else 'reused'} {cached} ({_size_mb(cached)} MB)")
    run_dir = opts.cache / "runs" / opts.logs.name
    try:
        with clock.step("wheels") as say:
            target = WheelTarget()
            project = build_project_wheel(CHECKOUT, opts.host_python, run_dir / "dist", opts.logs / "wheels.log")
            wheels = download(project, opts.host_python, target, run_dir / "wheelhouse", opts.logs / "wheels.log")
            say(f"{project.name} + {len(list(wheels.directory.glob('*.whl'))) - 1} {target.machine} wheels "
                f"({target.abi}, manylinux_2_{GLIBC_OLDEST}..{target.glibc_minor})")
        with clock.step("install") as say:
            root = run_dir / "root"
            subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(root)], check=True)
            say(install(Chroot(root), wheels, opts.logs) + f"; venv {_size_mb(root / VENV.lstrip('/'))} MB")
        with clock.step("faces") as say:
            say(faces(Chroot(root), opts.host_python, opts.logs))
        with clock.step("demo") as say:
            say(demo(Chroot(root), opts.host_python, opts.clip_frames, opts.logs))
    finally:
        if not opts.keep and run_dir.exists():
            shutil.rmtree(run_dir)
    total = sum(clock.seconds.values())
    print(f"proof: ok in {total:.0f} s ({total / 60:.1f} min); logs in {opts.logs}", flush=True)


def _size_mb(path: Path) -> int:
    out = subprocess.run(["du", "-smx", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hw/arm64/proof", description=__doc__)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help=f"where root filesystems are cached by content hash, and runs happen (default {DEFAULT_CACHE})")
    p.add_argument("--rebuild", action="store_true", help="build the root filesystem even if one is cached")
    p.add_argument("--keep", action="store_true", help="keep the root the node was installed into (in CACHE/runs)")
    p.add_argument("--clip-frames", type=int, default=48, help="frames of the demo's clip to keep (default 48)")
    p.add_argument("--python", type=Path, default=CHECKOUT / ".venv" / "bin" / "python",
                   help="the x86_64 venv that builds the wheel, downloads, and runs the reference (default .venv)")
    args = p.parse_args(argv)
    if args.clip_frames < 1:
        p.error("--clip-frames must be at least 1")
    if not args.python.is_file():  # before minutes of building
        p.error(f"--python {args.python}: no such interpreter (make the checkout's venv: scripts/bootstrap)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts = Options(args.cache.expanduser().resolve(), args.cache.expanduser().resolve() / "logs" / stamp,
                   args.rebuild, args.keep, args.clip_frames, args.python)
    try:
        prove(opts)
    except (ProofError, RootfsBuildError, WheelSetError, EmulationError) as exc:
        print(f"proof: FAILED: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:  # a host tool (git, cp, du, pip freeze) failed
        print(f"proof: FAILED: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"proof: FAILED: {' '.join(map(str, exc.cmd))[-200:]} ran over {exc.timeout:.0f} s", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or tool the proof needs is missing
        print(f"proof: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
