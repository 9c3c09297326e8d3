"""Keeps a frame source running: a camera that disappears is closed, waited for with exponential back-off
and reopened, so a loose cable or a vanished file never crashes the node. Its status goes on the state topic."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge.capture.base import FrameSource
from edge.capture.errors import CameraLostError, CameraOpenError

log = logging.getLogger(__name__)

CameraState = Literal["starting", "open", "reopening", "ended", "stopped"]


@dataclass(frozen=True)
class CameraStatus:
    """What the fleet admin sees of a camera (the node's retained MQTT state topic).

    state: starting (not yet opened), open, reopening (waiting after an error, also when absent at boot),
    ended (a finite replay is over), stopped (the node is shutting down); frames: frames delivered;
    reopens: successful opens after an error; last_error: the latest error message, kept after recovery."""

    state: CameraState
    frames: int
    reopens: int
    last_error: str | None


class CameraSupervisor:
    """Reads from one source for the capture thread, reopening it after CameraOpenError / CameraLostError.

    The back-off doubles from `min_backoff` to `max_backoff` seconds and resets after a delivered frame.
    `stop()` (from any thread) interrupts a back-off; `status()` may be called from any thread."""

    def __init__(self, source: FrameSource, min_backoff: float = 0.5, max_backoff: float = 30.0,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError(f"need 0 < min_backoff <= max_backoff, got {min_backoff}, {max_backoff}")
        self.source = source
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._stop = threading.Event()
        # the default sleep is the stop event's wait, so stop() cuts a back-off short
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._stop.wait
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CameraState = "starting"
        self._frames = self._reopens = 0
        self._last_error: str | None = None
        self._is_open = False
        self._failures = 0  # consecutive failures since the last delivered frame: sets the back-off
        self._down_since: float | None = None

    def read(self) -> np.ndarray | None:
        """The next frame (valid until the next read), or None when a finite replay ended or stop() was called."""
        while not self._stop.is_set():
            if self._state == "ended":
                return None
            if not self._is_open:
                try:
                    self.source.open()
                except CameraOpenError as exc:
                    self._failed(exc)
                    continue
                self._opened()
                continue  # look at stop() again before the first read
            try:
                frame = self.source.read()
            except (CameraOpenError, CameraLostError) as exc:
                self._failed(exc)
                continue
            if frame is None:
                log.info("camera %s: replay ended after %d frames", self.source.name, self._frames)
                self._close_source()
                self._set_state("ended")
                return None
            with self._lock:
                self._frames += 1
            self._failures = 0
            return frame
        self._close_source()
        return None

    def lores(self) -> np.ndarray | None:
        """The low-resolution frame that goes with the last read() (picamera2), or None."""
        return self.source.lores() if self._is_open else None

    def stop(self) -> None:
        """Ask the reading thread to stop: a back-off is cut short and read() returns None from then on."""
        with self._lock:
            self._state = "stopped"
        self._stop.set()

    def close(self) -> None:
        """Stop and release the source (zeroing its buffers); call from the reading thread, or after it ended."""
        self.stop()
        self._close_source()

    def status(self) -> CameraStatus:
        """A consistent snapshot for the state topic."""
        with self._lock:
            return CameraStatus(self._state, self._frames, self._reopens, self._last_error)

    def _opened(self) -> None:
        self._is_open = True
        with self._lock:
            if self._state == "stopped":
                return
            if self._state == "reopening":
                self._reopens += 1
                down = self._clock() - self._down_since if self._down_since is not None else 0.0
                log.info("camera %s: reopened after %.1f s (%d attempts)", self.source.name, down, self._failures)
            self._state = "open"
            self._down_since = None

    def _failed(self, exc: CameraOpenError | CameraLostError) -> None:
        """Close the source, record the error, wait out the back-off (stop() interrupts it)."""
        self._close_source()
        delay = min(self.max_backoff, self.min_backoff * 2.0 ** min(self._failures, 62))
        self._failures += 1
        with self._lock:
            if self._state == "stopped":
                return
            self._state, self._last_error = "reopening", str(exc)
            if self._down_since is None:
                self._down_since = self._clock()
        kind = "lost" if isinstance(exc, CameraLostError) else "cannot be opened"
        log.warning("camera %s %s: %s; retrying in %.1f s (attempt %d)", self.source.name, kind, exc, delay,
                    self._failures)
        self._sleep(delay)

    def _close_source(self) -> None:
        """Close (idempotent on every source): also after a failed open, which may have left a half-open device."""
        self.source.close()
        self._is_open = False

    def _set_state(self, state: CameraState) -> None:
        with self._lock:
            if self._state != "stopped":
                self._state = state
