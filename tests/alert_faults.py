"""The real node (demo site, demo footage, MQTT on) with a fault at one step of its first alert, run as its own
process by tests/test_alert_durability.py. Test-only: the fault is injected here, by wrapping the real
methods; nothing in the node reads it.

    python alert_faults.py DEMO_DIR BROKER_URL kill|term STEP MARK [STOP_TIMEOUT]

STEP is where in `AuditedSink.emit` the fault comes, right after: `held` (event committed held), `vault`
(evidence stored), `audit` (alert record appended), `released` (row released to the publisher). `kill`:
SIGKILL; `term`: SIGTERM, handled as systemd's stop is (the node stops, draining its outbox). The event id
is written to MARK first. Signed events are printed as JSON lines, as the demo does.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.audit import AuditLog
from edge.config import CameraConfig, MqttConfig, NodeConfig, TrackingConfig
from edge.demo.run import CAMERA, FOOTAGE, FPS, HOLD_FRAMES, SEQUENCE, DemoSite, broker_ready, prepare
from edge.events.service import EventService, HeldEvent
from edge.node import Node
from edge.systemd import Notifier
from edge.vault import EvidenceVault
from edge.vision.analyzer import VisionConfig
from edge.vision.detect import DetectorConfig, TilePlan

STEPS = ("held", "vault", "audit", "released")


def main() -> int:
    demo, url, how, step, mark = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])
    stop_timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    assert how in ("kill", "term") and step in STEPS, sys.argv
    done = threading.Event()

    def fault(event_id: str, at: str) -> None:
        if at != step or done.is_set():
            return
        done.set()
        mark.write_text(event_id)
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGTERM)

    def after(cls: Any, name: str, event_id: Callable[..., str | None], at: str) -> None:
        real = getattr(cls, name)

        def wrapped(self: Any, *args: Any, **kw: Any) -> Any:
            result = real(self, *args, **kw)
            eid = event_id(result, *args)
            if eid is not None:
                fault(eid, at)
            return result

        setattr(cls, name, wrapped)

    after(EventService, "hold", lambda held, *_: held.event_id, "held")
    after(EvidenceVault, "store", lambda _r, event_id, *_: event_id, "vault")
    after(AuditLog, "append", lambda _r, kind, data: data["event_id"] if kind == "alert" else None, "audit")
    after(EventService, "release", lambda _r, held: held.event_id if isinstance(held, HeldEvent) else None,
          "released")

    vision = VisionConfig(detector=DetectorConfig(tiles=TilePlan()))  # = --tiles off
    site = DemoSite(demo)
    prepare(site, vision, sys.stderr)
    broker_ready(site)
    operator_file = site.fleet_dir / "operators" / "demo.json"
    camera = CameraConfig(id=CAMERA, source="replay", paths=tuple(FOOTAGE / f for f in SEQUENCE), realtime=False,
                          hold_frames=HOLD_FRAMES, fps=FPS)
    config = NodeConfig(source_file=None, state_dir=site.node_dir, run_dir=site.root / "run", camera=camera,
                        vision=vision, tracking=TrackingConfig(),
                        mqtt=MqttConfig(url, operator_file, event_ttl_hours=1.0, state_every_s=5.0))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # as `edge-node run` does
    node = Node(config, notifier=Notifier(environ={}), print_events=True, stop_timeout=stop_timeout)
    return node.run(stop)


if __name__ == "__main__":
    sys.exit(main())
