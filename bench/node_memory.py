"""Node memory and start-up: peak RSS with a 10,000-entry shard against a 2-entry one, and time to READY=1.

Each case runs in a fresh process started the way systemd starts the service: `edge-node run --config
node.toml` (edge.cli.main, which limits BLAS threads, reads the TOML and sets up logging) with
$NOTIFY_SOCKET pointing at a real AF_UNIX datagram socket that this script reads. The child is this file
with --child: it imports only the standard library before `import edge.cli` and wraps a few functions
with timers (no other change to what runs). The node: the site of bench/node_speed.py (real mosquitto with
TLS client certificates, operator.console and admin.ops subscribed), device cam-01 with a shard of 10,000 entries
(the enrolled face + synthetic) or device cam-02 with 2 entries, the default crowd tile plan, MQTT on,
and a finite replay of 720p footage with realtime = false (--clip-frames of the upscaled clip + the stills
with the listed person, so alerts are raised, crops sealed and events published), after which it exits.

Reported per case, median over --rounds interleaved rounds (the order alternates):
  peak RSS     the child's VmHWM at exit, target <= 300 MB with 10,000 entries; the difference to 2 entries;
               the child's peak at its milestones (after imports, after the models, after the shard, at
               READY) to show where the memory goes; and ru_maxrss from os.wait4 beside it, which on Linux
               is max(child, spawning parent) because execve keeps the maxrss of the process that forked
  READY        from spawn (parent, just before Popen) and from just before Node.run (child) to the moment
               READY=1 arrives on the socket (parent), target <= 3 s; time.monotonic is one clock for both
  breakdown    interpreter start, `import edge.cli`, config + logging, then inside Node.run: FaceAnalyzer
               (of which reading + sha256 of the model files), shard verify + decrypt + load
               (ShardStore.reload_current), EventService set-up, the rest (identity, camera, threads)

usage: python3 bench/node_memory.py [--rounds 3] [--clip-frames 240]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RSS_TARGET_MB = 300.0
READY_TARGET_S = 3.0
CASES = {"10,000 entries": ("cam-01", 10_000), "2 entries": ("cam-02", 2)}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def hwm_mb() -> float:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss it belongs to the address space, so it does not
    carry the spawning parent's peak across fork + execve."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- the child: `edge-node run` with timers --
def child(config: Path, report: Path) -> int:
    t_script = time.monotonic()
    import edge.cli  # everything the service's entry point imports

    marks: dict[str, float] = {"script": t_script, "imports": time.monotonic()}
    rss: dict[str, float] = {"imports": hwm_mb()}
    spans: dict[str, float] = {}
    nodes: list[Any] = []

    import edge.events.service
    import edge.node
    import edge.systemd
    import edge.vision.analyzer
    import edge.vision.manifest
    import edge.watchlist.store

    def timed(owner: type, name: str, key: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*a, **kw)
            finally:
                spans[key] = spans.get(key, 0.0) + time.monotonic() - t
                rss[key] = hwm_mb()

        setattr(owner, name, wrapper)

    timed(edge.vision.manifest.ModelManifest, "verified_bytes", "models: read + sha256")
    timed(edge.vision.analyzer.FaceAnalyzer, "__init__", "models: FaceAnalyzer")
    timed(edge.watchlist.store.ShardStore, "reload_current", "shard: verify + decrypt + load")
    timed(edge.events.service.EventService, "__init__", "EventService")
    run = edge.node.Node.run
    ready = edge.systemd.Notifier.ready

    def node_run(self: Any, stop: Any) -> int:
        nodes.append(self)
        marks["run"] = time.monotonic()
        return run(self, stop)

    def notifier_ready(self: Any, *a: Any, **kw: Any) -> bool:
        marks.setdefault("ready", time.monotonic())
        rss.setdefault("ready", hwm_mb())
        return ready(self, *a, **kw)

    edge.node.Node.run = node_run  # type: ignore[method-assign]
    edge.systemd.Notifier.ready = notifier_ready  # type: ignore[method-assign]
    code = edge.cli.main(["run", "--config", str(config)])
    marks["end"] = time.monotonic()
    counters = nodes[0].pipeline.counters.snapshot() if nodes and nodes[0].pipeline is not None else {}
    report.write_text(json.dumps({"code": code, "marks": marks, "spans": spans, "rss": rss,
                                  "hwm_mb": hwm_mb(), "maxrss_mb": maxrss_mb(), "counters": counters}))
    return code


# -- the parent --
class NotifySocket:
    """A real sd_notify socket: each datagram's lines with their arrival time (time.monotonic)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            t = time.monotonic()
            self.received.extend((t, line) for line in data.decode(errors="replace").splitlines())

    def first(self, line: str) -> float | None:
        return next((t for t, m in list(self.received) if m == line), None)

    def clear(self) -> None:
        self.received = []

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


def spawn_case(config: Path, work: Path, notify: NotifySocket) -> dict[str, Any]:
    report = work / "report.json"
    report.unlink(missing_ok=True)
    notify.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    env["NOTIFY_SOCKET"] = str(notify.path)
    with open(work / "child.log", "wb") as log:
        t_spawn = time.monotonic()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(config), str(report)],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    time.sleep(0.2)  # the listener has taken the last datagrams
    log_text = (work / "child.log").read_text(errors="replace")
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"node child exited with {proc.returncode}:\n{log_text[-3000:]}")
    doc: dict[str, Any] = json.loads(report.read_text())
    doc["spawn"] = t_spawn
    doc["ready_seen"] = notify.first("READY=1")
    doc["wait4_maxrss_mb"] = usage.ru_maxrss / 1024
    doc["parent_hwm_mb"] = hwm_mb()
    doc["warnings"] = [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line]
    if doc["ready_seen"] is None:
        raise RuntimeError(f"no READY=1 on {notify.path}:\n{log_text[-3000:]}")
    return doc


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def parent(rounds: int, clip_frames: int) -> int:
    from mqttworld import wait_for
    from node_speed import Console, make_footage, make_site

    tmp = Path(tempfile.mkdtemp(prefix="bench-node-mem-"))
    site = None
    console = None
    notify = None
    try:
        footage = make_footage(tmp, clip_frames)
        site = make_site(tmp)
        configs = {}
        for name, (device_id, entries) in CASES.items():
            dev = site.add_device(device_id, entries, seed=entries)
            configs[name] = site.node_toml(dev, footage, "crowd", tmp / f"{device_id}.toml")
        shard_sizes = {name: (site.root / f"{d}.shard").stat().st_size for name, (d, _) in CASES.items()}
        console = Console(site.broker)
        notify = NotifySocket(tmp / "notify.sock")
        print(f"mosquitto {site.broker.port}, TLS; {footage.frames} frames of 1280x720 replay per run "
              f"(realtime = false, crowd plan); child: edge-node run --config, NOTIFY_SOCKET={notify.path}")
        print("shard files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in shard_sizes.items()))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
        t_all = time.perf_counter()
        for rnd in range(rounds):
            order = list(CASES) if rnd % 2 == 0 else list(reversed(CASES))
            for name in order:
                doc = spawn_case(configs[name], tmp, notify)
                results[name].append(doc)
                print(f"   round {rnd + 1}/{rounds} {name}: peak {doc['hwm_mb']:.1f} MB, READY "
                      f"{doc['ready_seen'] - doc['spawn']:.2f} s after spawn, "
                      f"{doc['ready_seen'] - doc['marks']['run']:.2f} s after Node.run, "
                      f"{doc['counters'].get('processed')} frames, {doc['counters'].get('alerts')} alerts "
                      f"({time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
        alerts = sum(d["counters"].get("alerts", 0) for docs in results.values() for d in docs)
        wait_for(lambda: console is not None and console.snapshot()["event"] >= alerts, timeout=10)

        def m(name: str, f: Callable[[dict[str, Any]], float]) -> float:
            return med([f(d) for d in results[name]])

        print(f"\n== peak RSS of the node process, median of {rounds} rounds (target <= {RSS_TARGET_MB:.0f} MB with "
              "10,000 entries)")
        big, small = list(CASES)
        print(f"   {'':<15} {'VmHWM':>9}  verdict  {'ru_maxrss (wait4)':>18}  {'this parent at spawn':>21}")
        for name in CASES:
            peak = m(name, lambda d: d["hwm_mb"])
            verdict = ("PASS" if peak <= RSS_TARGET_MB else "MISS") if name == big else ""
            print(f"   {name:<15} {peak:>6.1f} MB  {verdict:<7}  {m(name, lambda d: d['wait4_maxrss_mb']):>15.1f} MB"
                  f"  {m(name, lambda d: d['parent_hwm_mb']):>18.1f} MB")
        diff = med([a["hwm_mb"] - b["hwm_mb"] for a, b in zip(results[big], results[small], strict=True)])
        print(f"   10,000 - 2 entries: {diff:+.1f} MB (the gallery itself: 10,000 x 128 float32 = "
              f"{10_000 * 128 * 4 / 2**20:.1f} MB)")
        print("   ru_maxrss is not the child's own peak on Linux: execve keeps the signal struct's maxrss, which")
        print("   starts at the spawning process's peak (vfork/fork), so it reads max(parent, child). VmHWM is per")
        print("   address space; it is the figure used here.")
        print("\n   where the peak is reached (child's VmHWM, MB, median):")
        stages = (("imports", "after import edge.cli"), ("models: FaceAnalyzer", "after the models are loaded"),
                  ("shard: verify + decrypt + load", "after the shard is verified and loaded"),
                  ("ready", "at READY=1"))
        print(f"   {'':<40}" + "".join(f"{n:>16}" for n in CASES))
        for key, label in stages:
            print(f"   {label:<40}" + "".join(f"{m(n, lambda d, k=key: d['rss'].get(k, float('nan'))):>16.1f}"
                                              for n in CASES))
        print(f"   {'at exit (after the replay)':<40}" + "".join(f"{m(n, lambda d: d['hwm_mb']):>16.1f}"
                                                               for n in CASES))

        print(f"\n== time to READY=1 on the socket, median of {rounds} rounds (target <= {READY_TARGET_S:.0f} s)")
        for name in CASES:
            spawn = m(name, lambda d: d["ready_seen"] - d["spawn"])
            run = m(name, lambda d: d["ready_seen"] - d["marks"]["run"])
            v = "PASS" if max(spawn, run) <= READY_TARGET_S else ("PASS from Node.run only" if run <= READY_TARGET_S
                                                                   else "MISS")
            print(f"   {name:<15} from spawn {spawn:>5.2f} s   from just before Node.run {run:>5.2f} s   {v}")
        print("\n   breakdown (s, median):")
        print(f"   {'':<44}" + "".join(f"{n:>16}" for n in CASES))

        def other(d: dict[str, Any]) -> float:
            s = d["spans"]
            return (d["marks"]["ready"] - d["marks"]["run"] - s.get("models: FaceAnalyzer", 0.0)
                    - s.get("shard: verify + decrypt + load", 0.0) - s.get("EventService", 0.0))

        rows: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
            ("spawn -> script (interpreter start)", lambda d: d["marks"]["script"] - d["spawn"]),
            ("import edge.cli (numpy, cv2, LiteRT, ...)", lambda d: d["marks"]["imports"] - d["marks"]["script"]),
            ("config + logging -> Node.run", lambda d: d["marks"]["run"] - d["marks"]["imports"]),
            ("Node.run: FaceAnalyzer (models)", lambda d: d["spans"].get("models: FaceAnalyzer", 0.0)),
            ("   of which read + sha256 of the files", lambda d: d["spans"].get("models: read + sha256", 0.0)),
            ("Node.run: shard verify + decrypt + load", lambda d: d["spans"].get("shard: verify + decrypt + load",
                                                                                 0.0)),
            ("Node.run: EventService (outbox, link)", lambda d: d["spans"].get("EventService", 0.0)),
            ("Node.run: the rest (identity, camera, threads)", other),
            ("READY=1 sent -> received", lambda d: d["ready_seen"] - d["marks"]["ready"]),
        ]
        for label, f in rows:
            print(f"   {label:<44}" + "".join(f"{m(n, f):>16.3f}" for n in CASES))
        warnings = sorted({w for docs in results.values() for d in docs for w in d["warnings"]})
        print(f"\n   {alerts} alerts raised, {console.snapshot()['event']} match events received by operator.console; "
              f"{len(warnings)} distinct WARNING/ERROR log lines in the children")
        for w in warnings[:5]:
            print(f"     {w[:160]}")
    finally:
        if notify is not None:
            notify.close()
        if console is not None:
            console.close()
        if site is not None:
            site.broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clip-frames", type=int, default=240, help="frames of the clip before the stills")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    return parent(args.rounds, args.clip_frames)


if __name__ == "__main__":
    sys.exit(main())
