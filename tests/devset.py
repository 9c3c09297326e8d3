"""Where the development set of real faces is: one definition for the tests and the benchmarks.

The set lives in the repository (tests/data/devset, provenance in tests/data/README.md) so that a clone
needs nothing beside it; $EDGE_DEVSET may point at another copy with the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVSET = REPO / "tests" / "data" / "devset"
RESTORE = "git checkout HEAD -- tests/data"


class DevsetMissingError(Exception):
    """The development set is not where it was looked for; the message says how to get it back."""


def devset_path() -> Path:
    """$EDGE_DEVSET if set, else tests/data/devset (not checked)."""
    return Path(os.environ.get("EDGE_DEVSET") or DEVSET)


def locate_devset() -> Path:
    """devset_path(), checked: raises DevsetMissingError naming the fix when the set is not there."""
    env = os.environ.get("EDGE_DEVSET")
    path = devset_path()
    if (path / "annotations.json").is_file():
        return path
    if env:
        raise DevsetMissingError(f"EDGE_DEVSET={env} holds no annotations.json: "
                                 "unset EDGE_DEVSET to use the set in tests/data/devset")
    raise DevsetMissingError(f"the development set is missing from this checkout ({DEVSET.relative_to(REPO)}): "
                             f"restore it with `{RESTORE}` (tests/data/README.md says what it holds)")
