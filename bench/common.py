"""What every bench script shares: where the development set is."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def devset_dir() -> Path:
    """$EDGE_DEVSET, else shared/data/devset beside the repository (as laid out for CI)."""
    return Path(os.environ.get("EDGE_DEVSET") or REPO.parent / "shared" / "data" / "devset")
