"""hw/image/boot-test: the image booted under `qemu-system-aarch64 -M virt -cpu cortex-a72`, provisioned over
its emulated serial port from this host with `edge-fleet provision`, and checked to be a node.

There is no Raspberry Pi firmware under qemu: the kernel and initramfs are taken from the image's boot
partition and given to qemu directly (-kernel/-initrd, a virt machine's device tree), and the image is the
virtio disk the initramfs finds the root on (by label). The image must be a test image
(`build --debug-console --agent-port hvc0`): a root shell on the UART (the test's console, stdio) and the agent
on the virtio console, a pty on this host, which stands in for the USB gadget's /dev/ttyGS0.
The image file itself is never changed (qemu's snapshot=on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
PROMPT = "root@edge-node:~# "
LISTENING = "listening on /dev/ttyGS0"  # edge/provision/agent.py's line once it waits for a technician
CODE = re.compile(r"CONFIRMATION CODE\s+(\d{3} \d{3})")  # the tool's line and the agent's


class BootTestError(Exception):
    """A stage of the boot test failed: its one line, with the console log's path."""


@dataclass(frozen=True)
class Figures:
    """What the boot test measured (seconds; under emulation, speed means nothing)."""

    host_to_shell: float  # qemu started -> the debug shell's prompt
    guest_agent_listening: float  # the agent's "listening" line, guest monotonic clock (since the kernel began)
    host_to_agent_ready: float  # qemu started -> this host sees the agent listening
    provision: float  # edge-fleet provision, start to exit 0
    system_state: str  # systemctl is-system-running once booted


class Console:
    """The guest's serial console on qemu's stdio: a reader thread keeps everything, commands are typed."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc, self.log = proc, log
        self.text = ""
        self._lock = threading.Lock()
        self._n = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("ab") as out:
            while data := os.read(self.proc.stdout.fileno(), 65536):
                out.write(data)
                out.flush()
                with self._lock:
                    self.text += data.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        wanted = re.compile(pattern, re.DOTALL)
        while time.monotonic() < deadline:
            with self._lock:
                m = wanted.search(self.text, start)
            if m:
                return m
            if self.proc.poll() is not None:
                raise BootTestError(f"qemu exited {self.proc.returncode} while waiting for {pattern!r} "
                                    f"(console: {self.log})")
            time.sleep(0.1)
        raise BootTestError(f"{pattern!r} did not appear on the console within {timeout:.0f} s (console: {self.log})")

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Types `command` at the shell; its output and exit status, found between two markers whose text
        differs from the typed line (the tty echoes it)."""
        self._n += 1
        n = 100000 + 2 * self._n  # each command's two markers are its own
        with self._lock:
            start = len(self.text)
        line = f"echo @@$(({n}+0))@@; {command}; echo @@$(({n}+1))@@$?@@\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        m = self.wait_for(rf"@@{n}@@\r?\n(.*?)@@{n + 1}@@(\d+)@@", timeout, start)
        return int(m.group(2)), m.group(1).replace("\r", "")


def boot_files(image: Path, into: Path) -> tuple[Path, Path]:
    """The kernel and initramfs raspi-firmware put on the boot partition, copied out with mtools."""
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BootTestError(f"{image}: not a partitioned image: {out.stderr.strip()}")
    boot = json.loads(out.stdout)["partitiontable"]["partitions"][0]
    spec = f"{image}@@{boot['start'] * 512}"
    names = subprocess.run(["mdir", "-b", "-i", spec, "::/"], capture_output=True, text=True, check=False)
    if names.returncode != 0:
        raise BootTestError(f"{image}: the boot partition cannot be read: {names.stderr.strip()}")
    found: dict[str, Path] = {}
    for entry in names.stdout.split():
        name = entry.removeprefix("::/")
        for kind in ("vmlinuz", "initrd.img"):
            if name.startswith(kind):
                found[kind] = into / name
                subprocess.run(["mcopy", "-n", "-i", spec, f"::/{name}", str(found[kind])], check=True)
    if set(found) != {"vmlinuz", "initrd.img"}:
        raise BootTestError(f"{image}: no kernel and initramfs on the boot partition (found {names.stdout.split()})")
    return found["vmlinuz"], found["initrd.img"]


def qemu_command(image: Path, kernel: Path, initrd: Path, memory_mib: int, cpus: int) -> list[str]:
    return ["nice", "-n", "10", "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", str(cpus),
            "-m", str(memory_mib), "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-nic", "user,model=virtio-net-pci",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "root=LABEL=EDGEROOT rw rootwait console=ttyAMA0 net.ifnames=0",
            "-drive", f"file={image},format=raw,if=none,id=hd,snapshot=on", "-device", "virtio-blk-device,drive=hd",
            "-device", "virtio-serial-device", "-chardev", "pty,id=prov", "-device", "virtconsole,chardev=prov"]


def _pty_of(console: Console) -> str:
    """The host end of the agent's port, from qemu's 'char device redirected to /dev/pts/N (label prov)' (on
    stdout, before the guest's first byte)."""
    return console.wait_for(r"redirected to (/dev/pts/\d+) \(label prov\)", 60).group(1)


def fleet_cli(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CHECKOUT / ".venv" / "bin" / "edge-fleet"), *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def provision(console: Console, port: str, fleet: Path, device_id: str, broker: str) -> None:
    """`edge-fleet provision` from this host: the code the tool shows must be the one the device logs; yes."""
    tool = fleet_cli("provision", "--port", port, "--fleet-dir", str(fleet), "--device-id", device_id,
                     "--broker", broker, "--timeout", "30", "--retries", "6", stdin=subprocess.PIPE)
    assert tool.stdout is not None and tool.stdin is not None
    shown = ""
    while (m := CODE.search(shown)) is None:
        ch = tool.stdout.read(1)
        if not ch:
            err = tool.stderr.read() if tool.stderr else ""
            raise BootTestError(f"edge-fleet provision ended before a code: {err.strip() or '(no message)'}")
        shown += ch
    _, logged = console.run("journalctl -u edge-node-provision.service -o cat --no-pager | grep 'CONFIRMATION CODE'")
    device_codes = CODE.findall(logged)
    if not device_codes or device_codes[-1] != m.group(1):
        raise BootTestError(f"the tool shows {m.group(1)}, the device logged {device_codes or 'no code'}")
    tool.stdin.write("yes\n")
    tool.stdin.flush()
    out, err = tool.communicate(timeout=600)
    if tool.returncode != 0:
        raise BootTestError(f"edge-fleet provision exited {tool.returncode}: {err.strip().splitlines()[-2:]}")
    print(f"boot-test: provision: code {m.group(1)} on both ends; {(shown + out).strip().splitlines()[-1]}",
          flush=True)


def check_node(console: Console, port: str, fleet: Path, device_id: str) -> str:
    """The device is a node: `provision --check` reads it back provisioned under its new id; the marker and
    node.toml are in place; edge-node.service's conditions now hold (it starts; whether it then runs needs a
    camera and a broker, which the emulated machine has not)."""
    check = fleet_cli("provision", "--check", "--json", "--port", port, "--fleet-dir", str(fleet), "--timeout", "30")
    out, err = check.communicate(timeout=300)
    if check.returncode != 0:
        raise BootTestError(f"edge-fleet provision --check exited {check.returncode}: {err.strip()}")
    status = json.loads(out)
    if status.get("state") != "provisioned" or status.get("device_id") != device_id:
        raise BootTestError(f"provision --check: state {status.get('state')}, device {status.get('device_id')}")
    rc, _ = console.run("test -f /var/lib/edge-node/provision/state.json && test -f /etc/edge-node/node.toml")
    if rc != 0:
        raise BootTestError("the marker or /etc/edge-node/node.toml is missing after the commit")
    console.run("systemctl stop edge-node-provision.service")
    console.run("systemctl start --no-block edge-node.service; sleep 20")
    _, shown = console.run("systemctl show -p ConditionResult -p ActiveState -p SubState -p Result "
                           "edge-node.service | tr '\\n' ' '")
    if "ConditionResult=yes" not in shown:
        raise BootTestError(f"edge-node.service's conditions do not hold after provisioning: {shown.strip()}")
    return f"--check: provisioned as {device_id}; edge-node.service: {shown.strip()}"


def boot_test(image: Path, fleet: Path, logs: Path, memory_mib: int, cpus: int) -> Figures:
    manifest_path = image.with_suffix(".json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise BootTestError(f"{manifest_path}: the build's manifest cannot be read: {exc}") from None
    if not manifest.get("debug_console") or manifest.get("agent_port") != "hvc0":
        raise BootTestError(f"{image.name} is not a test image: build it with --debug-console --agent-port hvc0")
    logs.mkdir(parents=True, exist_ok=True)
    console_log = logs / "console.log"
    with tempfile.TemporaryDirectory(prefix="boot-test-") as tmp:
        kernel, initrd = boot_files(image, Path(tmp))
        argv = qemu_command(image, kernel, initrd, memory_mib, cpus)
        (logs / "qemu.argv").write_text(" ".join(argv) + "\n")
        t0 = time.monotonic()
        with (logs / "qemu.err").open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        try:
            console = Console(proc, console_log)
            port = _pty_of(console)
            console.wait_for(re.escape(PROMPT), 900)
            shell = time.monotonic() - t0
            print(f"boot-test: shell    {shell:7.1f} s  root shell on the serial console; agent port {port}",
                  flush=True)
            console.run("dmesg -n 1; export SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb")
            _, state = console.run("systemctl is-system-running --wait", timeout=900)
            _, failed = console.run("systemctl --failed --no-legend --plain | cut -d' ' -f1 | tr '\\n' ' '")
            ready_host = _wait_listening(console, t0)
            _, line = console.run("journalctl -u edge-node-provision.service -o short-monotonic --no-pager "
                                  f"| grep '{LISTENING}' | head -1")
            m = re.search(r"\[\s*([\d.]+)\]", line)
            if not m:
                raise BootTestError(f"no monotonic time on the agent's line: {line.strip()!r}")
            print(f"boot-test: ready    {ready_host:7.1f} s  {state.strip()}"
                  f"{' (failed: ' + failed.strip() + ')' if failed.strip() else ''}; agent listening at "
                  f"{float(m.group(1)):.1f} s after the kernel started", flush=True)
            t1 = time.monotonic()
            provision(console, port, fleet, "cam-image", "mqtts://broker.example:8883")
            took = time.monotonic() - t1
            print(f"boot-test: node     {check_node(console, port, fleet, 'cam-image')}", flush=True)
            console.run("systemctl poweroff --no-block")
            proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Figures(round(shell, 1), float(m.group(1)), round(ready_host, 1), round(took, 1), state.strip())


def _wait_listening(console: Console, t0: float) -> float:
    """Until the agent's unit is active and its journal says it listens; host seconds since qemu started."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        rc, _ = console.run(f"systemctl is-active -q edge-node-provision.service && journalctl -u "
                            f"edge-node-provision.service -o cat --no-pager | grep -q '{LISTENING}'")
        if rc == 0:
            return time.monotonic() - t0
        time.sleep(2)
    _, status = console.run("systemctl status edge-node-provision.service --no-pager -l | tail -20")
    raise BootTestError(f"the provisioning agent is not listening on /dev/ttyGS0:\n{status}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hw/image/boot-test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path, help="a test image (build --debug-console --agent-port hvc0)")
    p.add_argument("--fleet-dir", type=Path, required=True, help="the fleet whose root the image carries")
    p.add_argument("--logs", type=Path, help="where the console log goes (default: beside the image)")
    p.add_argument("--memory", type=int, default=1024, help="guest memory in MiB (default 1024)")
    p.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    args = p.parse_args(argv)
    if not args.image.is_file():
        p.error(f"{args.image}: no such image")
    logs = args.logs or args.image.parent / f"boot-test-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        figures = boot_test(args.image.resolve(), args.fleet_dir.resolve(), logs, args.memory, args.cpus)
    except BootTestError as exc:
        print(f"boot-test: FAILED: {exc}", file=sys.stderr)
        return 1
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"boot-test: FAILED: {exc}", file=sys.stderr)
        return 1
    print("boot-test: ok " + json.dumps(figures.__dict__), flush=True)
    return 0
