"""Capture errors: every failure to get frames is one of these, with a message naming the camera or file."""

from __future__ import annotations


class CaptureError(Exception):
    """A frame source failed; the message names the device, file or pipeline."""


class CameraOpenError(CaptureError):
    """A source cannot be opened (device absent, file unreadable, pipeline refused); the message says why."""


class CameraLostError(CaptureError):
    """A read failed on a source that was open (camera unplugged, driver stopped delivering frames)."""
