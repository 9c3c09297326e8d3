"""Per-stage wall-clock accounting for one frame (diagnostics and benchmarks)."""

from __future__ import annotations

import time


class StageClock:
    """Accumulates milliseconds per named stage; `lap(stage)` charges the time since the last lap."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000.0
        self._t = now

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.ms.items()}
