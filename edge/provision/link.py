"""A serial port (pyserial) carrying provisioning frames: open with an exclusive lock, write a frame, poll
for the frames that arrive. Port failures become LinkLostError, a held lock LineBusyError."""

from __future__ import annotations

import contextlib
import errno
import time

import serial

from edge.provision.errors import FrameError, LineBusyError, LinkLostError
from edge.provision.protocol import Frame, FrameReader, encode_frame

DEFAULT_BAUD = 115200  # a UART's usual rate; a USB CDC-ACM gadget ignores it
READ_SLICE = 0.05  # seconds one read may block


class SerialLink:
    """One end of the cable."""

    def __init__(self, port: serial.Serial, name: str) -> None:
        self.port = port
        self.name = name
        self.reader = FrameReader()

    @classmethod
    def open(cls, path: str, baudrate: int = DEFAULT_BAUD) -> SerialLink:
        """Open `path` raw, 8N1, with an exclusive lock (flock): a second program on the same port is refused."""
        try:
            port = serial.Serial(path, baudrate=baudrate, timeout=READ_SLICE, write_timeout=10, exclusive=True)
        except serial.SerialException as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in str(exc):
                raise LineBusyError(f"{path}: in use by another program (another technician tool or agent holds "
                                    "the port's lock)") from None
            raise LinkLostError(f"{path}: cannot open the serial port ({exc})") from None
        return cls(port, path)

    def bits_per_second(self) -> int:
        """The line's baud rate (DEFAULT_BAUD if the port reports none)."""
        return int(self.port.baudrate or DEFAULT_BAUD)

    def transfer_time(self, nbytes: int) -> float:
        """Seconds `nbytes` take on the line at its baud rate (10 bits a byte with start and stop bits)."""
        return nbytes * 10 / self.bits_per_second()

    def write(self, frame: Frame) -> int:
        """Encode and write one frame; the number of bytes written. LinkLostError if the port is gone."""
        data = encode_frame(frame)
        self.write_raw(data)
        return len(data)

    def write_raw(self, data: bytes) -> None:
        """Write bytes already encoded (a frame with its delimiters) and flush. LinkLostError if the port is gone."""
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(f"{self.name}: write failed ({exc}): cable disconnected?") from None

    def poll(self, timeout: float) -> list[tuple[Frame | FrameError, bytes]]:
        """Frames (or frame errors) that arrive within `timeout`; returns as soon as there is at least one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                waiting = self.port.in_waiting
                data = self.port.read(max(1, waiting))
            except (serial.SerialException, OSError) as exc:
                raise LinkLostError(f"{self.name}: read failed ({exc}): cable disconnected?") from None
            items = self.reader.feed(data) if data else []
            if items or time.monotonic() >= deadline:
                return items

    def close(self) -> None:
        """Close the port; a port whose device has gone already closes quietly."""
        with contextlib.suppress(serial.SerialException, OSError):  # a port whose device is gone
            self.port.close()
