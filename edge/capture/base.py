"""The frame-source interface and the reusable pixel buffer every source decodes into.

Frames are RGB uint8 HxWx3 arrays owned by the source and overwritten by the next read, so the hot path
allocates nothing per frame and no copy of a non-matching face outlives its frame. `close()` zero-fills them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from edge.capture.errors import CameraLostError, CaptureError


@runtime_checkable
class FrameSource(Protocol):
    """A camera or replay: open, read frames into reused buffers, close (which zeroes those buffers)."""

    name: str  # for logs and the state topic, e.g. "v4l2:/dev/video0"; never pixel data

    def open(self) -> None:
        """Acquire the device or files; CameraOpenError says why not. Opening an open source reopens it."""
        ...

    def read(self) -> np.ndarray | None:
        """The next RGB frame (valid until the next read), or None at the end of a finite replay.

        CameraLostError when an open camera stops delivering; CameraOpenError when a replay's next file
        cannot be opened."""
        ...

    def lores(self) -> np.ndarray | None:
        """The low-resolution RGB frame matching the last read (picamera2's detection stream), else None."""
        ...

    def close(self) -> None:
        """Release the device and zero-fill the source's pixel buffers; safe to call more than once."""
        ...


class PixelBuffer:
    """One reusable uint8 image buffer: reallocated only when the frame size changes, the old one zeroed first."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def fit(self, shape: tuple[int, ...]) -> np.ndarray:
        """The buffer, with exactly this shape (a new one only if the shape changed)."""
        if self.array is None or self.array.shape != shape:
            self.wipe()
            self.array = np.zeros(shape, np.uint8)
        return self.array

    def adopt(self, array: np.ndarray) -> np.ndarray:
        """Take over an array a decoder allocated (OpenCV does when the size changes); the old one is zeroed."""
        if array is not self.array:
            self.wipe()
            self.array = array
        return array

    def wipe(self) -> None:
        """Zero-fill the buffer in place (any view a consumer still holds then sees zeros)."""
        if self.array is not None:
            self.array.fill(0)


def bgr_into_rgb(bgr: np.ndarray, rgb: PixelBuffer) -> np.ndarray:
    """Convert an OpenCV BGR frame into the RGB buffer, without allocating once the size is settled."""
    dst = rgb.fit(bgr.shape)
    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=dst)
    return dst


def read_into(cap: cv2.VideoCapture, bgr: PixelBuffer) -> np.ndarray | None:
    """`cap.read` into the reused BGR buffer; None when no frame came."""
    ok, out = cap.read(bgr.array) if bgr.array is not None else cap.read()
    if not ok or out is None or out.size == 0:
        return None
    return bgr.adopt(np.asarray(out))


class OpenCVFrames:
    """What the OpenCV-backed sources share: the capture handle, the reused BGR and RGB buffers, reading
    one into the other, and releasing with the buffers zeroed."""

    name: str

    def __init__(self) -> None:
        self._cap: cv2.VideoCapture | None = None
        self._bgr, self._rgb = PixelBuffer(), PixelBuffer()

    def _read_rgb(self, lost: str) -> np.ndarray:
        """The next frame as RGB; CameraLostError(`lost`) when none came."""
        if self._cap is None:
            raise CaptureError(f"{self.name}: read() before open()")
        bgr = read_into(self._cap, self._bgr)
        if bgr is None:
            raise CameraLostError(lost)
        return bgr_into_rgb(bgr, self._rgb)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def lores(self) -> np.ndarray | None:
        """No second stream: detection runs on the frame itself."""
        return None

    def close(self) -> None:
        """Release the capture and zero the frame buffers."""
        self._release()
        self._bgr.wipe()
        self._rgb.wipe()
