"""The pieces of the pipeline on their own: frame pool, mailbox, tracker rule, deployment gate."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest
from shardworld import World, make_world

from edge.config import TrackingConfig
from edge.deployment import Admission, DeploymentGate, Refusal
from edge.pipeline import Captured, Mailbox
from edge.pool import FramePool
from edge.tracking import CROP_SIZE, FaceObservation, Tracker
from edge.trust.times import now
from edge.watchlist.store import ActiveWatchList


def test_pool_buffers_are_zeroed_on_release_and_reused() -> None:
    pool = FramePool(slots=2)
    a = pool.acquire((4, 4, 3))
    b = pool.acquire((4, 4, 3))
    assert a is not None and b is not None and pool.acquire((4, 4, 3)) is None  # bounded
    a.fill(200)
    pool.release(a)
    assert all(not buf.any() for buf in pool.buffers())  # zero after release
    again = pool.acquire((4, 4, 3))
    assert again is a and not again.any()  # the same memory, reused, still zero


def test_mailbox_newest_wins_and_blocking_mode_keeps_every_frame() -> None:
    stop = threading.Event()
    live = Mailbox(drop_old=True)
    f1, f2 = Captured(np.zeros(1), None, 1.0), Captured(np.ones(1), None, 2.0)
    assert live.put(f1, stop) is None
    assert live.put(f2, stop) is f1  # the older waiting frame comes back to be released and counted
    assert live.take(0.1) is f2
    replay = Mailbox(drop_old=False)
    replay.put(f1, stop)
    taker = threading.Timer(0.2, lambda: replay.take(0.1))
    taker.start()
    assert replay.put(f2, stop) is None  # waited for the first to be taken instead of dropping it
    taker.join()


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def obs(x: float, seed: int, entry: str | None, score: float = 0.95) -> FaceObservation:
    return FaceObservation(np.array([x, 10, x + 50, 60], np.float32), unit(seed), entry, score)


FRAME = np.full((120, 400, 3), 77, np.uint8)


def test_alert_once_per_track_after_k_of_n() -> None:
    tr = Tracker(TrackingConfig(agree_k=3, window_n=5), dim=128)
    decisions = ["wl-1", None, "wl-1", None, "wl-1", "wl-1", "wl-1"]
    alerts = []
    for i, d in enumerate(decisions):
        alerts += tr.update(i * 0.1, FRAME, [obs(100 + i, 1, d)])
    assert len(alerts) == 1 and alerts[0].entry_id == "wl-1" and alerts[0].frames_agreeing == 3
    assert alerts[0].crop.shape == (CROP_SIZE, CROP_SIZE, 3) and alerts[0].crop.any()


def test_scattered_single_frame_matches_never_alert() -> None:
    tr = Tracker(TrackingConfig(agree_k=3, window_n=5), dim=128)
    alerts = []
    for i in range(30):  # a stray match every third frame: never 3 in any 5
        alerts += tr.update(i * 0.1, FRAME, [obs(100, 2, "wl-9" if i % 3 == 0 else None)])
    assert alerts == []


def test_two_people_are_two_tracks_and_a_track_ends_zeroed() -> None:
    tr = Tracker(TrackingConfig(agree_k=2, window_n=3, max_age_s=0.5), dim=128)
    for i in range(3):
        tr.update(i * 0.1, FRAME, [obs(10, 3, None), obs(300, 4, "wl-2")])
    assert tr.active == 2
    tr.update(5.0, FRAME, [])  # both gone longer than max_age
    assert tr.active == 0 and tr.ended == 2
    assert not tr._embeddings.any() and not tr._crops.any()  # nothing of them is left


def test_a_new_entry_on_the_same_track_can_alert_once_more_but_the_same_never() -> None:
    tr = Tracker(TrackingConfig(agree_k=2, window_n=2), dim=128)
    got = []
    for i, d in enumerate(["wl-1", "wl-1", "wl-1", "wl-1", "wl-2", "wl-2"]):
        got += [a.entry_id for a in tr.update(i * 0.1, FRAME, [obs(100, 5, d)])]
    assert got == ["wl-1", "wl-2"]


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:  # type: ignore[no-untyped-def]
    return make_world(tmp_path, monkeypatch)


def test_gate_admits_only_inside_the_window_and_for_listed_cameras(world: World) -> None:
    world.watchlist()
    start = now() - timedelta(hours=1)
    shard = world.store.load(world.issue(start=start, hours=2), world.model, now())
    active = ActiveWatchList()
    active.swap(shard)
    gate = DeploymentGate(active, "gate-a")
    assert isinstance(gate.admit(now()), Admission)
    assert isinstance(d := gate.admit(start - timedelta(minutes=1)), Refusal) and d.code == "before-window"
    other = DeploymentGate(active, "gate-z").admit(now())
    assert isinstance(other, Refusal) and other.code == "camera-not-listed" and "gate-z" in other.reason
    adm = gate.admit(now())
    assert isinstance(adm, Admission) and adm.threshold == shard.manifest.deployment.threshold
    # the shard expires with the deployment's end: past it the watch list is wiped (fail closed)
    assert isinstance(d := gate.admit(shard.manifest.expires), Refusal) and d.code == "no-shard"
    assert active.current(now()) is None and not shard.gallery.matrix.any()


def test_a_stranger_far_away_does_not_continue_someone_elses_track() -> None:
    tr = Tracker(TrackingConfig(agree_k=3, window_n=5), dim=128)
    for i in range(2):
        tr.update(i * 0.1, FRAME, [obs(10, 7, "wl-1")])
    # the first person leaves; a different person, far across the frame, looks alike and matches once
    alerts = tr.update(0.2, FRAME, [FaceObservation(np.array([330, 10, 380, 60], np.float32), unit(7), "wl-1",
                                                    0.941)])
    assert alerts == [] and tr.active == 2  # a new track: two people's frames never add up to one alert


def test_an_alert_carries_its_own_entrys_best_score_and_crop() -> None:
    tr = Tracker(TrackingConfig(agree_k=3, window_n=5), dim=128)
    alerts = []
    for i, (entry, score) in enumerate([("wl-A", 0.99), ("wl-B", 0.95), ("wl-B", 0.96), ("wl-B", 0.955)]):
        alerts += tr.update(i * 0.1, FRAME, [obs(100, 8, entry, score)])
    assert [(a.entry_id, a.score) for a in alerts] == [("wl-B", 0.96)]
    assert alerts[0].crop.any()  # B's own best frame, not A's


def test_a_shard_is_not_wiped_while_a_frame_is_matched_against_it(world: World) -> None:
    world.watchlist()
    old = world.store.load(world.issue(), world.model, now())
    active = ActiveWatchList()
    active.swap(old)
    swapped = threading.Event()
    with active.in_use():
        t = threading.Thread(target=lambda: (active.swap(None), swapped.set()))
        t.start()
        assert not swapped.wait(0.3)  # the push waits for the frame in progress...
        assert old.gallery.matrix.any() and old.gallery.size == len(old.gallery.entry_ids)
    t.join(5)
    assert swapped.is_set() and not old.gallery.matrix.any()  # ...then wipes


def test_detection_on_a_low_resolution_stream_maps_faces_to_the_main_frame(analyzer, devset) -> None:  # type: ignore[no-untyped-def]
    """picamera2 gives a main and a lores stream of the same scene: detect on lores, align and embed on main."""
    import cv2

    from edge.tracking import iou
    from edge.vision.analyzer import read_rgb

    main = read_rgb(devset / "images/face_recognition/obama2.jpg")
    lores = cv2.resize(main, (main.shape[1] * 2 // 5, main.shape[0] * 2 // 5), interpolation=cv2.INTER_AREA)
    full = analyzer.analyse(main)
    boxes = [f.detection.box.copy() for f in full]
    emb = full[0].embedding.copy()  # type: ignore[union-attr]
    analyzer.release()
    via = analyzer.analyse(main, detect_on=lores)
    assert len(via) == len(boxes) == 1
    assert iou(via[0].detection.box, boxes[0]) > 0.85
    assert via[0].embedding is not None and float(via[0].embedding @ emb) > 0.98  # the same face, aligned on main
    analyzer.release()
