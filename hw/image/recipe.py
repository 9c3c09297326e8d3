"""The Raspberry Pi 4 image's root filesystem: a Debian bookworm arm64 tree built by mmdebstrap, cached by
its inputs (hw/arm64/rootfs.py's cache, with this recipe's components, packages and hooks in the key).

The tree carries the kernel and its initramfs, the Pi's boot firmware (raspi-firmware writes config.txt,
cmdline.txt, the kernel, the initramfs and the device trees into /boot/firmware), Wi-Fi firmware, systemd
with networkd and timesyncd, and every package the node's .deb depends on, so that the .deb installs
offline afterwards. Nothing here is specific to one fleet: the fleet root, the node's package and the
console policy are added to a copy of the tree (hw/image/steps.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rootfs import RootfsSpec  # hw/arm64 (the entry point puts it on sys.path)

ROOT_LABEL = "EDGEROOT"
BOOT_LABEL = "EDGEBOOT"
HOSTNAME = "edge-node"

# raspi-firmware's settings, in place before its postinst and kernel hook run (essential hook): the root by
# label, the kernel console on the HDMI/tty only (production: nothing on the serial pins).
RASPI_FIRMWARE_DEFAULTS = f"""# written by hw/image/recipe.py
ROOTPART=LABEL={ROOT_LABEL}
CONSOLES="tty1"
KERNEL_DTB=auto
"""

PACKAGES = (
    "linux-image-arm64", "raspi-firmware", "firmware-brcm80211",  # the Pi 4's kernel, boot firmware, Wi-Fi
    "initramfs-tools", "systemd-sysv", "udev", "kmod", "dbus", "systemd-timesyncd",  # boot, time by NTP
    "python3", "python3.11", "libstdc++6", "libgcc-s1", "init-system-helpers",  # the node's .deb's Depends
    "e2fsprogs", "iproute2", "netbase",  # fsck of the root at boot; ip; /etc/services and protocols
    "systemd-resolved",  # DNS from networkd's DHCP lease (the broker is named): /etc/resolv.conf is its stub
)


@dataclass(frozen=True)
class ImageRootSpec(RootfsSpec):
    """RootfsSpec with the archive components the firmware needs and the essential hook."""

    variant: str = "minbase"
    packages: tuple[str, ...] = PACKAGES
    components: tuple[str, ...] = ("main", "non-free-firmware")
    raspi_firmware_defaults: str = RASPI_FIRMWARE_DEFAULTS

    def command(self, target: Path) -> list[str]:
        hook = ('mkdir -p "$1/etc/default" && cat > "$1/etc/default/raspi-firmware" <<"END"\n'
                f"{self.raspi_firmware_defaults}END\n"
                f'echo {HOSTNAME} > "$1/etc/hostname"')
        return ["mmdebstrap", "--mode=root", f"--arch={self.arch}", f"--variant={self.variant}",
                f"--components={','.join(self.components)}", f"--include={','.join(self.packages)}",
                # the hook's /etc/default/raspi-firmware is kept when the package brings its own (conffile)
                "--dpkgopt=force-confold", f"--essential-hook={hook}", self.suite, str(target), self.mirror]
