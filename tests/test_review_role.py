"""The review role of the fleet root, checked by the node's CommandVerifier without a broker: review keys sign
reviews and nothing else (no shard, no config), a command key cannot sign a review once the trusted root has
the role, its threshold is its own; a root made before the role still parses, and there reviews are signed by
the command keys until a rotation adds the role (docs/trust.md, "The review role")."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shardworld import World, make_world

from edge.config import CameraConfig, NodeConfig, TrackingConfig
from edge.events.commands import (
    CommandRoleError,
    CommandVerifier,
    ReviewRoleError,
    SeenCommands,
    command_body,
    shard_push_args,
    signing_role,
)
from edge.events.ids import uuid7
from edge.events.topics import DeviceTopics
from edge.node import Node
from edge.systemd import Notifier
from edge.trust.keys import key_id
from edge.trust.root import (
    REQUIRED_ROLES,
    DocumentFormatError,
    Root,
    SignatureThresholdError,
    Signed,
    TrustedRoot,
    UnknownSignerError,
    sign_document,
)
from edge.trust.times import now
from edge.vision.analyzer import VisionConfig
from provisioning.cli import main as edge_fleet
from provisioning.commands import sign_command
from provisioning.fleet import FleetError

TOPICS = DeviceTopics("cam-01")
AT = now().replace(microsecond=0)
REVIEW = {"event_id": "019a0000-0000-7000-8000-000000000001", "outcome": "confirmed", "reviewers": ["PC-4711"]}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


def key(world: World, name: str) -> Ed25519PrivateKey:
    return world.fleet.read_key(world.fleet.dir / "keys" / f"{name}.pem")


def signed(verb: str, args: Mapping[str, Any], *keys: Ed25519PrivateKey) -> bytes:
    return sign_document(command_body("acme", "cam-01", verb, args, AT, timedelta(hours=1)), keys)


def verify(world: World, verb: str, data: bytes) -> str:
    seen = SeenCommands(world.tmp / f"seen-{uuid7()}.json")
    return CommandVerifier(world.store.trusted_root(), "cam-01", seen).verify(TOPICS.command(verb), data, AT).verb


def roll_back_to_a_root_without_review(world: World) -> None:
    """The fleet and the node as they were before the review role: root v1 names root, shard and command only."""
    root = world.fleet.root()
    review_ids = set(root.roles["review"].keyids)
    old = Root(root.fleet, 1, root.expires, {k: v for k, v in root.keys.items() if k not in review_ids},
               {name: r for name, r in root.roles.items() if name in REQUIRED_ROLES})
    data = sign_document(old.to_body(), [key(world, f"root-{i}") for i in (1, 2)])
    world.fleet.root_path(1).write_bytes(data)
    (world.fleet.dir / "keys" / "review-1.pem").unlink()
    world.store.root_path.unlink()
    world.store.trust_init(data)


def test_init_makes_a_review_key_that_signs_reviews_and_nothing_else(world: World) -> None:
    root = world.fleet.root()
    assert root.has_role("review") and root.roles["review"].threshold == 1
    assert [p.name for p in world.fleet.key_files("review")] == ["review-1.pem"]
    review = key(world, "review-1")
    assert verify(world, "review", signed("review", REVIEW, review)) == "review"
    # a review key cannot push a shard, change a config or order a purge
    for verb, args in (("shard-push", shard_push_args(b"any shard")), ("config", {"set": {"fps": 10}}),
                       ("purge", {"deployment_id": "dep-test", "before": None})):
        with pytest.raises(CommandRoleError, match="is a review key") as refused:
            verify(world, verb, signed(verb, args, review))
        assert not isinstance(refused.value, ReviewRoleError)
    # nor sign a shard manifest: the shard role does not list it
    manifest = b'{"type":"edge-shard"}'
    with pytest.raises(UnknownSignerError, match="not a shard key"):
        root.verify(Signed({"type": "edge-shard"}, manifest, ((key_id(review.public_key()), review.sign(manifest)),)),
                    "shard")
    # a review signed with the review key and sent on the config topic is not a config either
    with pytest.raises(CommandRoleError):
        CommandVerifier(world.store.trusted_root(), "cam-01", SeenCommands(world.tmp / "s.json")).verify(
            TOPICS.command("config"), signed("review", REVIEW, review), AT)


def test_a_command_key_cannot_sign_a_review_once_the_role_exists(world: World) -> None:
    command = key(world, "command-1")
    with pytest.raises(ReviewRoleError, match="has a review role"):
        verify(world, "review", signed("review", REVIEW, command))
    # and the fleet's own signer picks the review key for a review, the command key for the rest
    _cid, data = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT)
    assert verify(world, "review", data) == "review"
    _cid, data = sign_command(world.fleet, "cam-01", "config", {"set": {"fps": 10}}, issued=AT)
    assert verify(world, "config", data) == "config"
    # a review signed with a key the console holds (not in F/keys): only a review key of the root counts
    with pytest.raises(FleetError, match="0 review key"):
        sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, keys=[command])
    _cid, data = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, keys=[key(world, "review-1")])
    assert verify(world, "review", data) == "review"


def test_a_root_without_the_review_role_parses_and_its_command_keys_sign_reviews(world: World) -> None:
    roll_back_to_a_root_without_review(world)
    trusted = world.store.trusted_root()
    assert not trusted.root.has_role("review") and signing_role("review", trusted.root) == "command"
    assert world.fleet.key_files("review") == []
    _cid, data = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT)  # by the command key
    assert verify(world, "review", data) == "review"
    # the rotation that adds the role: the first review key creates it; from then on command keys are refused
    path, v2 = world.fleet.add_key("review")
    assert path.name == "review-1.pem" and v2.roles["review"].threshold == 1
    world.store.trust_update(world.fleet.root_bytes(2))
    with pytest.raises(ReviewRoleError):
        verify(world, "review", data)
    _cid, data = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT)
    assert verify(world, "review", data) == "review"


def test_a_root_may_not_drop_the_review_role_once_trusted(world: World) -> None:
    root = world.fleet.root()
    review_ids = set(root.roles["review"].keyids)
    v2 = Root(root.fleet, 2, root.expires, {k: v for k, v in root.keys.items() if k not in review_ids},
              {name: r for name, r in root.roles.items() if name != "review"})
    data = sign_document(v2.to_body(), [key(world, f"root-{i}") for i in (1, 2)])
    with pytest.raises(DocumentFormatError, match="drops the review role"):
        world.store.trust_update(data)
    assert world.store.trusted_root().root.has_role("review")
    # and a root naming a role nobody knows is not a root
    body = root.to_body()
    body["roles"] = {**body["roles"], "console": body["roles"]["review"]}
    with pytest.raises(DocumentFormatError, match=r"root\.roles: expected exactly"):
        TrustedRoot.bootstrap(sign_document(body, [key(world, f"root-{i}") for i in (1, 2)]))


def test_review_threshold_two(world: World) -> None:
    path, _ = world.fleet.add_key("review")  # v2: two review keys, threshold still 1
    assert path.name == "review-2.pem"
    with pytest.raises(FleetError, match="between 1 and the role's 2"):
        world.fleet.set_threshold("review", 3)
    v3 = world.fleet.set_threshold("review", 2)  # v3: both must sign
    assert v3.roles["review"].threshold == 2 and v3.roles["command"].threshold == 1
    for v in (2, 3):
        world.store.trust_update(world.fleet.root_bytes(v))
    one, two = key(world, "review-1"), key(world, "review-2")
    with pytest.raises(SignatureThresholdError, match="1 valid review signature"):
        verify(world, "review", signed("review", REVIEW, one))
    assert verify(world, "review", signed("review", REVIEW, one, two)) == "review"
    _cid, data = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT)  # both keys from F/keys
    assert verify(world, "review", data) == "review"
    with pytest.raises(FleetError, match="1 review key"):
        sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, keys=[one])
    # the command role's own threshold is untouched: one command key still signs a config
    assert verify(world, "config", signed("config", {"set": {"fps": 10}}, key(world, "command-1"))) == "config"
    with pytest.raises(FleetError, match="root rotate"):
        world.fleet.set_threshold("root", 1)


def reported_root(world: World) -> dict[str, Any] | None:
    """What the node's state topic says of the root it trusts."""
    camera = CameraConfig(id="gate-a", source="replay", paths=(world.tmp / "none.jpg",))
    node = Node(NodeConfig(source_file=None, state_dir=world.tmp / "node", run_dir=world.tmp / "run", camera=camera,
                           vision=VisionConfig(), tracking=TrackingConfig(), mqtt=None),
                notifier=Notifier(environ={}), harden=False)
    node.store = world.store
    detail: dict[str, Any] | None = node.state_detail()["root"]
    return detail


def test_a_device_behind_the_fleets_root_gets_reviews_signed_for_its_root(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """`key add review` on a fleet made before the role publishes v2 while the device still trusts v1: a review
    signed for the fleet's root (review key) is refused by the device, and the command says so; signed for the
    root the device reports on its state topic (root_version, --device-root), by that root's role (command
    keys), it is taken. Once the device trusts v2, only the review key's signature is."""
    roll_back_to_a_root_without_review(world)
    assert reported_root(world) == {"version": 1, "review_role": False}
    assert edge_fleet(["key", "add", "review", "--fleet-dir", str(world.fleet.dir)]) == 0
    out = capsys.readouterr().out
    assert "published root v2" in out and "Update every device's root before sending reviews" in out
    assert "until then reviews are refused" in out
    _cid, fleets = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT)
    with pytest.raises(UnknownSignerError, match="not a command key of root v1"):
        verify(world, "review", fleets)
    _cid, devices = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, root_version=1)
    assert verify(world, "review", devices) == "review"
    with pytest.raises(FleetError, match=r"roots v1\.\.v2"):
        sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, root_version=3)
    world.store.trust_update(world.fleet.root_bytes(2))
    assert reported_root(world) == {"version": 2, "review_role": True}
    with pytest.raises(ReviewRoleError):
        verify(world, "review", devices)
    _cid, now_signed = sign_command(world.fleet, "cam-01", "review", REVIEW, issued=AT, root_version=2)
    assert verify(world, "review", now_signed) == "review"
    assert edge_fleet(["key", "add", "review", "--fleet-dir", str(world.fleet.dir)]) == 0  # a second review key
    assert "creates the review role" not in capsys.readouterr().out  # v3 adds a key to a role devices know


@pytest.mark.parametrize("roles", [("review", "command"), ("shard", "review"), ("root", "command")])
def test_a_key_serves_one_role_only(world: World, roles: tuple[str, str]) -> None:
    """A root listing one key under two roles is not a root: a review key listed under command as well would
    sign configs, a root key listed as an online key would be online."""
    root = world.fleet.root()
    body = root.to_body()
    first, second = roles
    borrowed = body["roles"][first]["keyids"][0]
    body["roles"][second]["keyids"] = [*body["roles"][second]["keyids"], borrowed]
    with pytest.raises(DocumentFormatError, match=rf"key {borrowed[:16]}\.\.\. is listed under .*{second}"):
        TrustedRoot.bootstrap(sign_document(body, [key(world, f"root-{i}") for i in (1, 2)]))
