"""GStreamer pipelines through OpenCV, for the Jetson's CSI cameras (`nvarguscamerasrc ! ... ! appsink`).

Needs an OpenCV built with GStreamer: JetPack's is, the pip wheels are not; the error says which one runs."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from edge.capture.base import OpenCVFrames
from edge.capture.errors import CameraOpenError

log = logging.getLogger(__name__)


def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build has its GStreamer video backend ("GStreamer: YES" in the build information)."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


class GStreamerSource(OpenCVFrames):
    """Frames from a GStreamer pipeline whose appsink delivers BGR (OpenCV's native order), converted to RGB."""

    def __init__(self, pipeline: str) -> None:
        if "appsink" not in pipeline:
            raise ValueError(f"GStreamer pipeline must end in appsink: {pipeline!r}")
        self.pipeline = pipeline
        self.name = f"gstreamer:{pipeline.split('!', 1)[0].strip()}"
        super().__init__()

    def open(self) -> None:
        """Start the pipeline; CameraOpenError when OpenCV lacks GStreamer or the pipeline does not start."""
        self.close()
        if not opencv_has_gstreamer():
            raise CameraOpenError(
                f"{self.pipeline}: this OpenCV ({cv2.__version__}) is built without GStreamer; pip's "
                "opencv-python wheels are. On a Jetson use JetPack's OpenCV (python3-opencv) from a venv made "
                "with --system-site-packages, and uninstall the pip wheel from it")
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise CameraOpenError(f"{self.pipeline}: the pipeline did not start (camera connected? nvargus-daemon "
                                  "running? try it with gst-launch-1.0, ending in fakesink)")
        log.info("%s: pipeline started", self.name)
        self._cap = cap

    def read(self) -> np.ndarray:
        """The next frame; CameraLostError when the pipeline stops delivering (EOS or an element error)."""
        return self._read_rgb(f"{self.name}: the pipeline stopped delivering frames")
