"""The broker stops one device from speaking for another (real mosquitto, TLS client certificates)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from mqttworld import Broker, Peer, make_broker, wait_for

from edge.events.commands import REVIEW_VERB
from edge.events.link import NO_MATCHING_SUBSCRIBERS
from edge.events.topics import VERBS, DeviceTopics

NOT_AUTHORIZED = 0x87


def test_device_cannot_publish_on_another_devices_topic(broker: Broker) -> None:
    watcher = Peer(broker, "admin.ops").connect().subscribe("edge/v1/+/state")
    cam2 = Peer(broker, "cam-02").connect()
    info = cam2.client.publish(DeviceTopics("cam-01").match, b"forged", qos=1)
    own = cam2.client.publish(DeviceTopics("cam-02").state, b"mine", qos=1)
    other = cam2.client.publish(DeviceTopics("cam-01").state, b"theirs", qos=1)
    assert wait_for(lambda: {info.mid, own.mid, other.mid} <= set(cam2.acks))
    assert cam2.acks[info.mid] == NOT_AUTHORIZED
    assert cam2.acks[other.mid] == NOT_AUTHORIZED
    assert cam2.acks[own.mid] < 0x80
    assert wait_for(lambda: any(m.payload == b"mine" for m in watcher.messages))
    time.sleep(0.3)
    assert all(m.payload != b"theirs" for m in watcher.messages)
    cam2.close()
    watcher.close()


def test_device_cannot_read_another_devices_commands(broker: Broker) -> None:
    cam1 = Peer(broker, "cam-01").connect()
    cam2 = Peer(broker, "cam-02").connect()
    cam1.client.subscribe(DeviceTopics("cam-01").command_filter, qos=1)
    cam2.client.subscribe(DeviceTopics("cam-01").command_filter, qos=1)
    cam2.client.subscribe("edge/v1/+/cmd/#", qos=1)
    assert wait_for(lambda: len(cam1.suback) == 1 and len(cam2.suback) == 2)
    admin = Peer(broker, "admin.ops").connect()
    info = admin.client.publish(DeviceTopics("cam-01").command("purge"), b"cmd-for-cam-01", qos=1)
    assert wait_for(lambda: info.mid in admin.acks) and admin.acks[info.mid] < 0x80
    assert wait_for(lambda: any(m.payload == b"cmd-for-cam-01" for m in cam1.messages))
    time.sleep(0.5)
    assert cam2.messages == []
    for p in (cam1, cam2, admin):
        p.close()


def test_devices_cannot_command_and_operators_cannot_command(broker: Broker) -> None:
    cam2 = Peer(broker, "cam-02").connect()
    op = Peer(broker, "operator.console").connect()
    a = cam2.client.publish(DeviceTopics("cam-01").command("shard-push"), b"x", qos=1)
    b = op.client.publish(DeviceTopics("cam-01").command("shard-push"), b"x", qos=1)
    assert wait_for(lambda: a.mid in cam2.acks and b.mid in op.acks)
    assert cam2.acks[a.mid] == NOT_AUTHORIZED and op.acks[b.mid] == NOT_AUTHORIZED
    cam2.close()
    op.close()


def test_operators_write_the_review_verbs_topic_only(broker: Broker) -> None:
    """The operator's one write is the topic of the verb the node takes reviews on (REVIEW_VERB): a review
    published there is taken by the broker; every other verb's command topic is refused."""
    op = Peer(broker, "operator.console").connect()
    topics = DeviceTopics("cam-01")
    review = op.client.publish(topics.command(REVIEW_VERB), b"x", qos=1)
    others = [op.client.publish(topics.command(v), b"x", qos=1) for v in VERBS if v != REVIEW_VERB]
    assert wait_for(lambda: all(m.mid in op.acks for m in [review, *others]))
    assert op.acks[review.mid] != NOT_AUTHORIZED
    assert [op.acks[m.mid] for m in others] == [NOT_AUTHORIZED] * len(others)
    op.close()


def accepted(client: mqtt.Client, port: int) -> bool:
    """Whether the broker lets this client in: a successful CONNACK within two seconds."""
    ok: list[bool] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: ok.append(not rc.is_failure)
    try:
        client.connect("127.0.0.1", port, keepalive=5)
    except OSError:  # ssl.SSLError included: refused during the handshake
        return False
    client.loop_start()
    wait_for(lambda: bool(ok), timeout=2.0)
    client.loop_stop()
    return any(ok)


def bare_client(cn: str) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5)


def test_a_good_certificate_is_accepted(broker: Broker) -> None:
    c = bare_client("cam-01")
    ca, crt, key = broker.creds("cam-01")
    c.tls_set(ca_certs=str(ca), certfile=str(crt), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    assert accepted(c, broker.port)
    c.disconnect()


def test_anonymous_client_is_refused(broker: Broker) -> None:
    c = bare_client("cam-01")
    c.tls_set_context(ssl.create_default_context(cafile=str(broker.creds("cam-01")[0])))  # no client cert
    assert not accepted(c, broker.port)


def test_plaintext_client_is_refused(broker: Broker) -> None:
    assert not accepted(bare_client("cam-01"), broker.port)


def test_wrong_ca_client_is_refused(broker: Broker, tmp_path: Path) -> None:
    rogue = make_broker(tmp_path / "rogue", devices=("cam-01",), admins=(), operators=())
    _, crt, key = rogue.creds("cam-01")
    c = bare_client("cam-01")
    c.tls_set(ca_certs=str(broker.creds("cam-01")[0]), certfile=str(crt), keyfile=str(key),
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    assert not accepted(c, broker.port)


def test_certificate_cannot_take_over_another_client_id(broker: Broker) -> None:
    cam1 = Peer(broker, "cam-01").connect()
    assert cam1.connack is not None and cam1.connack.value == 0
    # cam-02's certificate asks for client id "cam-01": the broker uses the CN instead, so cam-01 stays on
    intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-01", protocol=mqtt.MQTTv5)
    ca, crt, key = broker.creds("cam-02")
    intruder.tls_set(ca_certs=str(ca), certfile=str(crt), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED,
                     tls_version=ssl.PROTOCOL_TLS_CLIENT)
    intruder.connect("127.0.0.1", broker.port, keepalive=5)
    intruder.loop_start()
    time.sleep(1.0)
    assert cam1.disconnects == [], "cam-01 was kicked off by another certificate"
    info = cam1.client.publish(DeviceTopics("cam-01").state, b"still here", qos=1)
    assert wait_for(lambda: info.mid in cam1.acks) and cam1.acks[info.mid] < 0x80
    intruder.disconnect()
    intruder.loop_stop()
    cam1.close()


def test_only_admins_set_a_devices_retained_desired_state_and_only_that_device_reads_it(tmp_path: Path) -> None:
    """The desired shard is the signed shard-push command kept retained on the device's command topic: an admin
    may set it (even before the device has ever connected), the device reads it when it subscribes, and
    neither the device itself, another device nor an operator can read, replace or clear it."""
    broker = make_broker(tmp_path / "b")
    broker.start()
    topic = DeviceTopics("cam-01").command("shard-push")
    peers: list[Peer] = []
    try:
        admin = Peer(broker, "admin.ops").connect()
        peers.append(admin)
        info = admin.client.publish(topic, b"desired-v1", qos=1, retain=True)
        assert wait_for(lambda: info.mid in admin.acks)
        assert admin.acks[info.mid] == NO_MATCHING_SUBSCRIBERS  # nobody subscribes yet: retained all the same
        for cn in ("cam-01", "cam-02", "operator.console"):
            p = Peer(broker, cn).connect()
            peers.append(p)
            attempts = [p.client.publish(topic, b"", qos=1, retain=True),  # clear it
                        p.client.publish(topic, b"forged", qos=1, retain=True)]  # replace it
            assert wait_for(lambda p=p, attempts=attempts: all(a.mid in p.acks for a in attempts))
            assert [p.acks[a.mid] for a in attempts] == [NOT_AUTHORIZED, NOT_AUTHORIZED], cn
        cam2 = Peer(broker, "cam-02").connect().subscribe(DeviceTopics("cam-01").command_filter)
        op = Peer(broker, "operator.console").connect().subscribe(DeviceTopics("cam-01").command_filter)
        peers += [cam2, op]
        cam1 = Peer(broker, "cam-01").connect().subscribe(DeviceTopics("cam-01").command_filter)
        peers.append(cam1)
        assert wait_for(lambda: bool(cam1.messages))
        (got,) = cam1.messages
        assert (got.topic, got.payload, got.retain) == (topic, b"desired-v1", True)
        # mosquitto grants the subscription and filters on delivery: a round trip on each connection after
        # its SUBACK (the broker answers in order) shows that nothing was delivered to them before it
        for p in (cam2, op):
            barrier = p.client.publish(DeviceTopics("cam-02").state, b"x", qos=1)  # allowed or not: answered
            assert wait_for(lambda p=p, barrier=barrier: barrier.mid in p.acks)
        assert cam2.messages == [] and op.messages == []
    finally:
        for p in peers:
            p.close()
        broker.stop()
