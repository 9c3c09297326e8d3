"""The fleet files one run of a tool is about to write, kept as they were so that a run that fails can put
the fleet directory back exactly (used by serial provisioning: docs/serial-protocol.md)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edge.fsutil import write_atomic


@dataclass(frozen=True)
class Prior:
    """A fleet file as it was before a provisioning run wrote it (`data` None: it did not exist)."""

    path: Path
    data: bytes | None
    mode: int


class FleetWrites:
    """The fleet files one provisioning run is about to write, as they were, so that a run that fails before
    the device commits puts the fleet directory back exactly: each file rewritten as it was or removed, and
    the directories made for them removed. Only the files named here are touched, so another run on the same
    fleet directory keeps its own."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self._prior: list[Prior] = []
        self._made: list[Path] = []  # directories that did not exist, outermost first

    def expect(self, *paths: Path) -> None:
        """Remember these files (and any missing directory above them, inside the fleet directory) before they
        are written."""
        for path in paths:
            for d in reversed(path.parents):  # outermost first
                if d.is_relative_to(self.top) and d != self.top and not d.exists() and d not in self._made:
                    self._made.append(d)
            try:
                self._prior.append(Prior(path, path.read_bytes(), stat.S_IMODE(path.stat().st_mode)))
            except FileNotFoundError:
                self._prior.append(Prior(path, None, 0))

    def undo(self) -> list[Path]:
        """Put every remembered file back (the last written first); the files changed, in the order remembered.
        OSError if one cannot be."""
        changed = []
        for p in reversed(self._prior):
            if p.data is None:
                if p.path.exists():
                    p.path.unlink()
                    changed.append(p.path)
            elif not p.path.exists() or p.path.read_bytes() != p.data:
                write_atomic(p.path, p.data, p.mode)
                os.chmod(p.path, p.mode)
                changed.append(p.path)
        for d in reversed(self._made):
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                # another run wrote into it meanwhile: it stays
        return changed[::-1]

    @property
    def noted(self) -> tuple[Prior, ...]:
        return tuple(self._prior)
