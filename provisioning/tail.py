"""`events tail` and the officer's console: the one definition of how the fleet checks a match event before
anyone sees it.

EventTail.check checks each match event as the operator console must before an officer sees it: the device is
registered and active, the signature verifies with that device's key, the event names the device whose
topic it came on (the broker's ACL bound that topic to the device's certificate), the schema is exact,
it has not expired; then it opens the sealed crops with the operator's key and drops duplicates by id. It
returns a value (VerifiedEvent or RejectedEvent): `events tail` prints it as a JSON line (`handle`), the
console stores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.events.evidence import EvidenceError, open_evidence
from edge.events.messages import (
    MATCH_EVENT,
    MatchEvent,
    MessageError,
    SealedEvidence,
    open_match_event,
    peek_message,
)
from edge.events.topics import MATCH, DeviceTopics, TopicError, all_devices, split_topic
from edge.identity import IdentityError
from edge.trust.keys import ed25519_public, key_id
from provisioning.fleet import Fleet, FleetError
from provisioning.link import FleetClient

DEDUP_MEMORY = 100_000


class UnknownDeviceError(MessageError):
    """The topic names a device the fleet has not registered (or has revoked)."""


@dataclass
class TailCounts:
    received: int = 0
    printed: int = 0
    duplicates: int = 0
    rejected: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Crop:
    """One evidence part of a verified event: the opened bytes, or why they are not at hand."""

    part: str  # "face" | "context"
    media_type: str
    data: bytes | None  # None: not opened
    reason: str | None  # why it did not open; None with no data: no operator key given (still sealed)


@dataclass(frozen=True)
class VerifiedEvent:
    """An event that passed every check, with its crops opened (or the reason they are not)."""

    event: MatchEvent
    signer: str  # key id of the device key the signature verified with
    face: Crop | None  # None: the event carries no face crop
    context: Crop | None


@dataclass(frozen=True)
class RejectedEvent:
    """A message that failed a check: the error's class, its reason, and the id it claimed (unverified)."""

    flag: str
    reason: str
    topic: str
    claimed_event_id: str | None


@dataclass
class EventTail:
    """The checks of a match event (`check`), and `events tail`'s JSON line for each (`handle`)."""

    fleet: Fleet
    operator: X25519PrivateKey | None
    clock: Callable[[], datetime]
    evidence_dir: Path | None = None
    counts: TailCounts = field(default_factory=TailCounts)
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def _device_key(self, device_id: str) -> Any:
        try:
            d = self.fleet.device(device_id)
            if d.status != "active":
                raise UnknownDeviceError(f"device {device_id!r} is {d.status}")
            return ed25519_public(d.ed25519)
        except (FleetError, IdentityError, ValueError, TypeError) as exc:  # not a device id, or a bad record
            raise UnknownDeviceError(f"device {device_id!r} is not a registered device of this fleet "
                                     f"({type(exc).__name__})") from None

    def check(self, topic: str, payload: bytes) -> VerifiedEvent | RejectedEvent | None:
        """One message in: the verified event with its crops opened, the rejection, or None for a duplicate.
        The checks, in order: a match topic, a registered and active device, the signature by that device's
        key, the event names that device, the schema, unexpired; then the crops open with the operator key."""
        self.counts.received += 1
        claimed: str | None = None
        try:
            device, suffix = split_topic(topic)
            if suffix != MATCH:
                raise TopicError(f"topic {topic!r} is not a match event topic")
            try:
                claimed = peek_message(payload, MATCH_EVENT).get("event_id")
            except MessageError:
                claimed = None
            device_key = self._device_key(device)
            event = open_match_event(payload, device_key, device, self.clock())
        except (MessageError, TopicError) as exc:
            self.counts.rejected += 1
            return RejectedEvent(type(exc).__name__, str(exc), topic, claimed if isinstance(claimed, str) else None)
        key = f"{event.device_id}/{event.event_id}"
        if key in self._seen:
            self.counts.duplicates += 1
            return None
        self._seen[key] = None
        if len(self._seen) > DEDUP_MEMORY:
            self._seen.popitem(last=False)
        self.counts.printed += 1
        return VerifiedEvent(event, key_id(device_key), self._open(event.evidence, event, "face"),
                             self._open(event.context, event, "context"))

    def forget(self, event: MatchEvent) -> None:
        """An event the consumer could not keep (left unacknowledged): when it comes again it is not a duplicate."""
        self._seen.pop(f"{event.device_id}/{event.event_id}", None)

    def _open(self, sealed: SealedEvidence | None, event: MatchEvent, part: str) -> Crop | None:
        if sealed is None:
            return None
        if self.operator is None:
            return Crop(part, sealed.media_type, None, None)
        try:
            crop = open_evidence(sealed, self.operator, event.device_id, event.event_id, part)
        except EvidenceError as exc:
            return Crop(part, sealed.media_type, None, str(exc))
        return Crop(part, sealed.media_type, crop, None)

    def handle(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """One message in; the line to print (None for a duplicate)."""
        checked = self.check(topic, payload)
        if checked is None:
            return None
        if isinstance(checked, RejectedEvent):
            return {"verified": False, "flag": checked.flag, "reason": checked.reason, "topic": checked.topic,
                    "claimed_event_id": checked.claimed_event_id}
        event = checked.event
        line: dict[str, Any] = {"verified": True, **event.to_body()}
        line.pop("type")
        line.pop("schema")
        line["evidence"] = self._evidence(checked.face, event) if checked.face else None
        line["context"] = self._evidence(checked.context, event) if checked.context else None
        return line

    def _evidence(self, crop: Crop, event: MatchEvent) -> dict[str, Any]:
        if crop.data is None:
            if crop.reason is None:
                return {"sealed": True, "media_type": crop.media_type}
            return {"opened": False, "reason": crop.reason}
        out: dict[str, Any] = {"opened": True, "media_type": crop.media_type, "bytes": len(crop.data),
                               "sha256": hashlib.sha256(crop.data).hexdigest()}
        if self.evidence_dir is not None:
            ext = {"image/jpeg": ".jpg", "image/png": ".png"}.get(crop.media_type, ".bin")
            suffix = "" if crop.part == "face" else f"-{crop.part}"
            path = self.evidence_dir / f"{event.device_id}-{event.event_id}{suffix}{ext}"
            self.evidence_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(crop.data)
            out["file"] = str(path)
        return out


def run_tail(client: FleetClient, tail: EventTail, out: TextIO, count: int | None, idle_timeout: float | None,
             devices: Sequence[str] = ()) -> TailCounts:
    """Subscribe to match events (all devices or some) and print each verified event as one JSON line."""
    lock = threading.Condition()
    inbox: list[tuple[str, bytes, int, int]] = []
    refused: list[str] = []

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            inbox.append((msg.topic, bytes(msg.payload), msg.mid, msg.qos))
            lock.notify()

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, rcs: list[ReasonCode], _p: Properties | None) -> None:
        with lock:
            refused.extend(str(rc) for rc in rcs if rc.is_failure)
            lock.notify()

    client.client.on_message = on_message
    client.client.on_subscribe = on_subscribe
    client.start()
    filters = [DeviceTopics(d).match for d in devices] or [all_devices(MATCH)]
    for f in filters:
        client.client.subscribe(f, qos=1)
    last = time.monotonic()
    try:
        while count is None or tail.counts.printed < count:
            with lock:
                if not inbox and not refused:
                    lock.wait(0.5)
                batch, inbox[:] = list(inbox), []
                if refused:
                    raise FleetError(f"the broker refused the subscription ({refused[0]}): is this operator in "
                                     "the broker's ACL? (`edge-fleet broker config`, then SIGHUP mosquitto)")
            for topic, payload, mid, qos in batch:
                line = tail.handle(topic, payload)
                if line is not None:
                    out.write(json.dumps(line, sort_keys=True) + "\n")
                    out.flush()
                client.client.ack(mid, qos)  # only now: an event is never acknowledged before it is shown
            if batch:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        client.stop()
    return tail.counts


