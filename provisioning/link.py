"""The fleet tools' MQTT connection (FleetClient) and signed command publishing (`shard push`, reviews).

FleetClient is the network side only (a paho client with a persistent session over TLS); what arrives is
handed to the caller's callbacks, as paho keeps its loop apart from the application.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.events.commands import RETAINED_VERBS
from edge.events.link import (
    NO_MATCHING_SUBSCRIBERS,
    BrokerSettings,
    connect_properties,
    publish_properties,
    tls_client,
)
from edge.events.messages import (
    COMMAND_RESULT,
    MessageError,
    MessageFormatError,
    open_message,
)
from edge.events.topics import DeviceTopics, TopicError, split_topic
from edge.identity import IdentityError
from edge.trust.keys import ed25519_public
from provisioning.fleet import Fleet, FleetError


class FleetClient:
    """A fleet tool's MQTT connection (admin or operator certificate), persistent session."""

    def __init__(self, settings: BrokerSettings, client_id: str, session_expiry: int = 24 * 3600):
        self.settings = settings
        self.client = tls_client(client_id, settings, manual_ack=True)
        self.connected = threading.Event()
        self.error: str | None = None
        self.session_expiry = session_expiry
        self.client.on_connect = self._on_connect

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode,
                    _p: Properties | None) -> None:
        if rc.is_failure:
            self.error = f"broker refused the connection: {rc}"
        else:
            self.connected.set()

    def start(self, timeout: float = 10.0) -> None:
        """Connect and run paho's loop thread (nothing to do when already connected)."""
        if self.connected.is_set():
            return
        try:
            self.client.connect(self.settings.host, self.settings.port, keepalive=30, clean_start=False,
                                properties=connect_properties(self.session_expiry))
        except OSError as exc:
            raise FleetError(f"broker {self.settings.host}:{self.settings.port}: cannot connect ({exc})") from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise FleetError(f"broker {self.settings.host}:{self.settings.port}: "
                             f"{self.error or 'no answer to CONNECT'}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()


NOT_QUEUED = "not-queued"  # PushResult.code: the broker holds the command for nobody (or did not say it took it)
REFUSED_BY_BROKER = "refused-by-broker"
NO_ANSWER = "no-answer"


@dataclass(frozen=True)
class CommandAnswer:
    """A device's verified answer to a command, its fields checked (edge/events/schemas/command-result.json)."""

    device_id: str
    command_id: str | None
    verb: str | None
    ok: bool
    code: str
    reason: str
    detail: dict[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CommandAnswer:
        """The answer in a verified cmd-result body; MessageFormatError names the field that is not as the
        schema says (a device's signature does not make its fields well formed)."""
        for name, kinds in (("device_id", (str,)), ("command_id", (str, type(None))), ("verb", (str, type(None))),
                            ("ok", (bool,)), ("code", (str,)), ("reason", (str,)), ("detail", (dict,))):
            if not isinstance(body.get(name), kinds):
                raise MessageFormatError(f"command result: {name}: missing or of the wrong type")
        if body["ok"] != (body["code"] == "ok"):
            raise MessageFormatError(f"command result: code {str(body['code'])[:64]!r} with ok {body['ok']}")
        return cls(body["device_id"], body["command_id"], body["verb"], body["ok"], body["code"], body["reason"],
                   dict(body["detail"]))


@dataclass(frozen=True)
class PushResult:
    device_id: str
    command_id: str
    answered: bool
    ok: bool
    code: str
    reason: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """What the broker's PUBACK says became of one command (reason code None: no PUBACK yet)."""

    device_id: str
    verb: str
    retained: bool
    code: int | None
    lifetime: timedelta

    @property
    def refused(self) -> bool:
        return self.code is not None and self.code >= 0x80

    @property
    def reaches_nobody(self) -> bool:
        """0x10 on a one-shot command: no session subscribes to the topic, so the broker dropped it."""
        return self.code == NO_MATCHING_SUBSCRIBERS and not self.retained

    @property
    def held(self) -> bool:
        """The broker keeps it for the device: queued in its session, and/or retained as its desired state."""
        return self.code is not None and self.code < 0x80 and not self.reaches_nobody

    def _hours(self) -> str:
        return f"{self.lifetime.total_seconds() / 3600:g} h"

    def where(self) -> str:
        """Where the command waits, in words (only for a held command)."""
        if not self.retained:
            return f"the command waits in {self.device_id}'s session until it expires ({self._hours()})"
        kept = f"the broker keeps it as {self.device_id}'s desired shard (retained) until it expires ({self._hours()})"
        if self.code == NO_MATCHING_SUBSCRIBERS:
            return (f"{self.device_id} has no session at the broker yet (never connected, or its session expired): "
                    f"{kept}, and the device loads it when it connects")
        return f"{kept}; if the device is away it is queued in its session too"

    def taken(self) -> str:
        """The progress line once the broker has answered."""
        if self.reaches_nobody:
            return f"NOT queued: {self.not_queued()}"
        return f"taken by the broker: {self.where()}"

    def not_queued(self) -> str:
        if self.code is None:
            return ("the broker did not acknowledge the command, so it may not have taken it: check the broker "
                    "and run the command again")
        return (f"the broker has no session for {self.device_id} (it has never connected, or its session expired), "
                "so nobody will get this command. Start the device so that it connects once (that creates its "
                "session), or wait until it is online, then run the command again")


def publish_commands(client: FleetClient, fleet: Fleet, commands: dict[str, tuple[str, str, bytes]],
                     wait: float, lifetime: timedelta, progress: TextIO | None = None,
                     keep_open: bool = False, subscribed: bool = False) -> list[PushResult]:
    """Publish one signed command per device {device: (verb, command_id, envelope)} and collect the
    devices' signed answers on cmd-result for up to `wait` seconds. Verbs in RETAINED_VERBS are published
    retained: the device's desired state, which the broker keeps even for a device that has no session yet.
    With `progress`, a line says what the broker did with each command: queued for a device that is away,
    kept as its desired state, or taken for nobody (0x10 on a one-shot command: no session exists).
    `keep_open`: the client may be running already (the console's one connection) and is left running; the
    answers are taken by topic callbacks, so the client's own on_message keeps every other message.
    `subscribed`: the client subscribes to the devices' cmd-result already (the console's ingest), so no
    subscription is added (a second one would deliver every answer twice); otherwise the subscriptions made here
    are ended before returning, so a persistent session does not keep them. One call at a time per client (it
    sets on_publish)."""
    lock = threading.Condition()
    answers: dict[str, CommandAnswer] = {}
    broker_said: dict[int, int] = {}
    wanted = {cid: dev for dev, (_v, cid, _e) in commands.items()}

    others = client.client.on_message if keep_open else None  # the running client's own handler

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device, _ = split_topic(msg.topic)
            answer: CommandAnswer | None = CommandAnswer.from_body(open_message(
                bytes(msg.payload), COMMAND_RESULT, ed25519_public(fleet.device(device).ed25519)))
        except (MessageError, TopicError, FleetError, IdentityError, ValueError, TypeError):
            answer = None  # not an answer we can trust or read; the device's own answer may still come
        if answer is not None and answer.command_id in wanted and wanted[answer.command_id] == device:
            c.ack(msg.mid, msg.qos)
            with lock:
                answers.setdefault(answer.command_id, answer)  # the first answer; a later replay answer is not it
                lock.notify()
        elif others is not None:
            others(c, u, msg)  # not ours (say, a late answer to an earlier command): it takes and acks it
        else:
            c.ack(msg.mid, msg.qos)

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        with lock:
            broker_said[mid] = rc.value
            lock.notify()

    client.client.on_publish = on_publish
    for dev in commands:
        client.client.message_callback_add(DeviceTopics(dev).command_result, on_message)
    client.start()
    if not subscribed:
        for dev in commands:
            client.client.subscribe(DeviceTopics(dev).command_result, qos=1)
    mids: dict[str, int] = {}
    for dev, (verb, _cid, envelope) in commands.items():
        info = client.client.publish(DeviceTopics(dev).command(verb), envelope, qos=1, retain=verb in RETAINED_VERBS,
                                     properties=publish_properties(int(lifetime.total_seconds())))
        mids[dev] = info.mid
    deadline = time.monotonic() + wait

    def delivery(dev: str) -> Delivery:
        verb = commands[dev][0]
        return Delivery(dev, verb, verb in RETAINED_VERBS, broker_said.get(mids[dev]), lifetime)

    def settled() -> bool:
        return all(cid in answers or (delivery(dev).code is not None and not delivery(dev).held)
                   for dev, (_v, cid, _e) in commands.items())

    told: set[str] = set()

    def tell() -> None:
        for dev, (verb, cid, _e) in commands.items():
            d = delivery(dev)
            if progress is not None and dev not in told and d.code is not None and not d.refused:
                told.add(dev)
                wait_note = f"; waiting up to {wait:.0f} s for the device's answer" if d.held else ""
                progress.write(f"{verb} {cid} for {dev}: {d.taken()}{wait_note}\n")
                progress.flush()

    with lock:
        while not settled() and time.monotonic() < deadline:
            lock.wait(max(0.05, deadline - time.monotonic()))
            tell()
    for dev in commands:
        client.client.message_callback_remove(DeviceTopics(dev).command_result)
        if not subscribed:
            client.client.unsubscribe(DeviceTopics(dev).command_result)
    if not keep_open:
        client.stop()
    out = []
    for dev, (_verb, cid, _e) in commands.items():
        a = answers.get(cid)
        d = delivery(dev)
        if a is not None:
            out.append(PushResult(dev, cid, True, a.ok, a.code, a.reason, a.detail))
        elif d.refused:
            out.append(PushResult(dev, cid, False, False, REFUSED_BY_BROKER,
                                  f"the broker refused the command (reason 0x{d.code:02x}): is this admin in the "
                                  "broker's ACL? (`edge-fleet broker config`, then SIGHUP mosquitto)", {}))
        elif not d.held:
            out.append(PushResult(dev, cid, False, False, NOT_QUEUED, d.not_queued(), {}))
        else:
            out.append(PushResult(dev, cid, False, False, NO_ANSWER,
                                  f"no answer within {wait:.0f} s; {d.where()}", {}))
    return out
