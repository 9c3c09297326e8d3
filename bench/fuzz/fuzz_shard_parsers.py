"""Coverage-guided fuzzing of the shard's parsers *behind* the signature check: framing, envelope,
manifest schema and gallery payload, fed directly (a fuzzer cannot forge Ed25519, so the loader harness
alone never reaches them). Only ShardError/TrustError may escape.

usage: python bench/fuzz/fuzz_shard_parsers.py -runs=1000000 [-max_len=4096] [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from edge.trust.root import TrustError, parse_envelope
    from edge.watchlist.shard import SHARD_TYPE, decode_payload, parse_manifest, split_shard


def one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    try:
        if mode == 0:
            envelope, _ = split_shard(body)
            parse_manifest(parse_envelope(envelope, SHARD_TYPE))
        elif mode == 1:
            parse_manifest(parse_envelope(body, SHARD_TYPE))
        else:
            entries = int.from_bytes(body[:2], "big") % 64
            dim = 1 + body[2] % 16 if len(body) > 2 else 1
            decode_payload(memoryview(body[3:]), entries, dim)
    except TrustError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
