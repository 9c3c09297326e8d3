"""Matcher latency against the memory-bandwidth bound of reading the gallery once, measured in one run.

Galleries of 1k, 10k, 100k and 1M random unit vectors (d=128, float32: 0.5 MB .. 512 MB), matched
with 1 query and with 8 queries. Matching must read every gallery row once, so the floor is the time
to stream the matrix once. Three read-once kernels are timed on the same matrix in the same rounds:

  sum   np.add.reduce(G, axis=0)   numpy's own SIMD loop, single-threaded
  max   G.max()                    numpy's own SIMD loop, single-threaded
  gemv  G @ ones(d)                BLAS sgemv over row-major G, same library and threads as the matcher

The bound is the fastest of the three in each round: each reads G exactly once and does less
arithmetic than scoring, so the fastest one is the tightest honest floor for "read G once" on this
machine (gemv usually wins once G outgrows the caches because it uses both cores, as the matcher's
BLAS call does; a single-threaded reduction would flatter the matcher). Reported: median over rounds
of (median match time / bound); the target is <= 2x at 100k and 1M, where G no longer fits in cache.
At 1k and 10k the gallery sits in cache and per-call Python overhead dominates: reported, not judged.

A second table re-runs the same measurement in a child process with OPENBLAS_NUM_THREADS=1: on a
shared 2-core machine OpenBLAS's worker threads can cost far more than they save (diagnostic only).

usage: python3 bench/match_scaling.py      (peak memory ~1.7 GB, at 1M)
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from common import median_seconds

from edge.watchlist.gallery import Gallery, Matcher, MatchPolicy

DIM = 128
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUERIES = (1, 8)
ROUNDS = 7
TARGET = 2.0
JUDGED = {100_000, 1_000_000}
BUDGET_S = 0.2  # per kernel per round, sets the repetitions


def random_unit(n: int, rng: np.random.Generator) -> np.ndarray:
    g = np.empty((n, DIM), np.float32)
    step = 100_000
    for i in range(0, n, step):
        block = rng.standard_normal((min(step, n - i), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        g[i:i + len(block)] = block
    return g



def bench_size(n: int, rng: np.random.Generator) -> dict[str, float]:
    src = random_unit(n, rng)
    gallery = Gallery(src, [f"e{i:07d}" for i in range(n)])
    del src
    gc.collect()
    g = gallery.matrix
    matcher = Matcher(gallery, MatchPolicy(threshold=0.94))
    queries = {k: random_unit(k, rng) for k in QUERIES}
    ones = np.ones(DIM, np.float32)
    vec_out = np.empty(n, np.float32)

    kernels: dict[str, Callable[[], object]] = {
        "sum": lambda: np.add.reduce(g, axis=0),
        "max": lambda: g.max(),
        "gemv": lambda: np.matmul(g, ones, out=vec_out),
    }
    for k in QUERIES:
        q = queries[k]
        kernels[f"match k={k}"] = lambda q=q: matcher.match(q)
        kernels[f"scores k={k}"] = lambda q=q: matcher.scores(q)
    kernels["G @ q (gemv) k=1"] = lambda: np.matmul(g, queries[1][0], out=vec_out)

    for fn in kernels.values():  # warm-up, and a first estimate of the cost of each
        fn()
    t_one = max(median_seconds(kernels["match k=8"], 3), 1e-6)
    reps = int(min(500, max(3, BUDGET_S / t_one)))
    names = list(kernels)
    per_round: dict[str, list[float]] = {k: [] for k in names}
    bounds, which = [], []
    for r in range(ROUNDS):
        order = names[r % len(names):] + names[:r % len(names)]
        t = {k: median_seconds(kernels[k], reps) for k in order}
        bound_name = min(("sum", "max", "gemv"), key=t.__getitem__)
        bound = t[bound_name]
        bounds.append(bound)
        which.append(bound_name)
        for k in names:
            per_round[k].append(t[k] / bound)
    result = {k: statistics.median(v) for k, v in per_round.items()}
    result["bound_s"] = statistics.median(bounds)
    result["reps"] = reps
    result["bound_by"] = max(set(which), key=which.count)  # type: ignore[assignment]
    matcher.release()
    gallery.wipe()
    return result


def main() -> int:
    child = "--child" in sys.argv
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"[OPENBLAS_NUM_THREADS={blas}] Matcher latency vs read-once bound (d={DIM}, float32), "
          f"median of {ROUNDS} interleaved rounds; "
          f"target <= {TARGET:.0f}x at {', '.join(f'{n:,}' for n in sorted(JUDGED))}")
    print(f"{'gallery':>10s} {'MB':>6s} {'bound':>10s} {'by':>5s} {'GB/s':>6s}  {'sum':>6s} {'max':>6s} "
          f"{'gemv':>6s}  {'match k=1':>9s} {'match k=8':>9s}  {'scores1':>7s} {'scores8':>7s} {'G@q':>6s}  "
          f"verdict (k=1)")
    verdicts = []
    for n in SIZES:
        r = bench_size(n, rng)
        mb = n * DIM * 4 / 1e6
        v = ""
        if n in JUDGED:
            # judged on one face, as the issue states it; with 8 faces the product is compute-bound
            # (8 x 2 x 128 flops per gallery float read), so the read-once bound is shown, not judged
            ok = r["match k=1"] <= TARGET
            verdicts.append(ok)
            v = "PASS" if ok else "MISS"
        gbs = mb / 1e3 / r["bound_s"]
        print(f"{n:>10,d} {mb:6.1f} {r['bound_s'] * 1e3:8.3f}ms {r['bound_by']:>5s} {gbs:6.1f}  "
              f"{r['sum']:5.2f}x {r['max']:5.2f}x {r['gemv']:5.2f}x  "
              f"{r['match k=1']:8.2f}x {r['match k=8']:8.2f}x  "
              f"{r['scores k=1']:6.2f}x {r['scores k=8']:6.2f}x {r['G @ q (gemv) k=1']:5.2f}x  {v}",
              flush=True)
        gc.collect()
    print("columns: ratios to the bound (fastest read-once kernel of the round); 'scores' = the matrix\n"
          "product alone (Matcher.scores), 'G@q' = a plain gemv with one query; repetitions per kernel per\n"
          f"round chosen for ~{BUDGET_S}s")
    label = "diagnostic, single-threaded BLAS" if child else "OVERALL"
    print(f"{label}: {'PASS' if all(verdicts) else 'MISS'}; {time.perf_counter() - t0:.0f} s", flush=True)
    if not child:
        print()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        subprocess.run([sys.executable, __file__, "--child"], env=env, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
