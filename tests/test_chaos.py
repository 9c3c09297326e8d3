"""No event is lost: 1,000 events while the broker restarts 5 times and the publisher is SIGKILLed twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import pytest
from mqttworld import Broker, Peer, make_broker, wait_for

from edge.events.messages import open_match_event
from edge.identity import create_identity
from edge.trust.times import now

HERE = Path(__file__).parent
TOTAL = 1000


def test_no_event_lost_through_broker_restarts_and_publisher_kills(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    broker = make_broker(tmp_path / "broker", devices=("cam-07",))
    broker.start()
    try:
        run_chaos(tmp_path, broker, rng, seed, capsys)
    finally:
        broker.stop()


def run_chaos(tmp_path: Path, broker: Broker, rng: random.Random, seed: int,
              capsys: pytest.CaptureFixture[str]) -> None:
    identity = create_identity(tmp_path / "node", "cam-07")
    key = identity.signing_key.public_key()
    sub = Peer(broker, "operator.console", clean=False, session_expiry=3600)
    sub.client.reconnect_delay_set(1, 2)
    sub.connect().subscribe("edge/v1/+/event/#")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(HERE / "chaos_producer.py"), str(tmp_path / "node"), str(broker.port),
           str(broker.directory), str(TOTAL), "0.02"]
    procs: list[subprocess.Popen[bytes]] = []
    with open(tmp_path / "producer.log", "ab") as log:
        try:
            restarts, kills = disrupt(broker, cmd, env, log, rng, procs)
            log.flush()
            try:
                code = procs[-1].wait(180)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, (f"seed {seed}: the producer " + ("did not finish in 180 s" if code is None else
                               f"exited {code}") + "\n" + (tmp_path / "producer.log").read_text()[-3000:])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def distinct() -> set[bytes]:
        with sub.lock:
            return {m.payload for m in sub.messages}

    wait_for(lambda: len(distinct()) >= TOTAL, timeout=60)
    with sub.lock:
        payloads = [m.payload for m in sub.messages]
    sub.close()
    events = [open_match_event(p, key, "cam-07", now()) for p in payloads]  # every one verifies
    ids = Counter(e.event_id for e in events)
    tracks = Counter(e.track_id for e in {e.event_id: e for e in events}.values())
    duplicates = len(events) - len(ids)
    with capsys.disabled():
        print(f"\nchaos seed={seed}: {restarts} broker restarts, {kills} publisher kills; received "
              f"{len(events)} messages, {len(ids)} distinct event ids, {duplicates} duplicates")
    assert restarts == 5 and kills == 2
    assert len(ids) == TOTAL, f"lost {TOTAL - len(ids)} events (seed {seed})"
    assert set(tracks) == {f"chaos-{i}" for i in range(TOTAL)} and max(tracks.values()) == 1


def disrupt(broker: Broker, cmd: list[str], env: dict[str, str], log: BinaryIO, rng: random.Random,
            procs: list[subprocess.Popen[bytes]]) -> tuple[int, int]:
    """Start the producer; restart the broker 5 times and SIGKILL the producer twice at random points of the
    ~20 s run (each killed producer is started again). `procs` collects every producer process."""
    procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    actions = sorted([(rng.uniform(1, 20), "restart") for _ in range(5)] +
                     [(rng.uniform(1, 20), "kill") for _ in range(2)])
    t0 = time.monotonic()
    kills = restarts = 0
    for at, what in actions:
        time.sleep(max(0.0, at - (time.monotonic() - t0)))
        if what == "restart":
            broker.stop()
            time.sleep(rng.uniform(0.2, 1.5))
            broker.start()
            restarts += 1
        else:
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait()
            kills += 1
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return restarts, kills
