"""Match events, outbox and commands against a real mosquitto (TLS client certificates, ACLs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from mqttworld import Broker, Peer, make_broker, wait_for
from shardworld import World, make_world

from edge.events.commands import command_body, shard_push_args
from edge.events.evidence import open_evidence
from edge.events.ids import uuid7
from edge.events.messages import (
    COMMAND_RESULT,
    STATE,
    MessageSignatureError,
    ModelRef,
    ShardRef,
    open_match_event,
    open_message,
    peek_message,
)
from edge.events.service import EventService, MatchDraft, shard_push_handler
from edge.events.topics import DeviceTopics
from edge.trust.root import sign_document
from edge.trust.times import now
from edge.watchlist.loader import AcceptedShard
from provisioning.commands import sign_command

TOPICS = DeviceTopics("cam-01")


def draft(i: int) -> MatchDraft:
    return MatchDraft(camera_id="gate-a", deployment_id="dep-test", track_id=f"t{i}", entry_id="wl-000001",
                      score=0.951, threshold=0.94, model=ModelRef("dlib_resnet_v1_int8", "ab" * 32),
                      shard=ShardRef("s-1", 1), frames_agreeing=3)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


class Node:
    """An EventService for cam-01 with a shard-push handler, as the node wires it."""

    def __init__(self, world: World, broker: Broker, **kw: object):
        self.accepted: list[AcceptedShard] = []
        self.operator = X25519PrivateKey.generate()
        handlers = {"shard-push": shard_push_handler(world.store, world.model, self.accepted.append)}
        self.service = EventService(world.tmp / "node", world.device, broker.settings("cam-01"),
                                    self.operator.public_key(), world.store.trusted_root, handlers,
                                    **kw)  # type: ignore[arg-type]

    def __enter__(self) -> EventService:
        self.service.start()
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
        for a in self.accepted:
            a.gallery.wipe()


@pytest.fixture
def console(broker: Broker) -> Iterator[Peer]:
    p = Peer(broker, "operator.console").connect().subscribe("edge/v1/+/event/#")
    yield p
    p.close()


@pytest.fixture
def admin(broker: Broker) -> Iterator[Peer]:
    p = Peer(broker, "admin.ops").connect().subscribe("edge/v1/+/cmd-result").subscribe("edge/v1/+/state")
    yield p
    p.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, to stop and restart; always stopped, even when the test fails."""
    b = make_broker(tmp_path / "own")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_events_arrive_signed_with_sealed_evidence(world: World, broker: Broker, console: Peer) -> None:
    node = Node(world, broker)
    with node as svc:
        ids = [svc.emit(draft(i), crop=b"\xff\xd8jpeg-bytes-%d" % i) for i in range(20)]
        assert wait_for(lambda: len(console.messages) >= 20)
        assert wait_for(lambda: svc.outbox.stats().pending == 0)
        stats = svc.outbox.stats()
    assert stats.published == 20 and stats.enqueued == 20 and stats.dropped == 0
    key = world.device.signing_key.public_key()
    got = [open_match_event(m.payload, key, "cam-01", now()) for m in console.messages]
    assert [e.event_id for e in got] == ids  # in order
    assert [e.seq for e in got] == list(range(1, 21))
    for i, e in enumerate(got):
        assert e.evidence is not None
        assert b"jpeg-bytes" not in console.messages[i].payload  # the broker never sees the crop
        assert open_evidence(e.evidence, node.operator, "cam-01", e.event_id) == b"\xff\xd8jpeg-bytes-%d" % i
    with pytest.raises(MessageSignatureError):
        open_match_event(console.messages[0].payload, Ed25519PrivateKey.generate().public_key(), "cam-01", now())
    assert all(m.properties.MessageExpiryInterval > 3600 for m in console.messages)  # type: ignore[union-attr]


def test_events_committed_while_broker_is_down_arrive_after(world: World, own_broker: Broker) -> None:
    own = own_broker
    sub = Peer(own, "operator.console", clean=False, session_expiry=600).connect().subscribe("edge/v1/+/event/#")
    with Node(world, own) as svc:
        assert wait_for(lambda: svc.link.health().connected)
        own.stop()
        assert wait_for(lambda: not svc.link.health().connected)
        ids = [svc.emit(draft(i), None) for i in range(10)]
        time.sleep(1.0)
        assert svc.outbox.stats().pending == 10
        own.start()
        assert wait_for(lambda: len({m.payload for m in sub.messages}) >= 10, timeout=30)
        assert wait_for(lambda: svc.outbox.stats().pending == 0)
    key = world.device.signing_key.public_key()
    got = [open_match_event(m.payload, key, "cam-01", now()).event_id for m in sub.messages]
    assert set(got) == set(ids)
    assert list(dict.fromkeys(got)) == ids  # in order (first arrival of each)
    sub.close()


def test_expired_events_are_not_delivered_late(world: World, own_broker: Broker) -> None:
    own = own_broker
    with Node(world, own, event_ttl=timedelta(seconds=2)) as svc:
        assert wait_for(lambda: svc.link.health().connected)
        own.stop()
        assert wait_for(lambda: not svc.link.health().connected)
        for i in range(5):
            svc.emit(draft(i), None)
        time.sleep(3)
        own.start()
        sub = Peer(own, "operator.console").connect().subscribe("edge/v1/+/event/#")
        assert wait_for(lambda: svc.link.health().connected, timeout=30)
        assert wait_for(lambda: svc.outbox.stats().expired == 5)
        fresh = svc.emit(draft(9), None)  # a live one still goes through: the link works, the old ones expired
        assert wait_for(lambda: len(sub.messages) == 1)
        assert svc.outbox.stats().pending == 0 and svc.outbox.stats().published == 0 + 1
    assert open_match_event(sub.messages[0].payload, world.device.signing_key.public_key(), "cam-01",
                            now()).event_id == fresh
    sub.close()


def test_broker_drops_queued_messages_past_their_expiry(own_broker: Broker) -> None:
    own = own_broker
    sub = Peer(own, "operator.console", clean=False, session_expiry=600).connect().subscribe("edge/v1/+/event/#")
    sub.close()
    from edge.events.link import publish_properties
    pub = Peer(own, "cam-01").connect()
    short = pub.client.publish(TOPICS.match, b"short-lived", qos=1, properties=publish_properties(1))
    long = pub.client.publish(TOPICS.match, b"long-lived", qos=1, properties=publish_properties(600))
    assert wait_for(lambda: {short.mid, long.mid} <= set(pub.acks))
    time.sleep(2.5)
    sub2 = Peer(own, "operator.console", clean=False, session_expiry=600).connect()
    assert wait_for(lambda: len(sub2.messages) >= 1)
    time.sleep(0.5)
    assert [m.payload for m in sub2.messages] == [b"long-lived"]
    for p in (pub, sub2):
        p.close()


def results(admin: Peer, n: int, key: Ed25519PublicKey) -> list[dict[str, object]]:
    assert wait_for(lambda: sum(m.topic.endswith("cmd-result") for m in admin.messages) >= n, timeout=20)
    return [open_message(m.payload, COMMAND_RESULT, key) for m in admin.messages if m.topic.endswith("cmd-result")]


def test_commands_signed_by_the_fleet_run_forged_ones_are_rejected(world: World, broker: Broker,
                                                                    admin: Peer) -> None:
    world.watchlist()
    shard = world.issue().read_bytes()
    with Node(world, broker) as svc:
        assert svc.link.subscribed.wait(10)
        cid, good = sign_command(world.fleet, "cam-01", "shard-push", shard_push_args(shard))
        send = admin.client.publish
        send(TOPICS.command("shard-push"), good, qos=1)
        forged_body = command_body("acme", "cam-01", "purge", {"deployment_id": "dep-test", "before": None},
                                   now(), timedelta(hours=1))
        send(TOPICS.command("purge"), sign_document(forged_body, [Ed25519PrivateKey.generate()]), qos=1)
        send(TOPICS.command("shard-push"), good, qos=1)  # replay
        send(TOPICS.command("config"), b'{"not":"a command"}', qos=1)
        _, other = sign_command(world.fleet, "cam-02", "shard-push", shard_push_args(shard))
        send(TOPICS.command("shard-push"), other, qos=1)  # for cam-02, sent on cam-01's topic
        _, wrong_verb = sign_command(world.fleet, "cam-01", "config", {"set": {"fps": 10}})
        send(TOPICS.command("purge"), wrong_verb, qos=1)
        res = results(admin, 6, world.device.signing_key.public_key())
        assert list(svc.commands.seen.load(now())) == [cid]  # only the one that passed every check
    by = [(r["command_id"], r["ok"], r["code"]) for r in res]
    assert by[0] == (cid, True, "ok") and res[0]["detail"]["version"] == 1  # type: ignore[index]
    assert by[1][1:] == (False, "UnknownSignerError")
    assert by[2] == (cid, False, "CommandReplayError")
    assert by[3] == (None, False, "CommandFormatError")
    assert by[4][1:] == (False, "CommandNotForThisDeviceError")
    assert by[5][1:] == (False, "CommandFormatError") and "arrived on the 'purge' topic" in str(res[5]["reason"])
    journal = (world.tmp / "node" / "commands" / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 6 and '"UnknownSignerError"' in journal[1]
    assert world.store.state()["current"]["version"] == 1


def test_state_is_retained_signed_and_will_says_offline(world: World, broker: Broker, admin: Peer) -> None:
    node = Node(world, broker)
    key = world.device.signing_key.public_key()

    def states(boot_id: str) -> list[dict[str, object]]:
        out = []
        for m in list(admin.messages):
            if m.topic == TOPICS.state and peek_message(m.payload, STATE)["boot_id"] == boot_id:
                out.append(open_message(m.payload, STATE, key))
        return out

    with node as svc:
        boot = svc.link.boot_id
        assert wait_for(lambda: states(boot))
        st = states(boot)[0]
        assert st["status"] == "online" and st["detail"]["outbox"]["dropped"] == 0  # type: ignore[index]
        assert svc.link.health().progressing(stall_after=10)
        # drop the connection without DISCONNECT: the broker publishes the last will
        svc.link.client._sock_close()  # type: ignore[attr-defined]
        assert wait_for(lambda: any(s["status"] == "offline" for s in states(boot)))
        assert wait_for(lambda: svc.link.health().connected, timeout=20)
        assert wait_for(lambda: states(boot)[-1]["status"] == "online")
    assert wait_for(lambda: states(boot)[-1]["status"] == "offline")  # clean stop says so too
    late = Peer(broker, "admin.ops").connect()  # retained: a newcomer learns the state at once
    late.client.subscribe(TOPICS.state, qos=1)
    assert wait_for(lambda: bool(late.messages))
    assert open_message(late.messages[0].payload, STATE, key)["status"] == "offline"
    late.close()


def test_a_failing_callback_does_not_kill_the_link(world: World, broker: Broker, console: Peer,
                                                   admin: Peer) -> None:
    node = Node(world, broker)

    def explode(_t: str, _p: bytes, _ack: object, _retained: bool) -> None:
        raise RuntimeError("handler bug")

    node.service.link._on_command = explode
    with node as svc:
        assert wait_for(lambda: svc.link.health().connected)
        admin.client.publish(TOPICS.command("purge"), b"x", qos=1)
        assert wait_for(lambda: svc.link.health().callback_errors == 1)
        svc.emit(draft(0), None)
        assert wait_for(lambda: svc.outbox.stats().pending == 0)
        h = svc.link.health()
        assert h.loop_alive and h.progressing(stall_after=10) and "handler bug" in str(h.last_error)


def test_an_event_nobody_would_receive_is_kept_an_audit_checkpoint_is_not(world: World,
                                                                          own_broker: Broker) -> None:
    with Node(world, own_broker) as svc:  # no operator console has ever subscribed on this broker
        assert wait_for(lambda: svc.link.health().connected)
        svc.emit(draft(0), None)
        svc.outbox.enqueue(TOPICS.audit, time.time() + 600, lambda _s: (uuid7(), b'{"checkpoint":1}'))
        svc.link.wake()
        assert wait_for(lambda: svc.link.health().unrouted >= 1)
        assert wait_for(lambda: svc.outbox.stats().published == 1)  # the checkpoint: accepted and retained
        assert svc.outbox.stats().pending == 1  # the match event waits for a console
        late = Peer(own_broker, "operator.console", clean=False, session_expiry=600).connect()
        late.subscribe("edge/v1/+/event/#")
        assert wait_for(lambda: len(late.messages) == 1, timeout=60)  # offered again, now delivered
        assert wait_for(lambda: svc.outbox.stats().pending == 0)
        late.close()
    admin = Peer(own_broker, "admin.ops").connect().subscribe(TOPICS.audit)
    assert wait_for(lambda: [m.payload for m in admin.messages] == [b'{"checkpoint":1}'])  # retained
    admin.close()
