"""Shard trust: every attack is refused with its own error, and the shard in force stays in force."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shardworld import World, lenient, make_world

from edge.trust.root import (
    BadSignatureError,
    RootRollbackError,
    SignatureThresholdError,
    TrustError,
    UnknownSignerError,
    sign_document,
)
from edge.trust.times import now
from edge.watchlist.shard import (
    HEADER,
    ShardDecryptError,
    ShardExpiredError,
    ShardFormatError,
    ShardModelMismatchError,
    ShardNotForThisDeviceError,
    ShardNotYetValidError,
    ShardPayloadError,
    ShardReplayError,
    ShardRollbackError,
    ShardThresholdError,
    ShardTooLargeError,
    encode_shard,
    split_shard,
)
from edge.watchlist.store import ActiveWatchList, ShardStore
from provisioning.fleet import FleetError


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


def _in_force(world: World) -> tuple[dict[str, object], bytes]:
    path = world.store.shard_path
    return world.store.state(), path.read_bytes() if path.exists() else b""


def _refused(world: World, path: Path, error: type[Exception], **kw: object) -> None:
    """The shard is refused with exactly this error type; state and stored shard are unchanged."""
    before = _in_force(world)
    with pytest.raises(error) as exc:
        world.store.load(path, world.model, kw.get("at", now()))  # type: ignore[arg-type]
    assert type(exc.value) is error, exc.value
    assert _in_force(world) == before


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, object]], None], keys: list[Ed25519PrivateKey]) -> Path:
    """Re-sign a shard's manifest after `edit`, keeping its ciphertext."""
    envelope, ct = split_shard(src.read_bytes())
    body = json.loads(envelope)["signed"]
    edit(body)
    dst.write_bytes(encode_shard(sign_document(body, keys), bytes(ct)))
    return dst


def test_accepts_a_good_shard_and_decrypts_the_gallery(world: World) -> None:
    matrix = world.watchlist(entries=7, seed=3)
    accepted = world.store.load(world.issue(), world.model, now())
    m = accepted.manifest
    assert (m.version, m.entries, m.deployment.threshold) == (1, 7, 0.95)
    assert accepted.gallery.entry_ids == tuple(f"wl-{i:06d}" for i in range(7))
    np.testing.assert_allclose(accepted.gallery.matrix, matrix, atol=1e-6)
    assert world.store.state()["version_floor"] == 1
    assert world.store.reload_current(world.model, now()).manifest.version == 1  # type: ignore[union-attr]


def test_every_attack_is_refused_with_its_own_error(world: World, tmp_path: Path) -> None:
    first = world.issue()
    second = world.issue()
    world.store.load(second, world.model, now())
    _refused(world, first, ShardRollbackError)
    _refused(world, second, ShardReplayError)
    _refused(world, world.issue(hours=100), ShardExpiredError, at=now() + timedelta(hours=101))
    _refused(world, world.issue(), ShardNotYetValidError, at=now() - timedelta(hours=1))
    _refused(world, world.issue(devices=("cam-02",)), ShardNotForThisDeviceError)
    data = world.issue().read_bytes()
    garbage = tmp_path / "garbage.shard"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    _refused(world, garbage, ShardFormatError)
    truncated = tmp_path / "truncated.shard"
    truncated.write_bytes(data[:-1])
    _refused(world, truncated, ShardPayloadError)
    truncated.write_bytes(data[: HEADER.size + 40])
    _refused(world, truncated, ShardFormatError)
    trailing = tmp_path / "trailing.shard"
    trailing.write_bytes(data + b"\0")
    _refused(world, trailing, ShardPayloadError)
    tampered = tmp_path / "tampered.shard"
    tampered.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    _refused(world, tampered, ShardPayloadError)
    i = data.index(b'"authorisation":"') + 18
    tampered.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
    _refused(world, tampered, BadSignatureError)
    tiny = ShardStore(world.store.state_dir, max_bytes=len(data) - 1)
    with pytest.raises(ShardTooLargeError):
        tiny.load(world.issue(), world.model, now())


def test_signatures_unknown_signer_below_threshold_and_revoked_key(world: World, tmp_path: Path) -> None:
    good = world.issue()
    stranger = Ed25519PrivateKey.generate()
    _refused(world, _rewrite(good, tmp_path / "a.shard", lambda b: None, [stranger]), UnknownSignerError)
    shard_key = world.fleet.read_key(world.fleet.dir / "keys" / "shard-1.pem")
    both = _rewrite(good, tmp_path / "b.shard", lambda b: None, [shard_key, stranger])
    _refused(world, both, UnknownSignerError)  # an extra signature from anyone else is not ignored
    # raise the shard role's threshold to 2: one signature is no longer enough
    world.fleet.add_key("shard")
    world.store.trust_update(world.fleet.root_bytes(2))
    root = world.fleet.root()
    # a root that demands two shard signatures, published as v3
    from edge.trust.root import Role, Root

    r3 = Root(root.fleet, 3, root.expires, root.keys, {**root.roles, "shard": Role(root.roles["shard"].keyids, 2)})
    signers = [world.fleet.read_key(world.fleet.dir / "keys" / f"root-{i}.pem") for i in (1, 2)]
    world.store.trust_update(sign_document(r3.to_body(), signers))
    _refused(world, _rewrite(good, tmp_path / "c.shard", lambda b: None, [shard_key]), SignatureThresholdError)


def test_revoked_signing_key_and_stale_root_after_rotation(world: World) -> None:
    old_signed = world.issue()
    world.fleet.add_key("shard")  # root v2: two shard keys
    old_kid = world.fleet.root().roles["shard"].keyids[0]
    world.fleet.revoke_key(old_kid[:12])  # root v3: the first shard key is gone
    world.store.trust_update(world.fleet.root_bytes(2))
    world.store.trust_update(world.fleet.root_bytes(3))
    (world.fleet.dir / "keys" / "shard-1.pem").rename(world.fleet.dir / "keys" / "revoked-shard-1.pem")
    _refused(world, old_signed, UnknownSignerError)
    assert world.store.load(world.issue(), world.model, now()).manifest.version == 2  # signed by the new key
    with pytest.raises(RootRollbackError):
        world.store.trust_update(world.fleet.root_bytes(2))  # a stale root is not taken back
    assert world.store.trusted_root().root.version == 3


def test_root_rotation_needs_old_and_new_thresholds(world: World) -> None:
    root = world.fleet.rotate_root(new_keys=3, threshold=2)
    world.store.trust_update(world.fleet.root_bytes(root.version))
    assert world.store.trusted_root().root.version == 2
    # a v3 signed only by the new keys' threshold but not the (now old) v2 root keys' threshold... and
    # one signed by one old key only: both refused
    r = world.fleet.root()
    from edge.trust.root import Root

    r3 = Root(r.fleet, 3, r.expires, r.keys, r.roles)
    one = world.fleet.read_key(world.fleet.dir / "keys" / "root-4.pem")
    with pytest.raises(SignatureThresholdError):
        world.store.trust_update(sign_document(r3.to_body(), [one]))
    old_v1_key = world.fleet.read_key(world.fleet.dir / "keys" / "root-1.pem")
    with pytest.raises(UnknownSignerError):
        world.store.trust_update(sign_document(r3.to_body(), [old_v1_key, one]))
    assert world.store.trusted_root().root.version == 2


def test_model_mismatch_and_threshold_below_floor(world: World) -> None:
    manifest_models = __import__("edge.vision.manifest", fromlist=["load_manifest"]).load_manifest()
    other = manifest_models.spec("dlib-resnet-v1-float32")
    world.watchlist(model=other)
    _refused(world, world.issue(model=other), ShardModelMismatchError)
    world.watchlist()
    floor = world.model.threshold_floor
    assert floor is not None
    with pytest.raises(FleetError, match="below the calibrated floor"):
        world.issue(threshold=floor - 0.05)
    # a fleet that wrongly believed in a lower floor: the node still refuses
    _refused(world, world.issue(model=lenient(world.model, 0.5), threshold=floor - 0.05), ShardThresholdError)


def test_other_devices_key_cannot_open_it(world: World, tmp_path: Path) -> None:
    shard = world.issue(devices=("cam-01", "cam-02"))

    def swap(body: dict[str, object]) -> None:
        rec = body["recipients"]
        assert isinstance(rec, dict)
        rec["cam-01"]["wrapped_key"] = rec["cam-02"]["wrapped_key"]

    key = world.fleet.read_key(world.fleet.dir / "keys" / "shard-1.pem")
    _refused(world, _rewrite(shard, tmp_path / "x.shard", swap, [key]), ShardDecryptError)


def test_any_single_changed_byte_is_refused(world: World) -> None:
    """Exhaustive: flip one bit of each byte of a whole shard file; every variant is refused."""
    world.watchlist(entries=2)
    data = world.issue().read_bytes()
    verifier = world.store.verifier(world.model)
    at = now()
    verifier.verify(data, at)  # the original passes
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(TrustError):
                verifier.verify(bytes(bad), at)


def test_expiry_mid_run_wipes_the_gallery(world: World) -> None:
    accepted = world.store.load(world.issue(hours=2), world.model, now())
    active = ActiveWatchList()
    active.swap(accepted)
    assert active.current(now()) is accepted
    later = accepted.manifest.expires + timedelta(seconds=1)
    assert active.current(later) is None
    assert not accepted.gallery.matrix.any() and accepted.gallery.entry_ids == ()
    replacement = world.store.load(world.issue(), world.model, now())
    first = world.store.load(world.issue(), world.model, now())
    active.swap(replacement)
    active.swap(first)
    assert not replacement.gallery.matrix.any()  # the replaced gallery is wiped on swap
