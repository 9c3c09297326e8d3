"""The console's MQTT side: match events, device state, audit checkpoints and command answers of every device.

One connection with the operator certificate and a persistent session (events wait at the broker while the
console is down), manual acknowledgement: a match event is acknowledged only once the sink has committed it (or
journaled its rejection), so a crash before that gets it again. Match events go through EventTail.check (the one
check, shared with `events tail`); state, checkpoints and answers are verified against the device key of the topic
they came on, and anything that does not verify is dropped and logged.

Nothing one message does stops the ingest: paho ends its loop thread on an exception from a callback, which would
end all ingest for good. The failures a malformed or unlucky message can cause (a field missing or of the wrong
type, the store or the journal failing) are caught per message, by type, counted in `health` and logged: a match
event is then left unacknowledged (offered again after a reconnect), anything else is dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.audit import AuditError
from edge.events.messages import AUDIT_CHECKPOINT, COMMAND_RESULT, STATE, MessageError, MessageFormatError, open_message
from edge.events.topics import AUDIT, MATCH, TopicError, all_devices, split_topic
from edge.events.topics import COMMAND_RESULT as RESULT_TOPIC
from edge.events.topics import STATE as STATE_TOPIC
from edge.identity import IdentityError
from edge.trust.keys import ed25519_public
from provisioning.console.store import ConsoleError
from provisioning.fleet import Fleet, FleetError
from provisioning.link import FleetClient
from provisioning.tail import EventTail, RejectedEvent, VerifiedEvent

log = logging.getLogger(__name__)
FILTERS = (all_devices(MATCH), all_devices(STATE_TOPIC), all_devices(AUDIT), all_devices(RESULT_TOPIC))
_KINDS = {STATE_TOPIC: STATE, AUDIT: AUDIT_CHECKPOINT, RESULT_TOPIC: COMMAND_RESULT}
# what one message can make the sink raise: the store or the journal failing, a body not as its schema says
MESSAGE_FAILURES = (ConsoleError, AuditError, sqlite3.Error, OSError, KeyError, TypeError, ValueError)


class IngestSink(Protocol):
    """What the ingest hands on; `alert` commits, `rejected` journals (raising one of MESSAGE_FAILURES leaves the
    event unacknowledged); `device_message` raises MessageFormatError for a body it cannot read."""

    def alert(self, verified: VerifiedEvent) -> None: ...
    def rejected(self, rejection: RejectedEvent) -> None: ...
    def device_message(self, device_id: str, kind: str, body: Mapping[str, Any]) -> None: ...


@dataclass
class IngestHealth:
    """How the subscription stands, for the fleet view and the logs."""

    subscribed: bool = False
    refused: str | None = None
    store_errors: int = 0  # messages not recorded because the store or the journal failed (or an unexpected body)
    unverified: int = 0  # state, checkpoints or answers that did not verify (dropped)
    malformed: int = 0  # verified state, checkpoints or answers whose body is not as its schema says (dropped)
    answers: int = 0  # verified command answers taken (each copy the broker delivers)
    last_error: str | None = None  # the latest message that was not recorded, and why


class Ingest:
    """Subscribes with the console's FleetClient and dispatches each message to the sink."""

    def __init__(self, client: FleetClient, fleet: Fleet, tail: EventTail, sink: IngestSink):
        self.client = client
        self.fleet = fleet
        self.tail = tail
        self.sink = sink
        self.health = IngestHealth()
        self._lock = threading.Lock()
        self._pending_subs: set[int] = set()

    def start(self) -> None:
        """Connect, then subscribe to every device's events, state, audit checkpoints and command answers."""
        c = self.client.client
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client.start()
        for f in FILTERS:
            with self._lock:  # held across: the SUBACK may come before subscribe() returns
                _rc, mid = c.subscribe(f, qos=1)
                if mid is not None:
                    self._pending_subs.add(mid)

    def stop(self) -> None:
        self.client.stop()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        with self._lock:
            failed = [str(rc) for rc in rcs if rc.is_failure]
            if failed:
                self.health.refused = (f"the broker refused the subscription ({failed[0]}): is this operator in the "
                                       "broker's ACL? (`edge-fleet broker config`, then SIGHUP mosquitto)")
                log.error("%s", self.health.refused)
            self._pending_subs.discard(mid)
            self.health.subscribed = not self._pending_subs and self.health.refused is None

    def _failed(self, what: str, exc: Exception, malformed: bool = False) -> None:
        with self._lock:
            if malformed:
                self.health.malformed += 1
            else:
                self.health.store_errors += 1
            self.health.last_error = f"{what}: {type(exc).__name__}: {exc}"[:500]
        log.error("%s not recorded: %s: %s", what, type(exc).__name__, exc)

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            device, suffix = split_topic(msg.topic)
        except TopicError as exc:
            log.warning("%s", exc)
            client.ack(msg.mid, msg.qos)
            return
        if suffix == MATCH:
            if not self._match(msg.topic, payload):
                return  # not committed: unacknowledged, the broker offers it again after a reconnect
        elif suffix in _KINDS:
            self._device_message(device, _KINDS[suffix], payload)
        client.ack(msg.mid, msg.qos)

    def _match(self, topic: str, payload: bytes) -> bool:
        checked = None
        try:
            checked = self.tail.check(topic, payload)
            if isinstance(checked, VerifiedEvent):
                self.sink.alert(checked)
            elif isinstance(checked, RejectedEvent):
                log.warning("event rejected on %s: %s: %s", topic, checked.flag, checked.reason)
                self.sink.rejected(checked)
        except MESSAGE_FAILURES as exc:
            if isinstance(checked, VerifiedEvent):
                self.tail.forget(checked.event)  # offered again after a reconnect: then it is not a duplicate
            self._failed(f"event on {topic} (left unacknowledged)", exc)
            return False
        return True

    def _device_message(self, device_id: str, kind: str, payload: bytes) -> None:
        try:
            device = self.fleet.device(device_id)
            if device.status != "active":
                raise FleetError(f"device {device_id!r} is {device.status}")
            body = open_message(payload, kind, ed25519_public(device.ed25519))
            if body.get("device_id") != device_id:
                raise MessageError(f"{kind} names device {body.get('device_id')!r} but arrived on {device_id!r}'s "
                                   "topic")
        except (FleetError, IdentityError, MessageError, ValueError, TypeError) as exc:
            with self._lock:
                self.health.unverified += 1
            log.warning("%s on %s's topic dropped: %s", kind, device_id, exc)
            return
        if kind == COMMAND_RESULT:
            with self._lock:
                self.health.answers += 1
        try:
            self.sink.device_message(device_id, kind, body)
        except MessageFormatError as exc:
            self._failed(f"{kind} from {device_id} (dropped)", exc, malformed=True)
        except MESSAGE_FAILURES as exc:
            self._failed(f"{kind} from {device_id} (dropped)", exc)
