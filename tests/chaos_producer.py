"""The publishing side of the chaos test, run as its own process so it can be SIGKILLed.

Emits match events 0..N-1 (track id "chaos-<i>") through the real EventService; after a restart it
resumes at the outbox's durable enqueued counter, so every index is committed exactly once overall.
Exits 0 once all N are enqueued and the outbox is empty.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edge.events.link import BrokerSettings
from edge.events.messages import ModelRef, ShardRef
from edge.events.service import EventService, MatchDraft
from edge.identity import load_identity
from edge.watchlist.store import ShardStore


def main() -> int:
    state, port, creds, total, interval = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), \
        int(sys.argv[4]), float(sys.argv[5])
    identity = load_identity(state)
    settings = BrokerSettings("127.0.0.1", port, creds / "ca.crt", creds / f"{identity.device_id}.crt",
                              creds / f"{identity.device_id}.key", reconnect_min=1, reconnect_max=2)
    svc = EventService(state, identity, settings, None, ShardStore(state).trusted_root)
    # A kill between emit's hold and release leaves a held row, a barrier for every later row. The node
    # reconciles such rows with its audit log before its link starts (edge.alerts.recover_held_alerts); this
    # producer keeps no record, so it releases them, as that recovery does for an event already on the record.
    for item in svc.outbox.held():
        svc.outbox.release(item.seq)
        print(f"released held row {item.seq}", flush=True)
    svc.start()
    start = svc.outbox.stats().enqueued
    print(f"resuming at {start}", flush=True)
    for i in range(start, total):
        svc.emit(MatchDraft("gate-a", "dep-chaos", f"chaos-{i}", "wl-000001", 0.95, 0.94,
                            ModelRef("m", "00" * 32), ShardRef("s", 1), 3), None)
        time.sleep(interval)
    while svc.outbox.stats().pending:
        time.sleep(0.1)
    svc.stop()
    print(f"done: {svc.outbox.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
