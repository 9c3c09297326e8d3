"""The step clock of the release checks (hw/arm64/proof, hw/image/build): one line per step with its time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Clock:
    """Times each step and prints its line, `<prefix>: <step> <seconds> s  <what the step said>`, as it ends."""

    def __init__(self, prefix: str, width: int = 8) -> None:
        self.prefix = prefix
        self.width = width
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[str], None]]:
        t0 = time.monotonic()
        said: list[str] = []
        yield said.append
        self.seconds[name] = round(time.monotonic() - t0, 1)
        print(f"{self.prefix}: {name:<{self.width}} {self.seconds[name]:7.1f} s  {'; '.join(said)}", flush=True)
