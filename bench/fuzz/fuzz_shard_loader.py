"""Coverage-guided fuzzing (atheris / libFuzzer) of the node's shard loader.

Any exception other than the loader's own TrustError subclasses is a finding (atheris reports it and
stops). The corpus is seeded with a valid shard so mutations reach past the framing and the signature.

usage: python bench/fuzz/fuzz_shard_loader.py -runs=1000000 [-max_len=8192] [corpus_dir]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

with atheris.instrument_imports():
    from edge.trust.root import TrustError
    from edge.trust.times import now
    from edge.watchlist import loader, shard  # noqa: F401

from shardworld import make_world  # noqa: E402


class _Env:
    """make_world wants pytest's monkeypatch; this is the part of it it uses."""

    def setenv(self, key: str, value: str) -> None:
        os.environ[key] = value


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-shard-"))
    world = make_world(tmp, _Env())
    world.watchlist(entries=2)
    seed = world.issue().read_bytes()
    verifier = world.store.verifier(world.model)
    at = now()
    verifier.verify(seed, at)  # the seed is valid
    corpus = Path(sys.argv[-1]) if len(sys.argv) > 1 and not sys.argv[-1].startswith("-") else tmp / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "valid.shard").write_bytes(seed)
    if corpus != Path(sys.argv[-1]):
        sys.argv.append(str(corpus))

    def one(data: bytes) -> None:
        with contextlib.suppress(TrustError):
            verifier.verify(data, at)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
