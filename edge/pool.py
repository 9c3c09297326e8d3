"""A pool of frame buffers reused for the life of the process and zeroed when released.

Frames of non-matching faces must not linger: a buffer returns to the pool only after it is zero-filled,
and the pool never grows past its slot count (capture drops a frame instead, counted by the caller).
"""

from __future__ import annotations

import threading

import numpy as np


class FramePool:
    """At most `slots` buffers in use at once; a freed buffer of the right shape is reused."""

    def __init__(self, slots: int = 3):
        self.slots = slots
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._in_use = 0

    def acquire(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """A zeroed uint8 buffer of `shape`, or None if every slot is in use."""
        with self._lock:
            if self._in_use >= self.slots:
                return None
            self._in_use += 1
            for i, buf in enumerate(self._free):
                if buf.shape == shape:
                    return self._free.pop(i)
            if len(self._free) + self._in_use > self.slots:
                self._free.pop(0)  # a buffer of another shape (the camera changed mode): let it go
        return np.zeros(shape, np.uint8)

    def release(self, buf: np.ndarray) -> None:
        """Zero the buffer, then make it available again."""
        buf.fill(0)
        with self._lock:
            self._in_use -= 1
            self._free.append(buf)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def buffers(self) -> list[np.ndarray]:
        """The free buffers (for tests that check they are zero)."""
        with self._lock:
            return list(self._free)
