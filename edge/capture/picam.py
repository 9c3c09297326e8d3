"""The Raspberry Pi's CSI cameras through picamera2 (libcamera): a main stream for face crops and a small
"lores" stream for detection, both scaled by the camera's ISP, so the CPU never resizes a full frame.

picamera2 exists only on a Pi, from the OS package, so it is imported inside `open()`. Its "RGB888" is
B,G,R in memory (OpenCV's order) and its lores stream is YUV420 (I420), possibly with padded rows; both are
converted into this source's own RGB buffers while the camera's buffer is mapped, then handed straight back.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import cv2
import numpy as np

from edge.capture.base import PixelBuffer
from edge.capture.errors import CameraLostError, CameraOpenError, CaptureError

log = logging.getLogger(__name__)

PICAMERA2_HINT = ("picamera2 is not installed; on a Pi use the OS package python3-picamera2 and a venv with "
                  "--system-site-packages")


def i420_into_rgb(yuv: np.ndarray, width: int, height: int, packed: PixelBuffer, rgb: PixelBuffer) -> np.ndarray:
    """Convert picamera2's YUV420 array (height*3/2 rows of `stride` bytes; the U and V planes have rows of
    stride/2 bytes) into the RGB buffer, dropping any row padding first (which OpenCV cannot skip)."""
    dst = rgb.fit((height, width, 3))
    stride = yuv.shape[1]
    if stride == width:
        cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420, dst=dst)
        return dst
    tight = packed.fit((height * 3 // 2, width))
    tight[:height] = yuv[:height, :width]
    hh, hw, hs = height // 2, width // 2, stride // 2
    chroma = np.ascontiguousarray(yuv[height:height * 3 // 2]).reshape(-1)  # a view when yuv is contiguous
    out = tight[height:].reshape(-1)
    for plane in range(2):  # U, then V
        src = chroma[plane * hh * hs:(plane + 1) * hh * hs].reshape(hh, hs)[:, :hw]
        out[plane * hh * hw:(plane + 1) * hh * hw].reshape(hh, hw)[...] = src
    cv2.cvtColor(tight, cv2.COLOR_YUV2RGB_I420, dst=dst)
    return dst


class Picamera2Source:
    """A Pi CSI camera: main stream width x height for crops, optional lores stream for detection."""

    def __init__(self, width: int = 1536, height: int = 864, fps: float = 15.0,
                 lores_width: int | None = None, lores_height: int | None = None) -> None:
        if (lores_width is None) != (lores_height is None):
            raise ValueError("set both lores_width and lores_height, or neither")
        if lores_width is not None and lores_height is not None:
            if lores_width % 2 or lores_height % 2:
                raise ValueError(f"YUV420 needs even lores dimensions, got {lores_width}x{lores_height}")
            if lores_width > width or lores_height > height:
                raise ValueError("the lores stream cannot be larger than the main stream")
        self.width, self.height, self.fps = width, height, fps
        self.lores_size = (lores_width, lores_height) if lores_width and lores_height else None
        self.name = f"picamera2:{width}x{height}" + (f"+lores {lores_width}x{lores_height}" if self.lores_size else "")
        self._timeout = max(2.0, 5.0 / fps)  # seconds without a frame before the camera counts as lost
        self._module: Any = None
        self._cam: Any = None
        self._rgb, self._lores, self._packed = PixelBuffer(), PixelBuffer(), PixelBuffer()

    def open(self) -> None:
        """Import picamera2, configure the streams and start the camera."""
        self.close()
        try:
            module: Any = importlib.import_module("picamera2")
        except ImportError as exc:
            raise CameraOpenError(f"{self.name}: {PICAMERA2_HINT} ({exc})") from None
        try:
            cam = module.Picamera2()
        except (IndexError, RuntimeError, OSError) as exc:  # IndexError: no camera attached at all
            raise CameraOpenError(f"{self.name}: no usable camera ({type(exc).__name__}: {exc}); check the "
                                  "ribbon cable and `rpicam-hello --list-cameras`") from None
        try:
            streams: dict[str, Any] = {"main": {"size": (self.width, self.height), "format": "RGB888"}}
            if self.lores_size is not None:
                streams["lores"] = {"size": self.lores_size, "format": "YUV420"}
            config = cam.create_video_configuration(**streams, controls={"FrameRate": self.fps})
            cam.configure(config)
            actual = cam.camera_configuration()
            if self.lores_size is not None:  # libcamera may align the size; convert what it delivers
                size = actual["lores"]["size"]
                self.lores_size = (int(size[0]), int(size[1]))
            cam.start()
        except (RuntimeError, ValueError, OSError) as exc:
            cam.close()
            raise CameraOpenError(f"{self.name}: the camera refused the configuration ({exc})") from None
        log.info("%s: started (main %s, lores %s, sensor mode %s)", self.name, actual["main"]["size"],
                 self.lores_size, actual.get("sensor"))
        self._module, self._cam = module, cam

    def read(self) -> np.ndarray:
        """The next main frame (RGB); its lores twin is then available from `lores()`."""
        if self._cam is None:
            raise CaptureError(f"{self.name}: read() before open()")
        try:
            request = self._cam.capture_request(wait=self._timeout)  # a number: a timeout (picamera2 >= 0.3.17)
        except (TimeoutError, RuntimeError, OSError) as exc:
            raise CameraLostError(f"{self.name}: no frame ({type(exc).__name__}: {exc})") from None
        try:
            with self._module.MappedArray(request, "main") as mapped:
                bgr: np.ndarray = mapped.array
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=self._rgb.fit(bgr.shape))
            if self.lores_size is not None:
                with self._module.MappedArray(request, "lores") as mapped:
                    i420_into_rgb(mapped.array, self.lores_size[0], self.lores_size[1], self._packed, self._lores)
        except (RuntimeError, OSError, ValueError) as exc:
            raise CameraLostError(f"{self.name}: cannot map the frame ({exc})") from None
        finally:
            request.release()  # back to the camera at once: its buffers are reused for the next frames
        assert self._rgb.array is not None
        return self._rgb.array

    def lores(self) -> np.ndarray | None:
        """The detection-sized RGB frame matching the last read, if a lores stream is configured."""
        return self._lores.array if self.lores_size is not None else None

    def close(self) -> None:
        """Stop and release the camera (another process may then open it); zero the frame buffers."""
        cam, self._cam = self._cam, None
        if cam is not None:
            for step in (cam.stop, cam.close):
                try:
                    step()
                except (RuntimeError, OSError) as exc:  # a camera that vanished may refuse; release the rest
                    log.warning("%s: %s failed while closing: %s", self.name, step.__name__, exc)
        self._rgb.wipe()
        self._lores.wipe()
        self._packed.wipe()
