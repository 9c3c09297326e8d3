"""Replay of image files, folders of images and video clips, in order: the demo's and the tests' camera.

Behaves like a camera: RGB frames in reused buffers, optional real-time pacing at the clip's own frame rate,
and files that cannot be opened raise CameraOpenError naming them, so the supervisor treats a replay the same
way as a camera that went away.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.capture.base import OpenCVFrames, bgr_into_rgb, read_into
from edge.capture.errors import CameraOpenError, CaptureError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
# a container's frame rate outside this range is taken as missing or bogus; `fps` is used instead
PLAUSIBLE_FPS = (0.1, 240.0)


@dataclass(frozen=True)
class _Item:
    path: Path
    video: bool


def expand(paths: Sequence[Path]) -> list[_Item]:
    """Files and folders to replay items, in order; folders give their images sorted by name.

    Raises CameraOpenError naming the first path that is missing, of an unknown kind, or an empty folder."""
    items: list[_Item] = []
    for path in paths:
        if path.is_dir():
            try:
                images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            except OSError as exc:
                raise CameraOpenError(f"{path}: cannot list folder ({exc.strerror or exc})") from None
            if not images:
                raise CameraOpenError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            items += [_Item(p, video=False) for p in images]
        elif not path.exists():
            raise CameraOpenError(f"{path}: no such file or folder")
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            items.append(_Item(path, video=True))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            items.append(_Item(path, video=False))
        else:
            raise CameraOpenError(f"{path}: not a replayable file (images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                                  f"videos: {', '.join(sorted(VIDEO_SUFFIXES))})")
    return items


class ReplaySource(OpenCVFrames):
    """Frames from files, in order: a still is shown for `hold_frames` frames, a clip frame by frame.

    `realtime` paces frames at the clip's frame rate (stills, and clips without one: `fps`) with the injected
    clock and sleep; a consumer slower than that is never made up for with a burst. `loop` starts again at
    the end (re-reading folders and reopening files, so a file that vanished is a CameraOpenError then)."""

    def __init__(self, paths: Sequence[Path | str], realtime: bool = True, fps: float = 15.0, hold_frames: int = 1,
                 loop: bool = False, sleep: Callable[[float], object] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not paths:
            raise ValueError("a replay needs at least one path")
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if hold_frames < 1:
            raise ValueError(f"hold_frames must be at least 1, got {hold_frames!r}")
        self.paths = tuple(Path(p) for p in paths)
        self.realtime, self.fps, self.hold_frames, self.loop = realtime, fps, hold_frames, loop
        self._sleep, self._clock = sleep, clock
        more = f" (+{len(self.paths) - 1} more)" if len(self.paths) > 1 else ""
        self.name = f"replay:{self.paths[0]}{more}"
        self._items: list[_Item] = []
        self._index = 0
        super().__init__()
        self._clip_frames = 0  # frames decoded from the current clip
        self._hold_left = 0  # showings left of the current still
        self._interval = 1.0 / fps  # seconds between the current item's frames
        self._next_due: float | None = None
        self._open = self._ended = False

    def open(self) -> None:
        """Check every path and open the first item (a corrupt first file fails here, naming it)."""
        self.close()
        self._items = expand(self.paths)
        self._ended, self._next_due = False, None
        self._start(0)
        self._open = True

    def read(self) -> np.ndarray | None:
        """The next frame, paced if `realtime`; None once a non-looping replay has shown everything."""
        if not self._open:
            raise CaptureError(f"{self.name}: read() before open()")
        while not self._ended:
            item = self._items[self._index]
            if item.video:
                assert self._cap is not None
                bgr = read_into(self._cap, self._bgr)
                if bgr is not None:
                    self._clip_frames += 1
                    frame = bgr_into_rgb(bgr, self._rgb)
                    self._pace()
                    return frame
                if self._clip_frames == 0:
                    raise CameraOpenError(f"{item.path}: opened, but no frame could be decoded")
            elif self._hold_left > 0:
                self._hold_left -= 1
                assert self._rgb.array is not None
                self._pace()
                return self._rgb.array
            self._advance()
        return None

    def close(self) -> None:
        """Release the open clip and zero the frame buffers."""
        super().close()
        self._open = False

    def _advance(self) -> None:
        """Move to the next item, or wrap (loop) or end."""
        self._release()
        index = self._index + 1
        if index == len(self._items):
            if not self.loop:
                self._ended = True
                return
            self._items = expand(self.paths)  # folders are re-read; vanished files fail here
            index = 0
        self._start(index)

    def _start(self, index: int) -> None:
        """Open item `index`: a clip's decoder, or a still decoded once into the frame buffer."""
        self._index = index
        item = self._items[index]
        if not item.path.is_file():
            raise CameraOpenError(f"{item.path}: no such file (it vanished during the replay)")
        if not os.access(item.path, os.R_OK):
            raise CameraOpenError(f"{item.path}: permission denied")
        if item.video:
            cap = cv2.VideoCapture(str(item.path))
            if not cap.isOpened():
                cap.release()
                raise CameraOpenError(f"{item.path}: cannot open as a video (corrupt, or a format this OpenCV "
                                      "cannot decode)")
            clip_fps = cap.get(cv2.CAP_PROP_FPS)
            plausible = math.isfinite(clip_fps) and PLAUSIBLE_FPS[0] <= clip_fps <= PLAUSIBLE_FPS[1]
            self._interval = 1.0 / (clip_fps if plausible else self.fps)
            self._cap, self._clip_frames = cap, 0
            log.debug("replay: %s at %.3f fps", item.path, 1.0 / self._interval)
        else:
            self._decode_still(item.path)
            self._interval, self._hold_left = 1.0 / self.fps, self.hold_frames

    def _decode_still(self, path: Path) -> None:
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as exc:
            raise CameraOpenError(f"{path}: cannot read ({exc.strerror or exc})") from None
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if bgr is None:
            raise CameraOpenError(f"{path}: cannot decode as an image (corrupt, or not an image format)")
        bgr_into_rgb(bgr, self._rgb)
        bgr.fill(0)  # the decoder's own copy of the pixels: do not leave it in freed memory

    def _pace(self) -> None:
        """Wait until the frame is due; a consumer running late restarts the schedule instead of bursting."""
        if not self.realtime:
            return
        now = self._clock()
        due = self._next_due
        if due is not None and due > now:
            self._sleep(due - now)
            shown = due
        elif due is not None and now - due < self._interval:
            shown = due  # slightly late: keep the clip's rate on average
        else:
            shown = now  # first frame, or more than a frame behind
        self._next_due = shown + self._interval
