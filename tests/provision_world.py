"""Processes and places for the serial provisioning tests: a fleet made with the real `edge-fleet`, a freshly
flashed device (state dir, config dir, the fleet root its image carries), the agent and the technician tool
as separate processes running the real command lines, and a snapshot of everything on the device."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PASS = "correct horse"
ENV = {**os.environ, "EDGE_FLEET_PASSPHRASE": PASS, "PYTHONUNBUFFERED": "1"}
CODE = re.compile(r"CONFIRMATION CODE\s+(\d{3} \d{3})")


def cli(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    module = "edge.cli" if tool == "edge-node" else "provisioning.cli"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env or ENV, timeout=120, check=False)


def ok(tool: str, *args: str) -> str:
    proc = cli(tool, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_fleet(directory: Path, name: str = "acme") -> Path:
    ok("edge-fleet", "init", "--fleet-dir", str(directory), "--fleet", name, "--root-keys", "1",
       "--root-threshold", "1")
    ok("edge-fleet", "operator", "add", "console", "--fleet-dir", str(directory))
    ok("edge-fleet", "cert", "issue", "admin", "ops", "--fleet-dir", str(directory))
    return directory


@dataclass(frozen=True)
class Device:
    """A freshly flashed board: empty state dir, a config dir, the fleet root in its image."""

    state_dir: Path
    config: Path
    image_root: Path

    @classmethod
    def flash(cls, base: Path, fleet_dir: Path) -> Device:
        image = base / "image"
        image.mkdir(parents=True)
        shutil.copy(fleet_dir / "root" / "root.1.json", image / "fleet-root.json")
        (base / "etc").mkdir()
        return cls(base / "state", base / "etc" / "node.toml", image / "fleet-root.json")

    def snapshot(self) -> dict[str, str]:
        """Every file of the device's state and configuration, by content."""
        out = {}
        for top in (self.state_dir, self.config.parent):
            for p in sorted(top.rglob("*")):
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out


class Output:
    """Collects a process's output stream as it arrives (prompts end without a newline)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self.text = ""
        self._lock = threading.Lock()
        self._fd = stream.fileno()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.text += data.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                m = re.search(pattern, self.text)
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s in:\n{self.text}")

    def count(self, pattern: str) -> int:
        with self._lock:
            return len(re.findall(pattern, self.text))

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


class AgentProc:
    """`edge-node provision-agent` on the device end of a cable."""

    def __init__(self, device: Device, port: str, *extra: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        """With `cwd`, the agent runs there and is given the device's paths relative to it."""
        self.device = device

        def arg(p: Path) -> str:
            return os.path.relpath(p, cwd) if cwd else str(p)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "provision-agent", "--port", port, "--state-dir",
             arg(device.state_dir), "--config", arg(device.config), "--fleet-root", arg(device.image_root),
             "--device-id", "board-7f3a", "--session-timeout", "3", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or ENV, cwd=cwd)
        self.out = Output(self.proc.stderr)
        self.out.wait_for(r"listening on ")

    def codes(self) -> list[str]:
        return CODE.findall(self.out.text)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.out.join()
        return rc

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.out.join()


class ToolProc:
    """`edge-fleet provision` on the technician's end, stdin a pipe the test answers through."""

    def __init__(self, port: str, fleet_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provisioning.cli", "provision", "--port", port, "--fleet-dir", str(fleet_dir),
             "--timeout", "1", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or ENV)
        self.out = Output(self.proc.stdout)
        self.err = Output(self.proc.stderr)

    def code(self, timeout: float = 30.0) -> str:
        return self.out.wait_for(CODE.pattern, timeout).group(1)

    def answer(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout)
        self.out.join()
        self.err.join()
        return rc
