"""Replay soak: the whole node for --minutes on looping 720p replay at the clip's own pace, MQTT on.

The site and footage of bench/node_speed.py: real mosquitto (TLS client certificates, generated ACLs),
operator.console subscribed to events and state and admin.ops to audit checkpoints, device cam-01 with a
shard of --entries entries (the enrolled face + synthetic), the 592-frame 720p footage (the upscaled clip,
then the demo's stills with the listed person twice: two alerts per loop, each a signed event with a
sealed crop through the durable outbox, and an audit record).
The node (edge.node.Node.run, in this process, default crowd tile plan) replays it with loop = true and
realtime = true: frames come at 23.976 fps and the pipeline is live (newest frame wins; frames the
inference thread cannot take in time are dropped and counted, as with a camera). sd_notify goes to a real
socket with WATCHDOG_USEC set, so the watchdog feeder runs and its pings are counted.

Every --sample-every seconds (10): this process's RSS (VmRSS), the pipeline counters, link health, the
outbox and what operator.console received. Reported:
  RSS growth   median of the last minute minus median of the first minute after the warm-up
               (warm-up min(60 s, a quarter of the run); windows min(60 s, half of what is left), so a
               2- or 3-minute run still compares two disjoint windows); target <= 10 MB
  errors       log records at WARNING or above (a handler on the root logger), link callback_errors,
               refused/unrouted PUBACKs, pipeline error, camera reopens, outbox rows dropped/expired/left,
               events raised but not received, watchdog pings withheld; target: none
  and the pipeline counters: frames read, processed, dropped busy, faces, alerts; fps achieved.

usage: python3 bench/node_soak.py [--minutes 30] [--entries 10000] [--tiles crowd|off] [--sample-every 10]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mqttworld import wait_for
from node_memory import NotifySocket
from node_speed import Console, make_footage, make_site

from edge.node import Node
from edge.systemd import Notifier
from edge.vision.detect import CROWD_PLAN, TilePlan
from edge.vision.runtime import limit_blas_threads

GROWTH_TARGET_MB = 10.0
WATCHDOG_USEC = 20_000_000  # pings every 10 s
TILES = {"crowd": CROWD_PLAN, "off": TilePlan()}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Captured(logging.Handler):
    """Every record at WARNING or above, by logger and message template; the first few in full."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_kind: Counter[tuple[str, str, str]] = Counter()
        self.first: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.by_kind[(record.levelname, record.name, str(record.msg))] += 1
            if len(self.first) < 10:
                self.first.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:200])

    @property
    def total(self) -> int:
        with self.lock_:
            return sum(self.by_kind.values())


def median_in(samples: list[tuple[float, float]], lo: float, hi: float) -> float:
    xs = [r for t, r in samples if lo <= t < hi]
    return float(statistics.median(xs)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--entries", type=int, default=10_000, help="shard entries (the enrolled face + synthetic)")
    ap.add_argument("--tiles", choices=sorted(TILES), default="crowd")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    captured = Captured()
    logging.getLogger().addHandler(captured)
    limit_blas_threads()
    total = args.minutes * 60
    warmup = min(60.0, total / 4)
    window = min(60.0, (total - warmup) / 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-soak-"))
    site = console = notify = None
    try:
        footage = make_footage(tmp)
        site = make_site(tmp)
        device = site.add_device("cam-01", args.entries)
        console = Console(site.broker)
        notify = NotifySocket(tmp / "notify.sock")
        os.environ["WATCHDOG_USEC"] = str(WATCHDOG_USEC)  # read by the node's watchdog_interval()
        os.environ.pop("WATCHDOG_PID", None)
        config = site.node_config(device, footage, TILES[args.tiles], realtime=True, loop=True)
        node = Node(config, out=io.StringIO(), notifier=Notifier(str(notify.path)), harden=False)
        stop = threading.Event()
        print(f"soak: {args.minutes:g} min, looping {footage.frames}-frame 1280x720 replay at {footage.fps:.3f} fps "
              f"(realtime), tiles {args.tiles}, shard {args.entries:,} entries, mosquitto {site.broker.port} (TLS); "
              f"RSS every {args.sample_every:g} s; warm-up {warmup:.0f} s, windows {window:.0f} s")
        base = rss_mb()
        thread = threading.Thread(target=node.run, args=(stop,), name="soak-node")
        t0 = time.monotonic()
        thread.start()
        samples: list[tuple[float, float]] = []
        next_sample, next_line = t0, t0 + 60
        while (t := time.monotonic()) < t0 + total and thread.is_alive():
            if t >= next_sample:
                samples.append((t - t0, rss_mb()))
                next_sample += args.sample_every
            if t >= next_line and node.pipeline is not None:
                c = node.pipeline.counters.snapshot()
                print(f"   {(t - t0) / 60:5.1f} min: RSS {samples[-1][1]:.1f} MB, {c['processed']} processed, "
                      f"{c['dropped_busy']} dropped, {c['alerts']} alerts, {captured.total} warnings",
                      file=sys.stderr)
                next_line += 60
            time.sleep(min(1.0, max(0.0, min(next_sample, t0 + total) - time.monotonic())))
        elapsed = time.monotonic() - t0
        alive = thread.is_alive()
        p, events = node.pipeline, node.events
        assert p is not None and events is not None and node.camera is not None
        counters = p.counters.snapshot()
        health = events.link.health()
        outbox = events.outbox.stats()
        camera = asdict(node.camera.status())
        stop.set()
        thread.join(60)
        pings = sum(1 for _, m in notify.received if m == "WATCHDOG=1")
        ready = any(m == "READY=1" for _, m in notify.received)
        wait_for(lambda: console is not None and console.snapshot()["event"] >= counters["alerts"], timeout=10)
        got = console.snapshot()

        first = median_in(samples, warmup, warmup + window)
        last = median_in(samples, elapsed - window, elapsed + 1)
        growth = last - first
        rss = [r for _, r in samples]
        print(f"\n== RSS over {elapsed / 60:.1f} min ({len(samples)} samples; this process, node in a thread)")
        print(f"   before the node started {base:.1f} MB; min {min(rss):.1f}, max {max(rss):.1f} MB")
        print(f"   first {window:.0f} s after the warm-up [{warmup:.0f}, {warmup + window:.0f}) s: "
              f"median {first:.1f} MB")
        print(f"   last {window:.0f} s [{elapsed - window:.0f}, {elapsed:.0f}] s: median {last:.1f} MB")
        print(f"   growth {growth:+.1f} MB (target <= {GROWTH_TARGET_MB:.0f} MB)  "
              f"{'PASS' if growth <= GROWTH_TARGET_MB else 'MISS'}")
        per_min = [median_in(samples, m * 60, (m + 1) * 60) for m in range(int(elapsed // 60) + 1)]
        print("   per-minute medians (MB): " + " ".join(f"{x:.1f}" for x in per_min if x == x))

        print("\n== pipeline")
        print(f"   {counters['frames']} frames read ({counters['frames'] / footage.frames:.1f} loops), "
              f"{counters['processed']} processed ({counters['processed'] / elapsed:.2f} fps), "
              f"{counters['dropped_busy']} dropped busy (live: newest frame wins), "
              f"{counters['outside_deployment']} outside the deployment")
        print(f"   {counters['faces']} faces, {counters['below_quality']} below quality, {counters['discarded']} "
              f"discarded, {counters['alerts']} alerts; operator.console received {got['event']} match events and "
              f"{got['state']} state messages, admin.ops {got['audit']} audit checkpoints")

        lost = counters["alerts"] - got["event"]
        errors = {
            "log records >= WARNING": captured.total,
            "link callback_errors": health.callback_errors,
            "PUBACK refused / unrouted": health.rejected + health.unrouted,
            "pipeline error": int(p.error is not None),
            "camera reopens": camera["reopens"],
            "outbox dropped / expired / unreadable": outbox.dropped + outbox.expired + outbox.unreadable,
            "events raised, not received": max(0, lost),
            "node thread ended early": int(not alive),
            "node thread still running after stop": int(thread.is_alive()),
        }
        print("\n== errors (target: none)")
        for k, v in errors.items():
            print(f"   {k:<40} {v}")
        print(f"   link at the end: connected {health.connected}, in flight {health.inflight}, last error "
              f"{health.last_error}; outbox pending {outbox.pending}, enqueued {outbox.enqueued}, published "
              f"{outbox.published}; camera {camera['state']}, last error {camera['last_error']}")
        print(f"   sd_notify: READY=1 {'received' if ready else 'MISSING'}, {pings} WATCHDOG=1 pings "
              f"(expected ~{elapsed / (WATCHDOG_USEC / 2e6):.0f})")
        for (level, name, msg), n in captured.by_kind.most_common(5):
            print(f"   {n:>5} x {level} {name}: {msg[:120]}")
        for line in captured.first[:3]:
            print(f"   first: {line}")
        ok = growth <= GROWTH_TARGET_MB and not any(errors.values()) and ready
        print(f"\n   verdict: {'PASS' if ok else 'MISS'}")
    finally:
        if notify is not None:
            notify.close()
        if console is not None:
            console.close()
        if site is not None:
            site.broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
