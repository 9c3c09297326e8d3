"""Property-based tests of the shard parser and loader: whatever the bytes, only the loader's own errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardworld import World, make_world

from edge.trust.canonical import CanonicalFormError, canonical, parse_canonical
from edge.trust.root import TrustError, sign_document
from edge.trust.times import now
from edge.watchlist.loader import ShardVerifier
from edge.watchlist.shard import encode_shard, split_shard

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, ShardVerifier, bytes]:
    mp = pytest.MonkeyPatch()
    world = make_world(tmp_path_factory.mktemp("props"), mp)
    world.watchlist(entries=3)
    data = world.issue().read_bytes()
    verifier = world.store.verifier(world.model)
    mp.undo()
    return world, verifier, data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_trust_errors(setup: tuple[World, ShardVerifier, bytes], blob: bytes) -> None:
    _, verifier, data = setup
    for candidate in (blob, data[:12] + blob, data[: len(blob) % len(data)] + blob):
        with pytest.raises(TrustError):
            verifier.verify(candidate, now())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_splices_and_truncations_are_refused(setup: tuple[World, ShardVerifier, bytes], data: st.DataObject) -> None:
    _, verifier, shard = setup
    i = data.draw(st.integers(0, len(shard) - 1))
    j = data.draw(st.integers(i, len(shard)))
    insert = data.draw(st.binary(max_size=64))
    candidate = shard[:i] + insert + shard[j:]
    if candidate == shard:
        return
    with pytest.raises(TrustError):
        verifier.verify(candidate, now())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["deployment", "payload", "model", "recipients", "cam-01", "version",
                                      "threshold", "cameras", "entries", "nonce", "expires", "kid"]), max_size=3),
       value=json_values)
def test_signed_but_malformed_manifests_are_refused_cleanly(setup: tuple[World, ShardVerifier, bytes],
                                                            path: list[str], value: Any) -> None:
    """Even with a valid signature, a manifest field set to any JSON value is refused or accepted, never crashes."""
    world, verifier, shard = setup
    envelope, ct = split_shard(shard)
    body = json.loads(envelope)["signed"]
    node = body
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not path:
        return
    node[path[-1]] = value
    key = _shard_key(world)
    candidate = encode_shard(sign_document(body, [key]), bytes(ct))
    with contextlib.suppress(TrustError):
        verifier.verify(candidate, now())


_KEYS: dict[int, Any] = {}


def _shard_key(world: World) -> Any:
    if id(world) not in _KEYS:
        mp = pytest.MonkeyPatch()
        mp.setenv("EDGE_FLEET_PASSPHRASE", "test-passphrase")
        _KEYS[id(world)] = world.fleet.read_key(world.fleet.dir / "keys" / "shard-1.pem")
        mp.undo()
    return _KEYS[id(world)]


@given(json_values)
def test_canonical_json_round_trips_and_is_unique(value: Any) -> None:
    data = canonical(value)
    assert parse_canonical(data) == value
    spaced = data.replace(b",", b", ", 1)
    if spaced != data:  # either not canonical, or (a comma inside a string) another value
        with contextlib.suppress(CanonicalFormError):
            assert parse_canonical(spaced) != value


def test_duplicate_keys_and_constants_are_refused(tmp_path: Path) -> None:
    for bad in (b'{"a":1,"a":1}', b'{"a":NaN}', b'{"a":1e0}', b'{"b":1,"a":2}', b"\xff"):
        with pytest.raises(CanonicalFormError):
            parse_canonical(bad)
