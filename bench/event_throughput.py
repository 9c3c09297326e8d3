"""Event path throughput and latency, as ratios against bare paho publishing measured in the same run.

One real mosquitto (the generated config: TLS client certificates, ACLs, persistence) on loopback;
operator.console subscribes to edge/v1/+/event/# with QoS 1. For a real signed match event without
evidence (~1 kB) and one carrying a sealed ~20 kB crop, three ways of getting N messages from cam-01 to
edge/v1/cam-01/event/match:

  raw paho      a bare paho client publishing QoS 1 payloads of the real event's size (the floor)
  node FULL     EventService.emit: seal + sign + durable outbox commit (WAL, synchronous=FULL), then the
                link's publisher thread reads the row back, decrypts it, publishes and deletes it on PUBACK
  node OFF      the same with durable=False (synchronous=OFF): the difference is the fsync share

each as a burst (publish / emit as fast as the caller can) and paced (--rate per second, where
latency means something). Reported: sustained msgs/s (first publish or emit call to the last message
received), publish/emit-call-to-subscriber latency p50/p99, how long the emit call blocks the caller,
and the ratios node/raw of each round (median over interleaved rounds). Everything runs in this one
process (same perf_counter; the subscriber callback only timestamps and stores the payload).
The outbox lives under $TMPDIR: the fsync figures are those of that file system.

usage: python3 bench/event_throughput.py [--events 2000] [--rounds 3] [--rate 200] [--paced-events 400]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mqttworld import Broker, Peer, make_broker, wait_for  # noqa: E402

from edge.events.link import publish_properties  # noqa: E402
from edge.events.messages import ModelRef, ShardRef  # noqa: E402
from edge.events.service import EventService, MatchDraft  # noqa: E402
from edge.events.topics import DeviceTopics, all_devices  # noqa: E402
from edge.identity import DeviceIdentity, create_identity  # noqa: E402
from edge.trust.root import TrustedRoot  # noqa: E402

DEVICE = "cam-01"
TOPIC = DeviceTopics(DEVICE).match
CROP_BYTES = 20_000
TTL_SECONDS = 6 * 3600  # as the node's default event TTL, so the raw publish carries the same property
WAIT_S = 120.0


def draft(i: int) -> MatchDraft:
    return MatchDraft(camera_id="gate-a", deployment_id="dep-bench", track_id=f"t{i}", entry_id="wl-000001",
                      score=0.951, threshold=0.94, model=ModelRef("dlib_resnet_v1_int8", "ab" * 32),
                      shard=ShardRef("s-1", 1), frames_agreeing=3)


def no_root() -> TrustedRoot:
    raise RuntimeError("no commands are sent in this bench")


class Sink:
    """operator.console, subscribed to every device's match events; the callback only timestamps."""

    def __init__(self, broker: Broker):
        self.got: list[tuple[float, bytes]] = []
        self.peer = Peer(broker, "operator.console")
        self.peer.client.on_message = lambda _c, _u, msg: self.got.append((time.perf_counter(), msg.payload))
        self.peer.connect()
        self.peer.client.subscribe(all_devices("event/#"), qos=1)
        if not wait_for(lambda: bool(self.peer.suback)):
            raise RuntimeError("operator.console: no SUBACK")

    def reset(self) -> None:
        self.got = []

    def wait(self, n: int) -> bool:
        return wait_for(lambda: len(self.got) >= n, timeout=WAIT_S, step=0.005)

    def close(self) -> None:
        self.peer.close()


@dataclass(frozen=True)
class Run:
    rate: float  # msgs/s, first publish/emit call to last message received
    p50: float  # ms, publish/emit call start to received
    p99: float
    call_p50: float  # ms the publish/emit call blocks the caller
    call_p99: float
    lost: int


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summarise(starts: dict[object, float], calls: list[float], got: list[tuple[float, bytes]],
              key: Callable[[bytes], object], n: int) -> Run:
    received: dict[object, float] = {}
    for t, payload in got:
        received.setdefault(key(payload), t)  # first arrival (QoS 1 may duplicate)
    lat = [(received[k] - t0) * 1000 for k, t0 in starts.items() if k in received]
    if not lat:
        return Run(0.0, float("nan"), float("nan"), pct(calls, 0.5), pct(calls, 0.99), n)
    span = max(received[k] for k in starts if k in received) - min(starts.values())
    return Run(len(lat) / span, pct(lat, 0.5), pct(lat, 0.99), pct(calls, 0.5), pct(calls, 0.99), n - len(lat))


def pace(t0: float, i: int, rate: float | None) -> None:
    if rate:
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def raw_run(broker: Broker, sink: Sink, payload: bytes, n: int, rate: float | None) -> Run:
    pub = Peer(broker, DEVICE).connect()
    if not pub.connected.is_set():
        raise RuntimeError("raw cam-01 publisher did not connect")
    bodies = [b"%08d" % i + payload[8:] for i in range(n)]  # same size; the first 8 bytes say which
    sink.reset()
    starts: dict[object, float] = {}
    calls: list[float] = []
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        pace(t0, i, rate)
        t = time.perf_counter()
        pub.client.publish(TOPIC, body, qos=1, properties=publish_properties(TTL_SECONDS))
        calls.append((time.perf_counter() - t) * 1000)
        starts[i] = t
    sink.wait(n)
    got = sink.got
    pub.close()
    return summarise(starts, calls, got, lambda p: int(p[:8]), n)


class Node:
    """Fresh EventService (new outbox) per run, same device identity and operator key."""

    def __init__(self, broker: Broker, tmp: Path, identity: DeviceIdentity, operator: X25519PublicKey):
        self.broker, self.tmp, self.identity, self.operator = broker, tmp, identity, operator
        self.runs = 0

    def service(self, durable: bool) -> EventService:
        self.runs += 1
        svc = EventService(self.tmp / f"node-{self.runs}", self.identity, self.broker.settings(DEVICE),
                           self.operator, no_root, {}, durable=durable)
        svc.start()
        if not wait_for(lambda: svc.link.health().connected):
            svc.stop()
            raise RuntimeError("EventService did not connect")
        time.sleep(0.2)  # let the online state and the command subscription go out first
        return svc

    def run(self, sink: Sink, crop: bytes | None, n: int, rate: float | None, durable: bool) -> Run:
        svc = self.service(durable)
        sink.reset()
        starts: dict[object, float] = {}
        calls: list[float] = []
        try:
            t0 = time.perf_counter()
            for i in range(n):
                pace(t0, i, rate)
                t = time.perf_counter()
                event_id = svc.emit(draft(i), crop)
                calls.append((time.perf_counter() - t) * 1000)
                starts[event_id] = t
            sink.wait(n)
            got = sink.got
        finally:
            svc.stop()
        return summarise(starts, calls, got, lambda p: json.loads(p)["event_id"], n)

    def sample_payload(self, sink: Sink, crop: bytes | None) -> bytes:
        """One real signed event as the subscriber receives it (also warms every code path up)."""
        svc = self.service(durable=True)
        sink.reset()
        try:
            for i in range(20):
                svc.emit(draft(i), crop)
            if not sink.wait(20):
                raise RuntimeError("warm-up events did not arrive")
            return sink.got[-1][1]
        finally:
            svc.stop()


PATHS = ("raw paho QoS 1", "node emit, FULL", "node emit, OFF")


def table(title: str, rounds: list[dict[str, Run]]) -> None:
    def med(path: str, f: Callable[[Run], float]) -> float:
        return statistics.median(f(r[path]) for r in rounds)

    def ratio(path: str, f: Callable[[Run], float]) -> float:
        return statistics.median(f(r[path]) / f(r[PATHS[0]]) for r in rounds)

    print(f"\n== {title}")
    print(f"   {'path':<17} {'msgs/s':>8} {'x raw':>6}  {'p50 ms':>8} {'x raw':>6}  {'p99 ms':>8} {'x raw':>6}"
          f"  {'call p50/p99 ms':>16}  lost")
    for path in PATHS:
        rate = med(path, lambda r: r.rate)
        p50, p99 = med(path, lambda r: r.p50), med(path, lambda r: r.p99)
        call = f"{med(path, lambda r: r.call_p50):.3f}/{med(path, lambda r: r.call_p99):.3f}"
        lost = sum(r[path].lost for r in rounds)
        print(f"   {path:<17} {rate:>8,.0f} {ratio(path, lambda r: r.rate):>6.2f}  {p50:>8.2f} "
              f"{ratio(path, lambda r: r.p50):>6.2f}  {p99:>8.2f} {ratio(path, lambda r: r.p99):>6.2f}"
              f"  {call:>16}  {lost}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000, help="messages per burst run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0, help="events/s of the paced runs (0: no paced runs)")
    ap.add_argument("--paced-events", type=int, default=400, help="messages per paced run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    broker = make_broker(tmp / "broker")
    broker.start()
    sink: Sink | None = None
    try:
        sink = Sink(broker)
        identity = create_identity(tmp / "identity", DEVICE)
        node = Node(broker, tmp, identity, X25519PrivateKey.generate().public_key())
        crop = os.urandom(CROP_BYTES)  # a JPEG does not compress either
        kinds = {"no evidence": None, f"{CROP_BYTES // 1000} kB crop": crop}
        sizes = {name: len(node.sample_payload(sink, c)) for name, c in kinds.items()}
        modes: list[tuple[str, int, float | None]] = [("burst", args.events, None)]
        if args.rate:
            modes.append((f"paced {args.rate:g}/s", args.paced_events, args.rate))
        print(f"mosquitto {broker.port} on loopback, TLS 1.2 client certificates; outbox under {tmp}")
        print("event sizes on the wire: " + ", ".join(f"{k} {v:,} B" for k, v in sizes.items()))
        results: dict[tuple[str, str], list[dict[str, Run]]] = {(k, m): [] for k in kinds for m, _, _ in modes}
        t_all = time.perf_counter()
        for rnd in range(args.rounds):
            for kind, c in kinds.items():
                payload = b"x" * sizes[kind]
                for mode, n, rate in modes:
                    jobs: list[tuple[str, Callable[[], Run]]] = [
                        (PATHS[0], partial(raw_run, broker, sink, payload, n, rate)),
                        (PATHS[1], partial(node.run, sink, c, n, rate, durable=True)),
                        (PATHS[2], partial(node.run, sink, c, n, rate, durable=False)),
                    ]
                    k = rnd % len(jobs)
                    got = {path: job() for path, job in jobs[k:] + jobs[:k]}  # rotate the order per round
                    results[(kind, mode)].append(got)
            print(f"   round {rnd + 1}/{args.rounds} done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr)
        for (kind, mode), rounds in results.items():
            n = args.events if mode == "burst" else args.paced_events
            table(f"{kind} ({sizes[kind]:,} B), {mode}, {n} messages, median of {len(rounds)} rounds", rounds)
        print("\n   msgs/s: first publish/emit call to last received; p50/p99: call start to received; call: how")
        print("   long publish()/emit() blocks the caller; x raw: median of the per-round ratios node/raw.")
        print("   In a burst raw paho queues all N at once (latency = queue depth) while emit() paces itself by its")
        print("   commit: compare throughput there, latency in the paced runs.")
    finally:
        if sink is not None:
            sink.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
