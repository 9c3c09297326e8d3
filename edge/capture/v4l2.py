"""USB (UVC) cameras through Video4Linux2: OpenCV's V4L2 backend, MJPG so 720p fits USB 2.0 bandwidth."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np

from edge.capture.base import OpenCVFrames
from edge.capture.errors import CameraOpenError

log = logging.getLogger(__name__)

_VIDEO_NODE = re.compile(r"/dev/video(\d+)")


def v4l2_target(device: str) -> int | str:
    """The index OpenCV's V4L2 backend opens most reliably (/dev/videoN -> N, through udev symlinks such as
    /dev/v4l/by-id/...), or the path itself when it is not a /dev/videoN node."""
    match = _VIDEO_NODE.fullmatch(os.path.realpath(device))
    return int(match.group(1)) if match else device


class V4L2Source(OpenCVFrames):
    """A V4L2 camera at `device`, asked for MJPG at width x height and fps (the driver may pick the nearest)."""

    def __init__(self, device: str = "/dev/video0", width: int = 1280, height: int = 720, fps: float = 15.0):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.name = f"v4l2:{device}"
        super().__init__()

    def open(self) -> None:
        """Open and configure the device; CameraOpenError says whether it is absent, forbidden or refused."""
        self.close()
        if not Path(self.device).exists():
            raise CameraOpenError(f"{self.device}: no such device (camera unplugged, or at another /dev/videoN: "
                                  "`v4l2-ctl --list-devices` lists them; /dev/v4l/by-id/ names are stable)")
        if not os.access(self.device, os.R_OK | os.W_OK):
            raise CameraOpenError(f"{self.device}: permission denied (the service user needs group 'video'; "
                                  "see hw/udev/99-edge-node.rules)")
        cap = cv2.VideoCapture(v4l2_target(self.device), cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CameraOpenError(f"{self.device}: the V4L2 backend cannot capture from it (not a capture node, "
                                  "or busy in another process)")
        # the pixel format first: which sizes and rates a UVC camera offers depends on it
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if got != (self.width, self.height):
            log.warning("%s: asked for %dx%d, the driver gives %dx%d", self.name, self.width, self.height, *got)
        log.info("%s: open at %dx%d, %.1f fps", self.name, *got, cap.get(cv2.CAP_PROP_FPS))
        self._cap = cap

    def read(self) -> np.ndarray:
        """The next frame; CameraLostError when the camera stops delivering."""
        return self._read_rgb(f"{self.device}: read failed (camera unplugged, or the driver stopped delivering "
                              "frames)")
