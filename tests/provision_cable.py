"""A serial cable for the provisioning tests: two real pseudo-terminal pairs joined in the test process.

The agent opens `device_path`, the technician tool opens a tool end's path; both use pyserial on a real
tty. The relay forwards whole frames (it splits the stream at the 0x00 delimiters) so a test can damage,
drop or cut exactly one frame, tap what passed, pull the cable (the tool's end vanishes, as a USB adapter
does; the device's end stays, as a USB gadget's does), plug in a new one, or add a second tool end on the
same line (a Y-cable: both hear the device, the device hears both).
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.provision.errors import FrameError
from edge.provision.protocol import Frame, decode_frame

TO_DEVICE, TO_TOOL = "to-device", "to-tool"


@dataclass
class Fault:
    """Do `action` to the next `times` frames going `direction` that `match`."""

    direction: str
    match: Callable[[Frame], bool]
    action: str  # "corrupt" (flip a byte in the middle), "drop", or "cut" (pass half of it, then pull the cable)
    times: int = 1
    hits: int = 0


@dataclass
class End:
    master: int
    slave: int
    path: str
    buf: bytearray = field(default_factory=bytearray)


def _pty() -> End:
    master, slave = os.openpty()
    tty.setraw(slave)  # raw from the start: no echo, no line editing, before any program opens it
    os.set_blocking(master, False)
    return End(master, slave, os.ttyname(slave))


class Cable:
    def __init__(self) -> None:
        self.device = _pty()
        self.tools: list[End] = [_pty()]
        self.faults: list[Fault] = []
        self.tap: list[tuple[str, Frame]] = []
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def device_path(self) -> str:
        return self.device.path

    @property
    def tool_path(self) -> str:
        return self.tools[0].path

    def add_tool_end(self) -> str:
        """A second tool on the same line (Y-cable)."""
        end = _pty()
        with self._lock:
            self.tools.append(end)
        return end.path

    def pull(self) -> None:
        """Unplug: every tool end vanishes (the tool's port reports an error); the device's end stays, silent."""
        with self._lock:
            ends, self.tools = self.tools, []
        for e in ends:
            os.close(e.master)
            os.close(e.slave)

    def plug(self) -> str:
        """A new cable on the same device end; returns the tool's new port."""
        end = _pty()
        with self._lock:
            self.tools = [end]
        return end.path

    def frames(self, direction: str) -> list[Frame]:
        with self._lock:
            return [f for d, f in self.tap if d == direction]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pull()
        os.close(self.device.master)
        os.close(self.device.slave)

    # -- the relay --
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ends = [self.device, *self.tools]
            try:
                ready, _, _ = select.select([e.master for e in ends], [], [], 0.05)
            except (OSError, ValueError):
                continue  # an end was pulled while we waited
            for e in ends:
                if e.master not in ready:
                    continue
                try:
                    data = os.read(e.master, 65536)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EIO, errno.EBADF):
                        continue
                    raise
                e.buf += data
                while (i := e.buf.find(b"\x00")) >= 0:
                    segment = bytes(e.buf[:i + 1])
                    del e.buf[:i + 1]
                    self._forward(TO_TOOL if e is self.device else TO_DEVICE, segment)

    def _forward(self, direction: str, segment: bytes) -> None:
        action = None
        encoded = segment[:-1]
        if encoded:
            try:
                frame = decode_frame(encoded)
            except FrameError:
                frame = None
            if frame is not None:
                with self._lock:
                    self.tap.append((direction, frame))
                    for f in self.faults:
                        if f.direction == direction and f.hits < f.times and f.match(frame):
                            f.hits += 1
                            action = f.action
                            break
        if action == "drop":
            return
        if action == "corrupt":
            mid = len(segment) // 2
            b = segment[mid] ^ 0x5A or 0x01  # never a 0x00: the frame stays one frame, with a bad CRC
            segment = segment[:mid] + bytes([b]) + segment[mid + 1:]
        if action == "cut":
            self._write(direction, segment[: len(segment) // 2])
            time.sleep(0.1)
            self.pull()
            return
        self._write(direction, segment)

    def _write(self, direction: str, data: bytes) -> None:
        with self._lock:
            targets = [self.device] if direction == TO_DEVICE else list(self.tools)
        for t in targets:
            view = memoryview(data)
            deadline = time.monotonic() + 2.0
            while view and time.monotonic() < deadline:
                try:
                    n = os.write(t.master, view)
                    view = view[n:]
                except BlockingIOError:
                    select.select([], [t.master], [], 0.05)
                except OSError:
                    break  # that end was pulled
            self.dropped_bytes += len(view)  # nobody reading: the bytes fall off the line
