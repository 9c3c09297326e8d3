"""`edge-node demo --broker`: the demo publishes its events to a broker configured from the demo fleet, and
the operator's `events tail` verifies them and opens the sealed crops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mqttworld import fleet_broker

from edge.demo.run import DEMO_PASSPHRASE


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_FLEET_PASSPHRASE": DEMO_PASSPHRASE}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_demo_publishes_and_the_console_verifies(tmp_path: Path) -> None:
    demo, bdir = tmp_path / "demo", tmp_path / "broker"
    first = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off")
    assert first.returncode == 0, first.stderr
    fleet = demo / "fleet"
    broker, url = fleet_broker(fleet, bdir, DEMO_PASSPHRASE)
    broker.start()
    try:
        tail = ["provisioning.cli", "events", "tail", "--broker", url, "--fleet-dir", str(fleet),
                "--evidence-dir", str(tmp_path / "crops")]
        assert run(*tail, "--idle-timeout", "1").returncode == 0  # the console's session exists from now on
        published = run("edge.cli", "demo", "--demo-dir", str(demo), "--tiles", "off", "--broker", url)
        assert published.returncode == 0, published.stderr
        printed = [json.loads(line) for line in published.stdout.splitlines()]
        got = run(*tail, "--idle-timeout", "3")
    finally:
        broker.stop()
    assert got.returncode == 0, got.stderr
    events = [json.loads(line) for line in got.stdout.splitlines()]
    assert [e["event_id"] for e in events] == [p["event_id"] for p in printed] and len(events) == 2
    for e in events:
        assert e["verified"] and e["evidence"]["opened"] and e["device_id"] == "demo-node"
        assert Path(e["evidence"]["file"]).read_bytes()[:2] == b"\xff\xd8"  # a JPEG crop, for the officer
