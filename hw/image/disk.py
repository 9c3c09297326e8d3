"""The SD-card image from a root tree, without loop devices or mounts: a FAT32 boot partition made as a
file (`mkfs.vfat -C`, filled by `mcopy`), an ext4 root made as a file from the tree (`mkfs.ext4 -d`), an
MBR written onto the image file by `sfdisk`, and the two file systems copied in at their offsets.

Reproducible: every identifier (disk id, volume id, UUID, ext4 hash seed) is derived from
SOURCE_DATE_EPOCH, every mtime in the tree is clamped to it, and e2fsprogs takes its clock from
E2FSPROGS_FAKE_TIME; the same tree and epoch give the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MIB = 1024 * 1024
BOOT_START_MIB = 4  # the first partition's start (alignment for SD erase blocks)
NAMESPACE = uuid.UUID("5b1d7f0e-2b7a-4f55-9a43-6a1d2d0e1e15")  # this recipe's; ids are uuid5(NAMESPACE, epoch)


class DiskBuildError(Exception):
    """A partitioning or file-system tool failed (names the tool and its message)."""


@dataclass(frozen=True)
class Layout:
    """The partition sizes and labels."""

    boot_mib: int = 256
    root_slack_mib: int = 1024  # free space in the root beyond the tree: the node's state, logs, updates
    boot_label: str = "EDGEBOOT"
    root_label: str = "EDGEROOT"


@dataclass(frozen=True)
class Ids:
    """The image's identifiers, derived from the epoch."""

    disk: str  # MBR disk identifier, 0x + 8 hex digits
    vfat: str  # FAT volume id, 8 hex digits
    root_uuid: str
    hash_seed: str

    @classmethod
    def from_epoch(cls, epoch: int) -> Ids:
        u = uuid.uuid5(NAMESPACE, f"edge-node-image:{epoch}")
        seed = uuid.uuid5(NAMESPACE, f"edge-node-image-hash-seed:{epoch}")
        return cls(disk=f"0x{u.hex[:8]}", vfat=u.hex[8:16], root_uuid=str(u), hash_seed=str(seed))


@dataclass(frozen=True)
class Image:
    """The written image and its parts' sizes."""

    path: Path
    size_bytes: int
    root_mib: int


def sorted_copy(tree: Path, out: Path) -> None:
    """The tree copied in name order (GNU tar --sort=name, owners, modes, xattrs kept). mkfs.ext4 -d takes
    files in the directory's read order, which for a small directory is the order its files were made:
    parallel steps (the postinst's `compileall -j 0`) make it differ from build to build, and with it the
    inode numbers and the image's bytes."""
    out.mkdir()
    pack = subprocess.Popen(["tar", "-C", str(tree), "--sort=name", "--xattrs", "--xattrs-include=*",
                             "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
    unpack = subprocess.run(["tar", "-C", str(out), "--xattrs", "--xattrs-include=*", "--numeric-owner",
                             "--same-owner", "-xpf", "-"], stdin=pack.stdout, capture_output=True, check=False)
    if pack.stdout is not None:
        pack.stdout.close()
    if pack.wait() != 0 or unpack.returncode != 0:
        raise DiskBuildError(f"copying {tree} in name order: {unpack.stderr.decode(errors='replace').strip()}")


def clamp_mtimes(tree: Path, epoch: int) -> None:
    """Every file's mtime no later than the epoch (touch -h: links themselves, not their targets)."""
    _run(["find", str(tree), "-newermt", f"@{epoch}", "-exec", "touch", "-h", "-d", f"@{epoch}", "{}", "+"],
         "clamping mtimes")


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    except OSError as exc:
        raise DiskBuildError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise DiskBuildError(f"{what}: {argv[0]} exited {done.returncode}: {done.stderr.strip()[-400:]}")


def _tree_mib(tree: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1M", "-x", str(tree)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def make_boot(firmware: Path, out: Path, layout: Layout, ids: Ids, epoch: int) -> None:
    """The FAT32 boot partition as a file, holding the firmware directory's contents."""
    env = os.environ | {"SOURCE_DATE_EPOCH": str(epoch)}
    out.unlink(missing_ok=True)
    _run(["mkfs.vfat", "-C", "-F", "32", "-n", layout.boot_label, "-i", ids.vfat, "--invariant", str(out),
          str(layout.boot_mib * 1024)], "mkfs.vfat", env)
    names = sorted(str(p) for p in firmware.iterdir())
    if not names:
        raise DiskBuildError(f"{firmware} is empty: raspi-firmware wrote nothing to /boot/firmware")
    _run(["mcopy", "-s", "-p", "-m", "-Q", "-i", str(out), *names, "::/"], "mcopy into the boot partition", env)


def make_root(tree: Path, out: Path, layout: Layout, ids: Ids, epoch: int) -> int:
    """The ext4 root partition as a file, made from the tree; returns its size in MiB."""
    mib = _tree_mib(tree) * 115 // 100 + layout.root_slack_mib  # ext4's metadata, then the slack
    env = os.environ | {"E2FSPROGS_FAKE_TIME": str(epoch)}
    out.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-L", layout.root_label, "-U", ids.root_uuid,
          "-E", f"hash_seed={ids.hash_seed},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
          "-T", "default", str(out), f"{mib}M"], "mkfs.ext4 -d", env)
    clamp_ctimes(tree, out, epoch)
    return mib


def clamp_ctimes(tree: Path, fs: Path, epoch: int) -> None:
    """mkfs.ext4 -d (e2fsprogs 1.47.0, bookworm's) copies each file's ctime, which no tool can set on the
    host, and its atime, which reading the tree moves: debugfs sets both to the epoch, in one session."""
    requests = fs.with_name(fs.name + ".ctime")
    with requests.open("w") as f:
        for path in sorted(tree.rglob("*")):
            rel = "/" + path.relative_to(tree).as_posix()
            if '"' in rel or "\n" in rel:
                raise DiskBuildError(f"{path}: a name debugfs cannot be given")
            for field in ("ctime", "atime"):  # atime: reading the tree (copying, compiling) moves it
                f.write(f'set_inode_field "{rel}" {field} @{epoch}\n')
        f.write(f'set_inode_field / ctime @{epoch}\nset_inode_field / atime @{epoch}\n')
    done = subprocess.run(["debugfs", "-w", "-f", str(requests), str(fs)], capture_output=True, text=True,
                          check=False, env=os.environ | {"E2FSPROGS_FAKE_TIME": str(epoch)})  # its write time too
    complaints = [line for line in done.stderr.splitlines() if line and not line.startswith("debugfs ")]
    if done.returncode != 0 or complaints:  # debugfs exits 0 whatever its requests did: its stderr tells
        raise DiskBuildError(f"debugfs setting ctimes in {fs.name}: {(complaints or ['exit status'])[0]}")
    requests.unlink()


def assemble(boot: Path, root: Path, out: Path, layout: Layout, ids: Ids, root_mib: int) -> Image:
    """An MBR with the boot (FAT32 LBA, bootable) and root (Linux) partitions, and both copied in."""
    boot_start = BOOT_START_MIB * MIB // SECTOR
    root_start = (BOOT_START_MIB + layout.boot_mib) * MIB // SECTOR
    total = (BOOT_START_MIB + layout.boot_mib + root_mib) * MIB
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(total)
    table = (f"label: dos\nlabel-id: {ids.disk}\nunit: sectors\n\n"
             f"start={boot_start}, size={layout.boot_mib * MIB // SECTOR}, type=c, bootable\n"
             f"start={root_start}, size={root_mib * MIB // SECTOR}, type=83\n")
    try:
        done = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)], input=table,
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DiskBuildError(f"sfdisk: {exc}") from None
    if done.returncode != 0:
        raise DiskBuildError(f"sfdisk on {out}: {done.stderr.strip()}")
    for part, start in ((boot, boot_start), (root, root_start)):
        _run(["dd", f"if={part}", f"of={out}", "bs=4M", f"seek={start * SECTOR}", "oflag=seek_bytes",
              "conv=notrunc,sparse", "status=none"], f"copying {part.name} into the image")
    return Image(out, total, root_mib)


def partition_offsets(image: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition, read back with sfdisk --json."""
    done = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DiskBuildError(f"{image}: not a partitioned image: {done.stderr.strip()}")
    parts = json.loads(done.stdout)["partitiontable"]["partitions"]
    return [(p["start"] * SECTOR, p["size"] * SECTOR) for p in parts]
