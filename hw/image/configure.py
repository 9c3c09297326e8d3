"""What turns the Debian tree into this fleet's node image: the node's package installed, the fleet root in
place, logins and consoles closed, the network and the clock, and the USB gadget serial port for the
provisioning agent. Each function does one of these to the tree at `root` (a copy; the cached tree is never
changed).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from emulation import Chroot
from recipe import BOOT_LABEL, ROOT_LABEL

FLEET_ROOT = "usr/share/edge-node/fleet-root.json"  # edge/provision/agent.py DEFAULT_FLEET_ROOT, the unit's path
GADGET_MODULES = "dwc2\ng_serial\n"  # the Pi 4's USB-C port as a peripheral, an ACM serial function: /dev/ttyGS0
FSTAB = (f"LABEL={ROOT_LABEL}  /               ext4  rw,noatime,errors=remount-ro  0  1\n"
         f"LABEL={BOOT_LABEL}  /boot/firmware  vfat  rw,noatime,umask=0077,nofail  0  2\n")
WIRED = "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n"
DEBUG_CONSOLE = "console=ttyS1,115200"
AUTOLOGIN = ("# hw/image --debug-console: a root shell on the serial console, for the boot test only\n"
             "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud "
             "115200,57600,38400,9600 %I $TERM\n")


class ConfigureError(Exception):
    """A step in the tree failed (names the step and its last line of output)."""


@dataclass(frozen=True)
class Console:
    """Production: no serial console, no getty on any serial port. Debug: the kernel and a root shell on the
    first UART (ttyAMA0 on qemu virt, ttyS1 on the Pi 4's GPIO 14/15) and the agent's test port taken by the agent
    alone."""

    debug: bool
    agent_port: str | None  # a kernel tty name (hvc0) the agent takes as /dev/ttyGS0; None: the gadget itself


def _chroot(root: Path, argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    path = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}  # dpkg needs ldconfig, start-stop-daemon
    done = Chroot(root).run(argv, env=path | (env or {}))
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigureError(f"{what}: {' '.join(argv)} exited {done.returncode}: {last}")
    return done.stdout


def install_package(root: Path, deb: Path, epoch: int) -> None:
    """dpkg -i the node's package: its dependencies are already in the tree, so nothing is downloaded. Its
    postinst creates the user and /etc/edge-node, compiles the byte-code (SOURCE_DATE_EPOCH: hash-checked
    .pyc, reproducible) and enables the units; nothing starts in a chroot."""
    inside = Path("/tmp") / deb.name
    shutil.copy2(deb, root / inside.relative_to("/"))
    _chroot(root, ["dpkg", "-i", str(inside)], "installing the node's package", {"SOURCE_DATE_EPOCH": str(epoch)})
    (root / inside.relative_to("/")).unlink()


def place_fleet_root(root: Path, fleet_root: Path) -> None:
    """The fleet's root where the provisioning unit's condition and the agent look for it."""
    target = root / FLEET_ROOT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fleet_root, target)
    target.chmod(0o644)


def lock_logins(root: Path) -> None:
    """No password login: root's password locked; the edge-node system user has none (sysusers)."""
    _chroot(root, ["passwd", "--lock", "root"], "locking root's password")


def consoles(root: Path, console: Console) -> None:
    """Serial gettys off in production; in a debug image a root shell on the UART, and none on the agent's
    port (systemd's getty generator would start one on a virtio console)."""
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    if not console.debug:
        (units / "serial-getty@.service").symlink_to("/dev/null")  # every instance masked
        return
    dropin = units / "serial-getty@.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "autologin.conf").write_text(AUTOLOGIN)
    # the Pi 4's GPIO 14/15 UART under Debian's upstream device tree (raspi-firmware's "auto" picks it too);
    # raspi-extra-cmdline keeps it across kernel updates, which rewrite cmdline.txt
    (root / "etc/default/raspi-extra-cmdline").write_text(DEBUG_CONSOLE + "\n")
    cmdline = root / "boot/firmware/cmdline.txt"
    if cmdline.is_file() and DEBUG_CONSOLE not in cmdline.read_text():
        cmdline.write_text(cmdline.read_text().strip() + f" {DEBUG_CONSOLE}\n")
    if console.agent_port:
        (units / f"serial-getty@{console.agent_port}.service").symlink_to("/dev/null")


def agent_port(root: Path, console: Console) -> None:
    """The agent's port. On the Pi: dwc2 + g_serial make /dev/ttyGS0 on the USB-C port. For a test under
    qemu virt (no USB gadget there): a udev rule names the given tty /dev/ttyGS0 too, so the unit as shipped
    (port, DeviceAllow, dev-ttyGS0.device) runs unchanged on it."""
    (root / "etc/modules-load.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/modules-load.d/edge-node-gadget.conf").write_text(GADGET_MODULES)
    if console.agent_port:
        (root / "etc/udev/rules.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/udev/rules.d/90-edge-node-test-port.rules").write_text(
            "# hw/image --agent-port: the emulated port stands in for the USB gadget's (test images only)\n"
            f'KERNEL=="{console.agent_port}", SYMLINK+="ttyGS0", GROUP="dialout", MODE="0660", TAG+="systemd"\n')


def system(root: Path) -> None:
    """fstab by label, DHCP on the wired port (systemd-networkd), time by systemd-timesyncd, no swap (none
    is made; the node's privacy rule keeps frames out of swap), a fresh machine id at first boot."""
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").chmod(0o644)
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/80-wired.network").write_text(WIRED)
    _chroot(root, ["systemctl", "enable", "systemd-networkd.service", "systemd-timesyncd.service"],
            "enabling networkd and timesyncd")
    _chroot(root, ["systemctl", "mask", "swap.target"], "masking swap.target")
    (root / "etc/machine-id").write_text("uninitialized\n")  # systemd: first boot, generate and commit one
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def clean(root: Path) -> None:
    """What differs between two builds and nobody needs on the card: apt's lists and caches, logs."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/log/*.log", "var/log/apt/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                    "etc/*-", "tmp/*"):
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()


def firmware_files(root: Path) -> list[str]:
    """The boot partition's files as raspi-firmware left them (names, for the build's summary)."""
    out = subprocess.run(["ls", str(root / "boot/firmware")], capture_output=True, text=True, check=False).stdout
    return out.split()
