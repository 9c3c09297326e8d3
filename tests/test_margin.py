"""`margin` in the match event: the score's margin over the runner-up entry, computed where the matcher ranks
the entries, carried by the tracker for the frame (or template) that gave the alert's score, and null when
the watch list holds one entry."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import TrackingConfig
from edge.pipeline import MIN_MARGIN
from edge.tracking import TEMPLATE, FaceObservation, Tracker
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy

DIM = 8
FRAME = np.full((120, 400, 3), 77, np.uint8)
BOX = np.array([100, 10, 150, 60], np.float32)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def entries(n: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[:n]


def face(cos_a: float, cos_b: float) -> np.ndarray:
    """A unit embedding at cos_a to entry a (axis 0) and cos_b to entry b (axis 1), the rest on axis 7."""
    rest = np.sqrt(max(0.0, 1 - cos_a * cos_a - cos_b * cos_b))
    v = np.zeros(DIM, np.float32)
    v[0], v[1], v[7] = cos_a, cos_b, rest
    return v


def test_the_margin_is_over_the_runner_up_and_none_for_a_one_entry_list() -> None:
    three = Matcher(Gallery(entries(3), ["a", "b", "c"]), MatchPolicy(0.9, MIN_MARGIN))
    (m,) = three.match(face(0.96, 0.2)[None, :])
    assert m.entry_id == "a" and m.runner_up == pytest.approx(0.2, abs=1e-6)
    assert m.margin == pytest.approx(0.76, abs=1e-6)
    one = Matcher(Gallery(entries(1), ["a"]), MatchPolicy(0.9, MIN_MARGIN))
    (alone,) = one.match(face(0.96, 0.2)[None, :])
    assert alone.entry_id == "a" and alone.runner_up is None and alone.margin is None
    empty = Matcher(Gallery(np.zeros((0, DIM), np.float32), []), MatchPolicy(0.9))
    assert empty.match(face(0.96, 0.2)[None, :])[0].margin is None


def observe(matcher: Matcher, emb: np.ndarray) -> FaceObservation:
    """As the pipeline builds it: score and margin only for an accepted match."""
    r = matcher.match(emb[None, :])[0]
    return FaceObservation(BOX.copy(), emb, r.entry_id, r.score if r.matched else 0.0, 1.0,
                           r.margin if r.matched else None)


def test_a_k_of_n_alert_carries_the_margin_of_its_best_frame() -> None:
    m = Matcher(Gallery(entries(2), ["a", "b"]), MatchPolicy(0.9, MIN_MARGIN))
    tr = Tracker(TrackingConfig(agree_k=3, window_n=4, template=False), DIM)
    frames = [face(0.95, 0.30), face(0.97, 0.25), face(0.93, 0.10)]  # best score 0.97, its margin 0.72
    alerts = []
    for i, emb in enumerate(frames):
        alerts += tr.update(float(i) * 0.1, FRAME, [observe(m, emb)], [BOX], m)
    (alert,) = alerts
    assert alert.score == pytest.approx(0.97, abs=1e-5)
    assert alert.margin == pytest.approx(0.97 - 0.25, abs=1e-5)  # not the widest margin (0.83), the best frame's


def test_a_template_alert_carries_the_templates_margin() -> None:
    m = Matcher(Gallery(entries(2), ["a", "b"]), MatchPolicy(0.9, MIN_MARGIN))
    tr = Tracker(TrackingConfig(agree_k=2, window_n=7, template=True), DIM)
    # one frame matches on its own, then frames just below the threshold: the fused template gets there
    frames = [face(0.91, 0.3), face(0.89, 0.3), face(0.89, 0.3)]
    alerts = []
    for i, emb in enumerate(frames):
        alerts += tr.update(float(i) * 0.1, FRAME, [observe(m, emb)], [BOX], m)
    templates = [a for a in alerts if a.rule == TEMPLATE]
    assert templates, [a.rule for a in alerts]
    t = templates[0]
    assert t.margin is not None and t.margin == pytest.approx(t.score - m.match(
        unit(sum(frames[: t.frames_agreeing]))[None, :])[0].runner_up, abs=1e-4)


def test_one_entry_alerts_have_no_margin() -> None:
    m = Matcher(Gallery(entries(1), ["a"]), MatchPolicy(0.9, MIN_MARGIN))
    tr = Tracker(TrackingConfig(agree_k=2, window_n=3, template=False), DIM)
    alerts = []
    for i in range(2):
        alerts += tr.update(float(i) * 0.1, FRAME, [observe(m, face(0.95, 0.0))], [BOX], m)
    (alert,) = alerts
    assert alert.margin is None
