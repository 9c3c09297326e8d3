"""What every bench script shares: where the development set is, and how a call is timed."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def devset_dir() -> Path:
    """$EDGE_DEVSET, else shared/data/devset beside the repository (as laid out for CI)."""
    return Path(os.environ.get("EDGE_DEVSET") or REPO.parent / "shared" / "data" / "devset")


def require_devset() -> Path | None:
    """The devset directory, or None after saying on stderr where it was looked for."""
    devset = devset_dir()
    if (devset / "annotations.json").is_file():
        return devset
    print(f"devset not found at {devset} (set EDGE_DEVSET)", file=sys.stderr)
    return None


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls of fn."""
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
