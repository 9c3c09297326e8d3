"""What every bench script shares: where the development set is, and how a call is timed."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO / "tests"))
from devset import DevsetMissingError, locate_devset  # noqa: E402  (one definition, shared with the tests)
from devset import devset_path as devset_path  # noqa: E402  (re-exported for the bench scripts)


def require_devset() -> Path | None:
    """The devset directory (tests/data/devset or $EDGE_DEVSET), or None after saying on stderr how to get it."""
    try:
        return locate_devset()
    except DevsetMissingError as exc:
        print(exc, file=sys.stderr)
        return None


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls of fn."""
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
