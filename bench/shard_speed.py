"""Shard costs, as ratios measured in one run.

1. Watch-list build time per real reference photo (detect + gate + align + embed with the node's models).
2. A 100,000-entry shard (synthetic unit embeddings; real crypto): fleet-side issue time, and the node's
   full verify + decrypt + load, against the floor of the same work: read the file and AES-GCM-decrypt
   its ciphertext alone (target <= 2x). Peak traced memory of the load against the file size.

usage: python3 bench/shard_speed.py [--entries 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from common import require_devset  # noqa: E402
from shardworld import make_world  # noqa: E402

from edge.trust.times import now  # noqa: E402
from edge.vision.analyzer import FaceAnalyzer, VisionConfig  # noqa: E402
from edge.watchlist.shard import split_shard  # noqa: E402
from provisioning.watchlist import build_watchlist  # noqa: E402


class _Env:
    def setenv(self, key: str, value: str) -> None:
        os.environ[key] = value


def build_per_photo(world_tmp: Path, devset: Path) -> None:
    from provisioning.fleet import Fleet

    photos = [p for p in sorted((devset / "images").glob("*/*")) if p.suffix in (".jpg", ".png")]
    prov = "bench,bench,2020-01-01,bench,bench"
    csv = world_tmp / "bench.csv"
    rows = [f"R{i},P{i},{p.relative_to(devset / 'images')},{prov}" for i, p in enumerate(photos)]
    csv.write_text("reference,name,photos,image_source,legal_basis,image_date,approving_officer,reason\n"
                   + "\n".join(rows) + "\n")
    analyzer = FaceAnalyzer(VisionConfig())
    fleet = Fleet(world_tmp / "fleet")
    build_watchlist(fleet, "warm", devset / "images", csv, analyzer, io.StringIO())  # warm-up
    t = time.perf_counter()
    report = build_watchlist(fleet, "bench", devset / "images", csv, analyzer, io.StringIO())
    dt = time.perf_counter() - t
    print(f"== watch-list build: {len(photos)} real devset photos, {report.entries} built, "
          f"{len(report.refused)} refused (several faces / poor quality / no face)")
    print(f"   {dt / len(photos) * 1000:.1f} ms per photo (decode + detect + gate + align + embed + write)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    devset = require_devset()
    if devset is None:
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    world = make_world(tmp, _Env())
    build_per_photo(tmp, devset)

    world.watchlist(entries=args.entries, seed=1)
    t = time.perf_counter()
    path = world.issue()
    issue_s = time.perf_counter() - t
    size = path.stat().st_size
    print(f"\n== {args.entries:,}-entry shard: {size / 1e6:.1f} MB, issued in {issue_s:.2f} s "
          f"(sign + encrypt + write, {issue_s / args.entries * 1e6:.1f} us per entry)")

    verifier = world.store.verifier(world.model)
    at = now()

    def full() -> None:
        accepted = verifier.verify(world.store.read_capped(path), at)
        accepted.gallery.wipe()

    def floor() -> None:
        data = path.read_bytes()
        _, ct = split_shard(data)
        key = AESGCM.generate_key(256)  # decrypt cost does not depend on the key; the tag check fails last
        out = bytearray(len(ct) - 16)
        with contextlib.suppress(InvalidTag):  # expected: the whole ciphertext was decrypted first
            AESGCM(key).decrypt_into(b"\0" * 12, ct, b"", out)

    ratios, full_ms, floor_ms = [], [], []
    for _ in range(args.rounds):
        for fn, sink in ((floor, floor_ms), (full, full_ms)):
            t = time.perf_counter()
            fn()
            sink.append((time.perf_counter() - t) * 1000)
        ratios.append(full_ms[-1] / floor_ms[-1])
    tracemalloc.start()
    full()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    r = statistics.median(ratios)
    print(f"   node load (verify + decrypt + parse + gallery): {statistics.median(full_ms):.1f} ms; "
          f"read + AES-GCM decrypt alone: {statistics.median(floor_ms):.1f} ms")
    print(f"   ratio {r:.2f}x (median of {args.rounds} interleaved rounds; target <= 2x) "
          f"{'PASS' if r <= 2 else 'MISS'}")
    print(f"   peak traced memory during the load: {peak / 1e6:.1f} MB = {peak / size:.1f}x the file "
          "(file bytes + plaintext buffer + gallery matrix)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
