"""Frame sources on real files: replay of the devset clip and the bundled footage (counts, order, holds,
loops, pacing, reused and zeroed buffers), clear errors for absent or corrupt cameras and files, and the
supervisor riding out a clip that disappears and comes back."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import (
    CameraLostError,
    CameraOpenError,
    CameraStatus,
    CameraSupervisor,
    CaptureError,
    FrameSource,
    GStreamerSource,
    Picamera2Source,
    ReplaySource,
    V4L2Source,
    open_source,
    opencv_has_gstreamer,
)
from edge.capture.base import PixelBuffer
from edge.capture.picam import i420_into_rgb
from edge.capture.v4l2 import v4l2_target
from edge.config import CameraConfig
from edge.vision.analyzer import read_rgb

FOOTAGE = Path(__file__).resolve().parents[1] / "edge" / "demo" / "footage"
FOOTAGE_STILLS = ("astronaut.png", "biden.jpg", "multi_face.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")


class FakeTime:
    """A clock that only moves when slept on, so pacing is checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a clip as RGB, decoded independently of the code under test."""
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def drain(source: FrameSource, limit: int = 10_000) -> Iterator[np.ndarray]:
    for _ in range(limit):
        frame = source.read()
        if frame is None:
            return
        yield frame
    raise AssertionError("replay did not end")


@pytest.fixture(scope="module")
def clip(devset: Path) -> Path:
    return devset / "videos" / "WolfgangLanger_Pexels.mp4"


@pytest.fixture(scope="module")
def short_clip(devset: Path) -> Path:
    return devset / "videos" / "no_face.mp4"


@pytest.fixture(scope="module")
def short_frames(short_clip: Path) -> list[np.ndarray]:
    return decode_all(short_clip)


# --- replay --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["devset", "bundled"])
def test_real_clip_replays_every_frame_as_rgb_into_one_buffer(clip: Path, where: str) -> None:
    if where == "bundled":  # the demo's copy of the same clip, shipped in the package
        clip = FOOTAGE / "WolfgangLanger_Pexels.mp4"
    expected = decode_all(clip)
    assert len(expected) > 400
    src = ReplaySource([clip], realtime=False)
    assert src.name == f"replay:{clip}"
    src.open()
    first = src.read()
    assert first is not None and first.dtype == np.uint8 and first.shape == (360, 640, 3)
    assert np.array_equal(first, expected[0])  # RGB, not OpenCV's BGR
    count, last = 1, first
    for frame in drain(src):
        assert frame is first  # the same buffer, overwritten each read
        count += 1
        last = frame
    assert count == len(expected)
    assert np.array_equal(last, expected[-1])
    assert src.read() is None  # stays ended
    assert src.lores() is None
    src.close()


def test_bundled_footage_folder_is_sorted_images_each_held(clip: Path) -> None:
    src = ReplaySource([FOOTAGE], realtime=False, hold_frames=2)
    src.open()
    frames = [f.copy() for f in drain(src)]
    src.close()
    # the folder's clip and PROVENANCE.md are not images: a folder replays its images only
    assert len(frames) == 2 * len(FOOTAGE_STILLS)
    for i, name in enumerate(FOOTAGE_STILLS):
        want = read_rgb(FOOTAGE / name)
        assert np.array_equal(frames[2 * i], want), name
        assert np.array_equal(frames[2 * i + 1], want), name


def test_folder_order_is_by_file_name(tmp_path: Path) -> None:
    for src_name, dst_name in (("obama.jpg", "b.jpg"), ("biden.jpg", "a.JPG"), ("astronaut.png", "c.png")):
        shutil.copy(FOOTAGE / src_name, tmp_path / dst_name)
    (tmp_path / "notes.txt").write_text("not an image")
    src = ReplaySource([tmp_path], realtime=False)
    src.open()
    shapes = [f.shape for f in drain(src)]
    want = [read_rgb(FOOTAGE / n).shape for n in ("biden.jpg", "obama.jpg", "astronaut.png")]
    assert shapes == want


def test_mixed_list_plays_in_the_given_order(short_clip: Path, short_frames: list[np.ndarray]) -> None:
    src = ReplaySource([FOOTAGE / "biden.jpg", short_clip, FOOTAGE / "obama.jpg"], realtime=False, hold_frames=3)
    src.open()
    frames = [f.copy() for f in drain(src)]
    assert len(frames) == 3 + len(short_frames) + 3
    biden, obama = read_rgb(FOOTAGE / "biden.jpg"), read_rgb(FOOTAGE / "obama.jpg")
    assert all(np.array_equal(f, biden) for f in frames[:3])
    assert np.array_equal(frames[3], short_frames[0]) and np.array_equal(frames[-4], short_frames[-1])
    assert all(np.array_equal(f, obama) for f in frames[-3:])


def test_loop_starts_again_at_the_end(short_clip: Path, short_frames: list[np.ndarray]) -> None:
    src = ReplaySource([short_clip, FOOTAGE / "obama.jpg"], realtime=False, hold_frames=2, loop=True)
    src.open()
    n = len(short_frames) + 2
    frames = []
    for _ in range(n + 3):
        frame = src.read()
        assert frame is not None
        frames.append(frame.copy())
    assert np.array_equal(frames[n], short_frames[0])
    assert np.array_equal(frames[n + 2], short_frames[2])
    src.close()


def test_realtime_paces_at_the_clips_rate_then_the_stills_rate(short_clip: Path) -> None:
    cap = cv2.VideoCapture(str(short_clip))
    clip_fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    n = len(decode_all(short_clip))
    t = FakeTime()
    src = ReplaySource([short_clip, FOOTAGE / "biden.jpg"], realtime=True, fps=5.0, hold_frames=3,
                       sleep=t.sleep, clock=t.clock)
    src.open()
    assert sum(1 for _ in drain(src)) == n + 3
    # the first frame at once; each later frame one interval after the previous (the still's first
    # showing comes one clip interval after the clip's last frame)
    assert len(t.sleeps) == n + 2
    assert t.sleeps[:n] == pytest.approx([1 / clip_fps] * n)
    assert t.sleeps[n:] == pytest.approx([0.2, 0.2])
    assert t.now - 1000.0 == pytest.approx(n / clip_fps + 0.4)


def test_a_late_consumer_gets_no_burst_of_frames() -> None:
    t = FakeTime()
    src = ReplaySource([FOOTAGE / "obama.jpg"], realtime=True, fps=10.0, hold_frames=10, sleep=t.sleep,
                       clock=t.clock)
    src.open()
    assert src.read() is not None and t.sleeps == []
    t.now += 1.0  # the consumer took a second: ten frames late
    assert src.read() is not None and t.sleeps == []  # shown at once ...
    assert src.read() is not None and t.sleeps == pytest.approx([0.1])  # ... and then the normal rate


def test_not_realtime_never_sleeps(short_clip: Path) -> None:
    t = FakeTime()
    src = ReplaySource([short_clip], realtime=False, sleep=t.sleep, clock=t.clock)
    src.open()
    assert sum(1 for _ in drain(src)) > 0
    assert t.sleeps == []


def test_buffers_are_reused_and_zeroed_on_close(short_clip: Path) -> None:
    src = ReplaySource([short_clip, FOOTAGE / "obama.jpg"], realtime=False, hold_frames=2)
    src.open()
    first = src.read()
    second = src.read()
    assert first is not None and second is first and first.any()
    src.close()
    assert not first.any()  # the frame a consumer still holds is zeros now

    src.open()  # reopening starts again at the beginning
    frames = list(drain(src))
    last_clip_frame, still = frames[-3], frames[-1]
    assert still is frames[-2] and still is not last_clip_frame  # a new size needs a new buffer ...
    assert not last_clip_frame.any()  # ... and the old one was zeroed when it was replaced
    src.close()
    assert not still.any()


def test_corrupt_video_is_an_open_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "x.mp4"
    bad.write_bytes(np.random.default_rng(7).bytes(64 * 1024))
    with pytest.raises(CameraOpenError, match=re.escape("x.mp4")):
        ReplaySource([bad], realtime=False).open()


def test_truncated_video_and_corrupt_image_name_the_file(tmp_path: Path, short_clip: Path) -> None:
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(short_clip.read_bytes()[:2000])
    src = ReplaySource([truncated], realtime=False)
    with pytest.raises(CameraOpenError, match=re.escape("cut.mp4")):
        src.open()
        src.read()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    src = ReplaySource([FOOTAGE / "obama.jpg", bad], realtime=False)
    src.open()
    assert src.read() is not None
    with pytest.raises(CameraOpenError, match=re.escape("broken.jpg")):
        src.read()


def test_missing_unknown_and_empty_paths_are_open_errors(tmp_path: Path) -> None:
    with pytest.raises(CameraOpenError, match=re.escape("absent.mp4: no such file")):
        ReplaySource([tmp_path / "absent.mp4"]).open()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CameraOpenError, match=re.escape("notes.txt: not a replayable file")):
        ReplaySource([tmp_path / "notes.txt"]).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraOpenError, match="empty: folder holds no images"):
        ReplaySource([tmp_path / "empty"]).open()
    with pytest.raises(CaptureError, match="before open"):
        ReplaySource([FOOTAGE / "obama.jpg"]).read()
    with pytest.raises(ValueError):
        ReplaySource([], realtime=False)
    with pytest.raises(ValueError):
        ReplaySource([FOOTAGE], hold_frames=0)


def test_a_file_vanishing_mid_run_fails_on_reopen(tmp_path: Path, short_clip: Path,
                                                  short_frames: list[np.ndarray]) -> None:
    copy = tmp_path / "clip.mp4"
    shutil.copy(short_clip, copy)
    src = ReplaySource([copy], realtime=False, loop=True)
    src.open()
    assert src.read() is not None
    copy.unlink()
    read = 1
    with pytest.raises(CameraOpenError, match=re.escape("clip.mp4: no such file")):
        while src.read() is not None:
            read += 1
    assert read == len(short_frames)  # the open clip played to its end; reopening it for the loop failed
    src.close()


# --- cameras ---------------------------------------------------------------------------------------------


def test_v4l2_missing_device_names_it(tmp_path: Path) -> None:
    device = str(tmp_path / "video9")
    src = V4L2Source(device, 1280, 720, 15.0)
    assert src.name == f"v4l2:{device}"
    with pytest.raises(CameraOpenError, match=re.escape(f"{device}: no such device")):
        src.open()
    with pytest.raises(CaptureError, match="before open"):
        src.read()
    src.close()


def test_v4l2_on_something_that_is_not_a_camera_names_it(tmp_path: Path) -> None:
    not_a_camera = tmp_path / "video0"
    not_a_camera.write_bytes(b"")
    with pytest.raises(CameraOpenError, match=re.escape(f"{not_a_camera}: the V4L2 backend cannot capture")):
        V4L2Source(str(not_a_camera)).open()


def test_v4l2_opens_video_nodes_by_index_through_symlinks(tmp_path: Path) -> None:
    link = tmp_path / "usb-Logitech_C920-video-index0"
    link.symlink_to("/dev/video7")
    assert v4l2_target(str(link)) == 7
    assert v4l2_target("/dev/video12") == 12
    assert v4l2_target(str(tmp_path / "cam")) == str(tmp_path / "cam")


def test_gstreamer_needs_an_opencv_built_with_it() -> None:
    pipeline = "nosuchelement ! videoconvert ! appsink"
    src = GStreamerSource(pipeline)
    assert src.name == "gstreamer:nosuchelement"
    if opencv_has_gstreamer():  # e.g. JetPack's OpenCV: then the bogus pipeline itself must be refused
        with pytest.raises(CameraOpenError, match="did not start"):
            src.open()
    else:
        with pytest.raises(CameraOpenError, match="built without GStreamer") as err:
            src.open()
        assert pipeline in str(err.value)
    with pytest.raises(ValueError, match="appsink"):
        GStreamerSource("videotestsrc ! autovideosink")


def test_picamera2_absent_is_an_open_error_with_the_hint() -> None:
    try:
        importlib.import_module("picamera2")
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here (a Pi): the import-failure path cannot be shown")
    src = Picamera2Source(1536, 864, 15.0, 640, 360)
    assert src.lores() is None
    with pytest.raises(CameraOpenError, match="picamera2 is not installed") as err:
        src.open()
    assert "python3-picamera2" in str(err.value) and "--system-site-packages" in str(err.value)
    src.close()
    with pytest.raises(ValueError, match="even"):
        Picamera2Source(1536, 864, 15.0, 641, 360)
    with pytest.raises(ValueError, match="both"):
        Picamera2Source(1536, 864, 15.0, 640, None)


@pytest.mark.parametrize("stride", [200, 256])
def test_lores_yuv420_with_padded_rows_converts_to_rgb(stride: int) -> None:
    """picamera2's lores stream: I420 in an array (h*3/2, stride) whose U and V rows are stride/2 wide."""
    width, height = 200, 120
    rgb = cv2.resize(read_rgb(FOOTAGE / "obama.jpg"), (width, height), interpolation=cv2.INTER_AREA)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # (180, 200): Y, then U and V planes back to back
    y, uv = i420[:height], i420[height:].reshape(-1)
    half = (height // 2) * (width // 2)
    padded = np.full((height * 3 // 2, stride), 77, np.uint8)  # padding bytes that must not leak in
    padded[:height, :width] = y
    chroma = padded[height:].reshape(-1)
    for plane in range(2):
        rows = uv[plane * half:(plane + 1) * half].reshape(height // 2, width // 2)
        start = plane * (height // 2) * (stride // 2)
        chroma[start:start + (height // 2) * (stride // 2)].reshape(height // 2, stride // 2)[:, :width // 2] = rows
    out, packed = PixelBuffer(), PixelBuffer()
    got = i420_into_rgb(padded, width, height, packed, out)
    assert got is out.array and got.shape == (height, width, 3)
    assert np.array_equal(got, cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420))
    assert np.abs(got.astype(int) - rgb).mean() < 3  # and it is the picture, in RGB order
    again = i420_into_rgb(padded, width, height, packed, out)
    assert again is got  # no new buffer per frame


def test_open_source_builds_the_configured_kind(tmp_path: Path) -> None:
    replay = open_source(CameraConfig(source="replay", paths=(FOOTAGE,), realtime=False, hold_frames=4))
    assert isinstance(replay, ReplaySource) and replay.hold_frames == 4 and not replay.realtime
    v4l2 = open_source(CameraConfig(source="v4l2", device="/dev/video2", width=640, height=480, fps=30))
    assert isinstance(v4l2, V4L2Source) and v4l2.name == "v4l2:/dev/video2" and v4l2.width == 640
    gst = open_source(CameraConfig(source="gstreamer", pipeline="nvarguscamerasrc ! appsink"))
    assert isinstance(gst, GStreamerSource) and gst.name == "gstreamer:nvarguscamerasrc"
    pi = open_source(CameraConfig(source="picamera2", width=1536, height=864, lores_width=640, lores_height=360))
    assert isinstance(pi, Picamera2Source) and pi.lores_size == (640, 360)
    for source in (replay, v4l2, gst, pi):
        assert isinstance(source, FrameSource)
    with pytest.raises(ValueError, match="pipeline"):
        open_source(CameraConfig(source="gstreamer"))


# --- supervisor ------------------------------------------------------------------------------------------


def test_supervisor_reports_a_finite_replay_to_its_end(short_clip: Path, short_frames: list[np.ndarray]) -> None:
    sup = CameraSupervisor(ReplaySource([short_clip], realtime=False))
    assert sup.status() == CameraStatus("starting", 0, 0, None)
    frames = 0
    while sup.read() is not None:
        frames += 1
        if frames == 1:
            assert sup.status().state == "open"
    assert frames == len(short_frames)
    assert sup.status() == CameraStatus("ended", len(short_frames), 0, None)
    assert sup.read() is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        sup.status().frames = 0  # type: ignore[misc]


def test_supervisor_rides_out_a_clip_that_vanishes_and_returns(tmp_path: Path, short_clip: Path,
                                                               short_frames: list[np.ndarray],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    clip = tmp_path / "clip.mp4"
    shutil.copy(short_clip, clip)
    sleeps: list[float] = []
    seen: list[CameraStatus] = []

    def sleep(seconds: float) -> None:  # back-off without waiting; the file returns on the third wait
        sleeps.append(seconds)
        seen.append(sup.status())
        if len(sleeps) == 3:
            shutil.copy(short_clip, clip)

    sup = CameraSupervisor(ReplaySource([clip], realtime=False, loop=True), min_backoff=0.5, max_backoff=1.5,
                           sleep=sleep)
    caplog.set_level(logging.INFO, logger="edge.capture")
    for _ in range(10):
        assert sup.read() is not None
    assert sup.status() == CameraStatus("open", 10, 0, None)
    clip.unlink()
    for _ in range(len(short_frames) + 20):  # the rest of the open clip, the outage, then the clip again
        assert sup.read() is not None
    assert sleeps == [0.5, 1.0, 1.5]  # doubling, capped at max_backoff
    assert all(s.state == "reopening" and s.last_error is not None and "clip.mp4" in s.last_error for s in seen)
    status = sup.status()
    assert status.state == "open" and status.reopens == 1 and status.frames == len(short_frames) + 30
    assert status.last_error is not None and "clip.mp4" in status.last_error  # kept for the admin
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be opened" in m and "clip.mp4" in m for m in messages)
    assert any("reopened" in m for m in messages)
    sup.close()


class FlakySource:
    """A frame source of our own (not an OpenCV stand-in) whose reads fail on a script."""

    name = "flaky:test"

    def __init__(self, script: str) -> None:
        self.script = iter(script)  # per read: "f" a frame, "l" lost
        self.frame = np.full((4, 4, 3), 9, np.uint8)
        self.opens = self.closes = 0

    def open(self) -> None:
        self.opens += 1

    def read(self) -> np.ndarray | None:
        step = next(self.script, None)
        if step is None:
            return None
        if step == "l":
            raise CameraLostError("flaky:test: read failed")
        return self.frame

    def lores(self) -> np.ndarray | None:
        return None

    def close(self) -> None:
        self.closes += 1
        self.frame.fill(0)


def test_supervisor_backoff_doubles_and_resets_after_a_frame() -> None:
    sleeps: list[float] = []
    src = FlakySource("fllllfl" + "f")
    sup = CameraSupervisor(src, min_backoff=0.5, max_backoff=3.0, sleep=sleeps.append)
    assert [sup.read() is not None for _ in range(3)] == [True, True, True]
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 0.5]
    status = sup.status()
    assert status == CameraStatus("open", 3, 5, "flaky:test: read failed")
    assert src.opens == 6
    assert sup.read() is None and sup.status().state == "ended"


def test_stop_interrupts_the_backoff(tmp_path: Path) -> None:
    device = str(tmp_path / "video5")
    sup = CameraSupervisor(V4L2Source(device), min_backoff=30.0, max_backoff=60.0)
    result: list[np.ndarray | None] = []
    thread = threading.Thread(target=lambda: result.append(sup.read()))
    thread.start()
    deadline = time.monotonic() + 5
    while sup.status().state != "reopening" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sup.status().state == "reopening"
    last_error = sup.status().last_error
    assert last_error is not None and device in last_error
    started = time.monotonic()
    sup.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2
    assert result == [None]
    assert sup.status().state == "stopped"
    assert sup.read() is None
