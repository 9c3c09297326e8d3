"""Camera to match event: a capture thread, a one-frame mailbox (newest wins), an inference thread.

    capture: read -> deployment gate (outside the window or camera not listed: dropped before detection)
             -> copy into a pooled buffer -> mailbox (a waiting older frame is dropped and counted)
    inference: detect, gate, align, embed -> match (threshold from the signed deployment) -> track
             -> alert after K of N agreeing frames -> sink (signed event, crop sealed to the operator)
             -> every buffer that held the frame, its faces, embeddings or scores is zeroed

Only counters describe non-matching faces. The publisher (MQTT loop + outbox) runs in edge.events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import cv2
import numpy as np

from edge.config import TrackingConfig
from edge.deployment import Admission, DeploymentGate, DeploymentUse, Effectiveness, Refusal
from edge.events.messages import ModelRef, ShardRef
from edge.events.service import MatchDraft
from edge.pool import FramePool
from edge.tracking import FaceObservation, Tracker, template_weight
from edge.vision.analyzer import FaceAnalyzer
from edge.watchlist.gallery import Matcher, MatchPolicy
from edge.watchlist.loader import AcceptedShard

log = logging.getLogger(__name__)
MIN_MARGIN = 0.02  # top-1 must beat the runner-up by this much (docs/vision.md)


class FrameReader(Protocol):
    """What the pipeline needs of a camera (edge.capture.CameraSupervisor)."""

    def read(self) -> np.ndarray | None: ...

    def lores(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Captured:
    """A frame in pooled buffers: the main image (crops, alignment) and, from a camera that has one, its
    low-resolution stream (detection)."""

    frame: np.ndarray
    lores: np.ndarray | None
    ts: float


class AlertSink(Protocol):
    """Where alerts go: the event service (signed, outbox, MQTT), or the demo's printer."""

    def emit(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> str: ...


class Beat(Protocol):
    """A progress marker the watchdog reads (edge.systemd.Heartbeat)."""

    def beat(self) -> None: ...


@dataclass
class Counters:
    """Everything the node reports about what it saw. Counts only: no face data."""

    frames: int = 0
    dropped_busy: int = 0  # replaced in the mailbox by a newer frame, or no free buffer
    outside_deployment: int = 0  # dropped before detection: no shard, outside the window, camera not listed
    faces: int = 0
    below_quality: int = 0
    discarded: int = 0  # faces that matched nothing: gone at once
    alerts: int = 0
    processed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


class Mailbox:
    """Holds at most one frame. `put` with `drop_old` replaces a waiting frame (live cameras: newest wins);
    without, it waits for the inference thread (replay as fast as possible: every frame is analysed)."""

    def __init__(self, drop_old: bool):
        self.drop_old = drop_old
        self._cond = threading.Condition()
        self._item: Captured | None = None
        self._closed = False

    def put(self, item: Captured, stop: threading.Event) -> Captured | None:
        """Returns the frame it displaced (to be released by the caller), if any; once closed, the frame
        itself comes back."""
        with self._cond:
            if self._closed:
                return item
            if not self.drop_old:
                while self._item is not None and not stop.is_set():
                    self._cond.wait(0.2)
            if self._closed:
                return item
            old, self._item = self._item, item
            self._cond.notify_all()
            return old

    def take(self, timeout: float) -> Captured | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and self._item is None


@dataclass(frozen=True)
class PipelineSettings:
    """How one camera's frames are handled."""

    camera_id: str
    tracking: TrackingConfig
    live: bool = True  # a live camera (newest frame wins, wall-clock track ages); False: replay every frame
    replay_fps: float = 15.0  # track ages in replay follow the frames, at this rate
    pool_slots: int = 3  # frames in flight (capture, mailbox, inference); doubled for a lores stream
    max_faces: int = 64


def encode_crop(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("JPEG encoding of an evidence crop failed")
    return data.tobytes()


class Pipeline:
    """Runs one camera through the vision core and the tracker; alerts go to the sink."""

    def __init__(self, settings: PipelineSettings, camera: FrameReader, analyzer: FaceAnalyzer,
                 gate: DeploymentGate, sink: AlertSink, clock: Callable[[], datetime],
                 capture_beat: Beat | None = None, inference_beat: Beat | None = None,
                 effectiveness: Effectiveness | None = None, use: DeploymentUse | None = None):
        """`use` records where matching starts and stops under a deployment (the node's audit log)."""
        self.settings = settings
        self.camera = camera
        self.analyzer = analyzer
        self.gate = gate
        self.sink = sink
        self.clock = clock
        self.counters = Counters()
        self.effectiveness = effectiveness or Effectiveness()
        self.use = use
        self.pool = FramePool(2 * settings.pool_slots)
        self.mailbox = Mailbox(drop_old=settings.live)
        spec = analyzer.embedder_spec
        self.model = ModelRef(spec.id, spec.sha256)
        self.tracker = Tracker(settings.tracking, analyzer.embedder.dim, max_tracks=settings.max_faces)
        self._queries = np.zeros((settings.max_faces, analyzer.embedder.dim), np.float32)
        self._matcher: Matcher | None = None
        self._shard: AcceptedShard | None = None
        self._stop = threading.Event()
        self._capture_beat = capture_beat
        self._inference_beat = inference_beat
        self._threads: list[threading.Thread] = []
        self.refusal: Refusal | None = None
        self.error: str | None = None  # why a thread stopped on a failure (the node exits non-zero)
        self._done: deque[float] = deque(maxlen=32)  # when recent frames finished, for fps

    # -- lifecycle --
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._capture_loop, name="edge-capture", daemon=True),
                         threading.Thread(target=self._inference_loop, name="edge-inference", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.mailbox.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for both threads (a finite replay ends by itself); True if they have ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    @property
    def shard(self) -> AcceptedShard | None:
        return self._shard

    @property
    def fps(self) -> float:
        """Frames analysed per second over the last few seconds (0 when nothing is being analysed)."""
        times = list(self._done)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / max(1e-6, times[-1] - times[0])

    def _failed(self, where: str, exc: BaseException) -> None:
        self.error = f"{where}: {type(exc).__name__}: {exc}"
        log.error("%s thread stopped: %s", where, self.error, exc_info=exc)
        self.stop()

    # -- capture thread --
    def _capture_loop(self) -> None:
        try:
            self._capture()
        except Exception as exc:  # noqa: BLE001 - thread boundary: recorded and logged, the node exits non-zero
            self._failed("capture", exc)
        finally:
            self.mailbox.close()

    def _capture(self) -> None:
        n = 0
        while not self._stop.is_set():
            if self._capture_beat:
                self._capture_beat.beat()
            frame = self.camera.read()
            if frame is None:
                break  # end of a finite replay
            n += 1
            self.counters.add(frames=1)
            decision = self.gate.admit(self.clock())
            if isinstance(decision, Refusal):
                self.refusal = decision
                self.counters.add(outside_deployment=1)
                continue
            self.refusal = None
            captured = self._pooled(frame, self.camera.lores(),
                                    time.monotonic() if self.settings.live else n / self.settings.replay_fps)
            if captured is None:
                self.counters.add(dropped_busy=1)
                continue
            old = self.mailbox.put(captured, self._stop)
            if old is not None:
                self._release(old)
                if old is not captured:
                    self.counters.add(dropped_busy=1)

    def _pooled(self, frame: np.ndarray, lores: np.ndarray | None, ts: float) -> Captured | None:
        """Copies of the camera's buffers in pooled ones (the camera reuses its own on the next read)."""
        buf = self.pool.acquire(frame.shape)
        if buf is None:
            return None
        small = None
        if lores is not None:
            small = self.pool.acquire(lores.shape)
            if small is None:
                self.pool.release(buf)
                return None
            np.copyto(small, lores)
        np.copyto(buf, frame)
        return Captured(buf, small, ts)

    def _release(self, item: Captured) -> None:
        self.pool.release(item.frame)
        if item.lores is not None:
            self.pool.release(item.lores)

    # -- inference thread --
    def _inference_loop(self) -> None:
        try:
            self._inference()
        except Exception as exc:  # noqa: BLE001 - thread boundary: recorded and logged, the node exits non-zero
            self._failed("inference", exc)
        finally:
            while (left := self.mailbox.take(0)) is not None:  # a frame put as we stopped: zero it too
                self._release(left)
            self._drop_matcher("node stopping")
            self.tracker.reset()
            self._queries.fill(0)

    def _inference(self) -> None:
        while True:
            if self._inference_beat:
                self._inference_beat.beat()
            item = self.mailbox.take(0.5)
            if item is None:
                if self.mailbox.closed:
                    break
                self._idle()
                continue
            try:
                self._process(item)
            finally:
                self._release(item)
            self._done.append(time.monotonic())

    def _idle(self) -> None:
        """No frame for a while (camera gone, or capture refusing frames): end stale tracks, and drop the
        matcher if matching is no longer allowed, so nothing of a past face waits in memory."""
        if self.settings.live:
            self.tracker.expire(time.monotonic())
        refusal = self.refusal
        if refusal is not None:
            self._drop_matcher(refusal.code)

    def _process(self, item: Captured) -> None:
        with self.gate.watchlist.in_use():  # the shard cannot be wiped while this frame is matched against it
            self._process_admitted(item)

    def _process_admitted(self, item: Captured) -> None:
        frame, ts = item.frame, item.ts
        decision = self.gate.admit(self.clock())  # again: the window may have closed while it waited
        if isinstance(decision, Refusal):
            self.refusal = decision
            self.counters.add(outside_deployment=1)
            self._drop_matcher(decision.code)
            return
        matcher = self._matcher_for(decision)
        try:
            faces = self.analyzer.analyse(frame, detect_on=item.lores)
            embedded = [f for f in faces if f.embedding is not None]
            k = min(len(embedded), self._queries.shape[0])
            observations: list[FaceObservation] = []
            if k:
                queries = self._queries[:k]
                for i, f in enumerate(embedded[:k]):
                    queries[i] = f.embedding
                results = matcher.match(queries)
                gate = self.analyzer.config.quality
                weigh = self.tracker.config.template  # the weight feeds only the track template
                observations = [FaceObservation(f.detection.box, queries[i], r.entry_id,
                                                r.score if r.entry_id is not None else 0.0,
                                                template_weight(f.quality, gate) if weigh else 1.0,
                                                r.margin if r.entry_id is not None else None)
                                for i, (f, r) in enumerate(zip(embedded[:k], results, strict=True))]
                del results  # the non-matches' scores go with it
            discarded = sum(1 for o in observations if o.entry_id is None)
            alerts = self.tracker.update(ts, frame, observations, [f.detection.box for f in faces], matcher)
            self.counters.add(processed=1, faces=len(faces), below_quality=len(faces) - len(embedded),
                              discarded=discarded)
            m = decision.shard.manifest
            self.effectiveness.seen(m.deployment.id, len(faces))
            for alert in alerts:
                draft = MatchDraft(self.settings.camera_id, m.deployment.id, alert.track_id, alert.entry_id,
                                   alert.score, decision.threshold, self.model, ShardRef(m.shard_id, m.version),
                                   alert.frames_agreeing, alert.rule, alert.margin,
                                   reviewers_required=m.deployment.reviewers_required,
                                   retention_days=m.deployment.retention_days)
                crop = encode_crop(alert.crop) if alert.crop.any() else None
                context = encode_crop(alert.context) if alert.context.any() else None
                alert.crop.fill(0)
                alert.context.fill(0)
                event_id = self.sink.emit(draft, crop, context=context)
                self.counters.add(alerts=1)
                self.effectiveness.alert(m.deployment.id, event_id, m.deployment.reviewers_required)
        finally:
            matcher.release()
            self.analyzer.release()
            self._queries.fill(0)

    def _matcher_for(self, admission: Admission) -> Matcher:
        if self._matcher is None or admission.shard is not self._shard:
            if self.use is not None:  # on the record (durably) before the first frame is matched
                self.use.begin(admission.shard)
            self.tracker.reset()  # a new watch list: tracks and their votes start again
            self._shard = admission.shard
            self._matcher = Matcher(admission.shard.gallery, MatchPolicy(admission.threshold, MIN_MARGIN))
            log.info("matching against shard %s v%d at threshold %.3f", admission.shard.manifest.shard_id,
                     admission.shard.manifest.version, admission.threshold)
        return self._matcher

    def _drop_matcher(self, reason: str) -> None:
        """Matching stops (`reason`: a refusal's code, or `node stopping`): the matcher and tracks go."""
        if self._matcher is not None:
            self._matcher.release()
            self._matcher = None
            self._shard = None
            self.tracker.reset()
        if self.use is not None:
            self.use.end(reason)
