"""What the evidence vault costs per alert and per purge, as ratios against the outbox in the same run.

Per alert the node commits the match event to the outbox (the baseline: one durable, encrypted SQLite row
of the same size) and stores the two crops in the vault. Per purge it destroys a day key, deletes its rows,
checkpoints and VACUUMs. Interleaved rounds; medians. Absolute times are for orientation only.

usage: python bench/vault_cost.py [--alerts 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.events.outbox import Outbox
from edge.vault import EvidenceVault

FACE, CONTEXT = 15_000, 12_000  # bytes: typical JPEG crops at 160 px and 192 px, quality 90


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    key = os.urandom(32)
    face, context = os.urandom(FACE), os.urandom(CONTEXT)
    event = os.urandom(FACE + CONTEXT + 1_000)  # the event carries both crops sealed, plus ~1 kB of fields
    outbox_ms: list[float] = []
    vault_ms: list[float] = []
    purge_ms: list[float] = []
    ack_ms: list[float] = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            t = [datetime(2026, 11, 1, tzinfo=UTC)]
            outbox = Outbox(Path(d) / "outbox.db", key)
            vault = EvidenceVault(Path(d) / "vault.db", key, lambda t=t: t[0])
            for i in range(args.alerts):
                t[0] = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=i % 10)  # ten day keys
                if (i + r) % 2:  # interleave which goes first
                    a = time.perf_counter()
                    outbox.enqueue("edge/v1/cam/event/match", 2e9, lambda seq, i=i: (f"e{i}", event))
                    b = time.perf_counter()
                    vault.store(f"e{i}", "dep-1", 30, face, context)
                    c = time.perf_counter()
                    outbox_ms.append((b - a) * 1e3)
                    vault_ms.append((c - b) * 1e3)
                else:
                    a = time.perf_counter()
                    vault.store(f"e{i}", "dep-1", 30, face, context)
                    b = time.perf_counter()
                    outbox.enqueue("edge/v1/cam/event/match", 2e9, lambda seq, i=i: (f"e{i}", event))
                    c = time.perf_counter()
                    vault_ms.append((b - a) * 1e3)
                    outbox_ms.append((c - b) * 1e3)
            for i in range(0, 10):  # a review of one alert: delete its row, VACUUM
                a = time.perf_counter()
                vault.acknowledge(f"e{i}")
                ack_ms.append((time.perf_counter() - a) * 1e3)
            t[0] = datetime(2026, 12, 1, tzinfo=UTC)
            for day in range(10):  # one key's retention runs out at a time
                t[0] = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(days=day)
                a = time.perf_counter()
                vault.purge()
                purge_ms.append((time.perf_counter() - a) * 1e3)
            vault.close()
            outbox.close()
    base = statistics.median(outbox_ms)
    print(f"per alert, {args.alerts} alerts x {args.rounds} rounds, crops {FACE} + {CONTEXT} B:")
    print(f"  outbox commit (baseline)  {base:7.2f} ms median")
    print(f"  vault store               {statistics.median(vault_ms):7.2f} ms median = "
          f"{statistics.median(vault_ms) / base:.2f}x the outbox commit")
    print(f"  review (delete + VACUUM)  {statistics.median(ack_ms):7.2f} ms median = "
          f"{statistics.median(ack_ms) / base:.2f}x, with {args.alerts} alerts' crops in the file")
    print(f"  purge of one day key      {statistics.median(purge_ms):7.2f} ms median = "
          f"{statistics.median(purge_ms) / base:.2f}x (destroy key, checkpoint, delete ~{args.alerts // 10} rows, "
          "VACUUM)")


if __name__ == "__main__":
    main()
