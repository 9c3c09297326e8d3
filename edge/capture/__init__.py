"""Frame sources behind one small interface: picamera2 (Pi CSI), V4L2 (USB), GStreamer (Jetson CSI) and
replay (files, folders, clips), plus the supervisor that reopens a camera which went away.

    source = open_source(config.camera)          # built, not yet opened
    camera = CameraSupervisor(source)            # opens it, and reopens it with back-off after errors
    while (frame := camera.read()) is not None:  # RGB uint8, reused: copy what must outlive the next read
        ...
    camera.close()                               # zero-fills the source's buffers
"""

from __future__ import annotations

from edge.capture.base import FrameSource
from edge.capture.errors import CameraLostError, CameraOpenError, CaptureError
from edge.capture.gstreamer import GStreamerSource, opencv_has_gstreamer
from edge.capture.picam import Picamera2Source
from edge.capture.replay import ReplaySource
from edge.capture.supervisor import CameraStatus, CameraSupervisor
from edge.capture.v4l2 import V4L2Source
from edge.config import CameraConfig

__all__ = [
    "CameraLostError", "CameraOpenError", "CameraStatus", "CameraSupervisor", "CaptureError", "FrameSource",
    "GStreamerSource", "Picamera2Source", "ReplaySource", "V4L2Source", "open_source", "opencv_has_gstreamer",
]


def open_source(camera: CameraConfig) -> FrameSource:
    """The source a camera configuration describes, built but not opened: CameraSupervisor opens it, so a
    camera that is absent at boot is retried instead of stopping the node."""
    if camera.source == "replay":
        return ReplaySource(camera.paths, realtime=camera.realtime, fps=camera.fps, hold_frames=camera.hold_frames,
                            loop=camera.loop)
    if camera.source == "v4l2":
        return V4L2Source(camera.device, camera.width, camera.height, camera.fps)
    if camera.source == "gstreamer":
        if camera.pipeline is None:
            raise ValueError(f"camera {camera.id!r}: a gstreamer source needs a pipeline")
        return GStreamerSource(camera.pipeline)
    if camera.source == "picamera2":
        return Picamera2Source(camera.width, camera.height, camera.fps, camera.lores_width, camera.lores_height)
    raise ValueError(f"camera {camera.id!r}: unknown source {camera.source!r}")
