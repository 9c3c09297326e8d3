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
import tomllib
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
    """The wheel above was built from this sdist; beside it what the models, the units, the Debian package and
    the docs need."""
    with tarfile.open(release.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    needed = {"pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "scripts/bootstrap", "scripts/build-deb"}
    for under in ("edge", "provisioning", "models", "systemd", "hw", "docs", "packaging"):
        needed |= {n for n in tree_files(under=under) if not n.startswith("models/.build/")}
    assert needed - names == set()
    assert not any(n.startswith("tests/") for n in names)


def test_installed_node_verifies_models_and_runs_the_demo(release: Release) -> None:
    where = release.run("python", "-c", "import edge, edge.vision.manifest as m; print(edge.__file__); "
                        "print(m.default_models_dir())")
    code_file, models_dir = where.stdout.split()
    assert Path(code_file).is_relative_to(release.venv) and not Path(code_file).is_relative_to(ROOT)
    assert Path(models_dir) == release.venv / MODELS_DATA

    profile = release.run("python", "-c", "from edge.config import find_profile; print(find_profile('pi4-coral'))")
    installed_hw = release.venv / "share" / "edge-node" / "hw"
    assert Path(profile.stdout.strip()) == installed_hw / "pi4-coral.toml", profile.stderr

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


# The Debian package (scripts/build-deb), from the same wheel. Building it takes about a minute (gzip),
# lintian another; the install / remove / purge run needs root and a private mount namespace (unshare) to
# lay a throwaway overlay over this machine's root and install into that.
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
LIFECYCLE = r"""
set -u
work=$1 deb=$2
m=$work/merged
mkdir -p "$work/upper" "$work/ovwork" "$m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/ovwork" "$m"
mount -t proc proc "$m/proc"; mount --rbind /dev "$m/dev"; mount -t tmpfs tmpfs "$m/tmp"
cp "$deb" "$m/root/edge-node.deb"
exec chroot "$m" sh -c '
 export HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin
 dpkg -i /root/edge-node.deb >/dev/null 2>&1; echo "install=$?"
 echo "user=$(getent passwd edge-node | cut -d: -f7)"
 echo "etc=$(stat -c %U:%G:%a /etc/edge-node)"
 echo "wants=$(ls /etc/systemd/system/multi-user.target.wants/edge-node.service \
   /etc/systemd/system/timers.target.wants/edge-node-retention.timer \
   /etc/systemd/system/multi-user.target.wants/edge-node-provision.service 2>/dev/null | wc -l)"
 /opt/edge-node/.venv/bin/edge-fleet models verify >/root/verify.out 2>&1; echo "verify=$?"
 echo "verify_ok=$(grep -c ": ok$" /root/verify.out)"
 cd /root && /opt/edge-node/.venv/bin/edge-node demo --demo-dir /root/demo 2>/dev/null >/root/events
 echo "demo=$? events=$(wc -l </root/events)"
 install -d -o edge-node -m 0700 /var/lib/edge-node; echo state >/var/lib/edge-node/keys
 echo "[node]" >/etc/edge-node/node.toml
 dpkg -r edge-node >/dev/null 2>&1; echo "remove=$?"
 echo "after_remove_opt=$(ls -d /opt/edge-node 2>/dev/null | wc -l) state=$(cat /var/lib/edge-node/keys)"
 echo "masked=$(readlink /etc/systemd/system/edge-node.service)"
 dpkg -P edge-node >/dev/null 2>&1; echo "purge=$?"
 echo "after_purge=$(ls -d /var/lib/edge-node /etc/edge-node /etc/systemd/system/edge-node.service 2>/dev/null | wc -l)"
'
"""


@pytest.fixture(scope="module")
def deb(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--wheel", str(release.wheel), "--out", str(out),
                           "--compress", "gzip"], capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


@needs_dpkg
def test_deb_holds_venv_units_user_udev_models(deb: Path) -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert deb.name == f"edge-node_{version}_{arch.strip()}.deb"
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Package: edge-node" in info and f"Version: {version}" in info
    assert all(f" {script} " in info for script in ("postinst", "prerm", "postrm"))
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    manifest = json.loads((ROOT / "models" / "MANIFEST.json").read_text())
    wanted = {
        "/opt/edge-node/.venv/bin/edge-node", "/opt/edge-node/.venv/bin/edge-fleet",
        "/lib/systemd/system/edge-node.service", "/lib/systemd/system/edge-node-retention.service",
        "/lib/systemd/system/edge-node-retention.timer", "/lib/systemd/system/edge-node-provision.service",
        "/lib/systemd/system/edge-node.service.d/package-needs-config.conf",
        "/usr/lib/sysusers.d/edge-node.conf", "/lib/udev/rules.d/99-edge-node.rules",
        "/usr/share/doc/edge-node/copyright", "/usr/share/lintian/overrides/edge-node",
        *(f"/opt/edge-node/.venv/{MODELS_DATA}/{m['file']}" for m in manifest["models"].values()),
        *(f"/usr/share/edge-node/hw/{p.name}" for p in (ROOT / "hw").glob("*.toml")),
    }
    assert wanted - paths == set()
    assert not any("__pycache__" in p for p in paths)  # compiled on the device by postinst


@needs_dpkg
@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_deb_is_lintian_clean(deb: Path) -> None:
    """No error or warning; every override is used (an override that matches nothing is reported too)."""
    proc = subprocess.run(["lintian", "--fail-on", "error,warning", "-I", str(deb)], capture_output=True, text=True,
                          timeout=1200, check=False)
    tags = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:") or "unused-override" in line]
    assert proc.returncode == 0 and tags == [], proc.stdout + proc.stderr


@needs_dpkg
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_deb_install_remove_purge(deb: Path, tmp_path: Path) -> None:
    """Installed into a throwaway overlay of this root: the user, /etc/edge-node, the units enabled and nothing
    started; the node runs from /opt; remove keeps the state and masks the unit; purge removes the state."""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", LIFECYCLE, "lifecycle",
                           str(tmp_path), str(deb)], capture_output=True, text=True, timeout=900, check=False)
    got = dict(word.split("=", 1) for line in proc.stdout.splitlines() for word in line.split() if "=" in word)
    models = len(json.loads((ROOT / "models" / "MANIFEST.json").read_text())["models"])
    assert got == {
        "install": "0", "user": "/usr/sbin/nologin", "etc": "root:edge-node:770", "wants": "3",
        "verify": "0", "verify_ok": str(models), "demo": "0", "events": "2",
        "remove": "0", "after_remove_opt": "0", "state": "state", "masked": "/dev/null",
        "purge": "0", "after_purge": "0",
    }, proc.stdout + proc.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--out"], "--out needs a value"),
    (["--wheel", "/nonexistent/edge.whl"], "--wheel /nonexistent/edge.whl: no such file"),
    (["--compress", "zstd"], "--compress zstd: expected xz, gzip or none"),
    (["--bogus"], "unknown argument --bogus"),
])
def test_build_deb_refuses_bad_arguments_in_one_line(args: list[str], says: str) -> None:
    """A wrong option is a one-line usage error before anything is built (not bash's `unbound variable`)."""
    proc = subprocess.run([str(ROOT / "scripts" / "build-deb"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"build-deb: {proc.stderr.split('build-deb: ', 1)[1].strip()}"]
    assert says in proc.stderr
