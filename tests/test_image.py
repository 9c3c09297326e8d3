"""The Raspberry Pi image (hw/image, docs/technician.md).

Always: the disk assembly on a small tree (no loop device, no mount): two partitions where the table says,
the boot files readable with mtools, the root readable with debugfs, and the same bytes from the same tree
and epoch; a file that is not the fleet's root is refused by name.
With a built image (EDGE_IMAGE names IMAGE.img, its IMAGE.json beside it): what the card holds (firmware and
kernel on the boot partition, the fleet root, root locked, no serial console or getty unless a debug image,
no swap, the units enabled, the gadget modules). With EDGE_IMAGE_FLEET (the fleet the image was built for) and
a test image: hw/image/boot-test boots it under qemu and provisions it (tens of minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HW = ROOT / "hw"
for _d in (HW / "arm64", HW / "image"):
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))

import disk  # noqa: E402  (hw/image is a directory of scripts; its entry points put it on sys.path)
import imagebuild  # noqa: E402

TOOLS = ("mkfs.vfat", "mcopy", "mdir", "mkfs.ext4", "debugfs", "sfdisk")
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason=f"needs {', '.join(TOOLS)} (dosfstools, mtools, e2fsprogs, fdisk)")


def _debugfs(fs: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(fs)], capture_output=True, text=True, check=True).stdout


def _partition(image: Path, index: int, out: Path) -> Path:
    start, size = disk.partition_offsets(image)[index]
    subprocess.run(["dd", f"if={image}", f"of={out}", "bs=4M", f"skip={start}", f"count={size}",
                    "iflag=skip_bytes,count_bytes", "status=none"], check=True)
    return out


def _small_image(base: Path, epoch: int) -> Path:
    tree, firmware = base / "tree", base / "firmware"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("edge-node\n")
    (tree / "etc/link").symlink_to("/dev/null")
    firmware.mkdir()
    (firmware / "cmdline.txt").write_text("console=tty1 root=LABEL=EDGEROOT\n")
    (firmware / "overlays").mkdir()
    (firmware / "overlays/x.dtbo").write_bytes(b"\xd0\x0d\xfe\xed")
    disk.clamp_mtimes(tree, epoch)
    disk.clamp_mtimes(firmware, epoch)
    layout, ids = disk.Layout(boot_mib=40, root_slack_mib=8), disk.Ids.from_epoch(epoch)
    disk.make_boot(firmware, base / "boot.vfat", layout, ids, epoch)
    mib = disk.make_root(tree, base / "root.ext4", layout, ids, epoch)
    return disk.assemble(base / "boot.vfat", base / "root.ext4", base / "card.img", layout, ids, mib).path


@needs_tools
def test_the_card_is_assembled_without_loop_devices_and_reads_back(tmp_path: Path) -> None:
    image = _small_image(tmp_path / "a", 1764806400)
    (boot_start, boot_size), (root_start, _) = disk.partition_offsets(image)
    assert boot_start == disk.BOOT_START_MIB * disk.MIB and boot_size == 40 * disk.MIB
    assert root_start == boot_start + boot_size
    listing = subprocess.run(["mdir", "-b", "-/", "-i", f"{image}@@{boot_start}", "::/"], capture_output=True,
                             text=True, check=True).stdout
    assert "::/cmdline.txt" in listing and "::/overlays/x.dtbo" in listing
    root = _partition(image, 1, tmp_path / "root.ext4")
    assert _debugfs(root, "cat /etc/hostname") == "edge-node\n"
    assert "Fast link dest: \"/dev/null\"" in _debugfs(root, "stat /etc/link")
    label = subprocess.run(["blkid", "-s", "LABEL", "-o", "value", str(root)], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert label == "EDGEROOT"


@needs_tools
def test_the_same_tree_and_epoch_give_the_same_bytes_and_another_epoch_does_not(tmp_path: Path) -> None:
    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    first = digest(_small_image(tmp_path / "a", 1764806400))
    again = digest(_small_image(tmp_path / "b", 1764806400))
    other = digest(_small_image(tmp_path / "c", 1764806401))
    assert first == again
    assert other != first


def test_a_file_that_is_not_the_fleet_root_is_refused_by_name(tmp_path: Path) -> None:
    bogus = tmp_path / "root.json"
    bogus.write_text('{"signed": {}, "signatures": []}')
    with pytest.raises(imagebuild.BuildError, match=rf"--fleet-root {bogus}: not a fleet root the device would accept"):
        imagebuild.check_fleet_root(Path(sys.executable), bogus)
    with pytest.raises(imagebuild.BuildError, match="No such file"):
        imagebuild.check_fleet_root(Path(sys.executable), tmp_path / "missing.json")


# --- a built image ----------------------------------------------------------------------------------------

IMAGE = os.environ.get("EDGE_IMAGE")
built = pytest.mark.skipif(not IMAGE, reason="EDGE_IMAGE does not name a built image (hw/image/build, ~40 min)")


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, object], Path]]:
    """The image, its manifest, and its root partition copied out for debugfs."""
    assert IMAGE is not None
    image = Path(IMAGE)
    manifest = json.loads(image.with_suffix(".json").read_text())
    base = tmp_path_factory.mktemp("card")
    yield image, manifest, _partition(image, 1, base / "root.ext4")


@built
def test_the_image_is_the_one_its_manifest_names(card: tuple[Path, dict[str, object], Path]) -> None:
    image, manifest, _ = card
    h = hashlib.sha256()
    with image.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == manifest["sha256"]
    assert image.stat().st_size == manifest["size_bytes"]


@built
def test_the_boot_partition_holds_the_pi_firmware_kernel_and_device_tree(
        card: tuple[Path, dict[str, object], Path]) -> None:
    image, manifest, _ = card
    start = disk.partition_offsets(image)[0][0]
    names = subprocess.run(["mdir", "-b", "-/", "-i", f"{image}@@{start}", "::/"], capture_output=True, text=True,
                           check=True).stdout.split()
    for needed in ("::/start4.elf", "::/fixup4.dat", "::/config.txt", "::/cmdline.txt",
                   "::/bcm2711-rpi-4-b.dtb", f"::/vmlinuz-{manifest['kernel']}", f"::/initrd.img-{manifest['kernel']}"):
        assert needed in names
    cmdline = subprocess.run(["mtype", "-i", f"{image}@@{start}", "::/cmdline.txt"], capture_output=True, text=True,
                             check=True).stdout
    assert "root=LABEL=EDGEROOT" in cmdline
    assert ("console=ttyS1" in cmdline) == manifest["debug_console"]


@built
def test_the_root_carries_the_fleet_root_and_no_way_to_log_in(card: tuple[Path, dict[str, object], Path]) -> None:
    _, manifest, root = card
    fleet_root = _debugfs(root, "cat /usr/share/edge-node/fleet-root.json")
    assert hashlib.sha256(fleet_root.encode()).hexdigest() == manifest["fleet_root_sha256"]
    shadow = dict(line.split(":", 2)[:2] for line in _debugfs(root, "cat /etc/shadow").splitlines() if line)
    assert shadow["root"].startswith(("!", "*"))
    assert not any(h and not h.startswith(("!", "*")) for h in shadow.values())  # no password anywhere
    getty = _debugfs(root, "stat /etc/systemd/system/serial-getty@.service")
    if manifest["debug_console"]:
        assert "File not found" in getty or not getty
    else:
        assert "Fast link dest: \"/dev/null\"" in getty


@built
def test_the_units_are_enabled_time_is_synced_and_there_is_no_swap(card: tuple[Path, dict[str, object], Path]) -> None:
    _, _, root = card
    wants = _debugfs(root, "ls -l /etc/systemd/system/multi-user.target.wants")
    for unit in ("edge-node.service", "edge-node-provision.service"):
        assert unit in wants
    assert "edge-node-retention.timer" in _debugfs(root, "ls -l /etc/systemd/system/timers.target.wants")
    assert "systemd-timesyncd.service" in _debugfs(root, "ls -l /etc/systemd/system/sysinit.target.wants")
    assert "swap" not in _debugfs(root, "cat /etc/fstab")
    assert "Fast link dest: \"/dev/null\"" in _debugfs(root, "stat /etc/systemd/system/swap.target")
    assert _debugfs(root, "cat /etc/modules-load.d/edge-node-gadget.conf").split() == ["dwc2", "g_serial"]
    assert "edge-node" in _debugfs(root, "cat /etc/passwd")


FLEET = os.environ.get("EDGE_IMAGE_FLEET")


@built
@pytest.mark.skipif(not FLEET, reason="EDGE_IMAGE_FLEET does not name the fleet directory the image was built for")
def test_the_image_boots_under_qemu_and_is_provisioned_over_its_serial_port(
        card: tuple[Path, dict[str, object], Path], tmp_path: Path) -> None:
    image, manifest, _ = card
    if not manifest["debug_console"] or manifest["agent_port"] != "hvc0":
        pytest.skip(f"{image.name} is a production image; the boot test needs --debug-console --agent-port hvc0")
    done = subprocess.run([str(HW / "image" / "boot-test"), str(image), "--fleet-dir", str(FLEET), "--logs",
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "boot-test: ok" in done.stdout
    assert "provisioned as cam-image" in done.stdout
