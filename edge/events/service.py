"""The node's event side put together: outbox, MQTT link and command service, with `emit` for alerts.

The pipeline calls `emit` with what the tracker decided; everything after that (signing, sealing the
crop to the operator, durable commit, publishing, answering commands) happens here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.events.commands import Check, Command, CommandFailedError, CommandService, Handler
from edge.events.evidence import EvidenceError, seal_evidence
from edge.events.ids import uuid7
from edge.events.link import BrokerSettings, DeviceLink
from edge.events.messages import MatchEvent, ModelRef, SealedEvidence, ShardRef, sign_message
from edge.events.outbox import DEFAULT_MAX_ROWS, Outbox
from edge.events.topics import DeviceTopics
from edge.identity import DeviceIdentity, IdentityError
from edge.trust.root import TrustedRoot
from edge.trust.times import now
from edge.vision.manifest import ModelSpec
from edge.watchlist.loader import AcceptedShard
from edge.watchlist.shard import ShardFormatError, split_shard
from edge.watchlist.store import ShardStore, StoreError

log = logging.getLogger(__name__)
DEFAULT_EVENT_TTL = timedelta(hours=6)


@dataclass(frozen=True)
class MatchDraft:
    """What the tracker knows about an alert; the service adds id, seq, time, expiry and signature."""

    camera_id: str
    deployment_id: str
    track_id: str
    entry_id: str
    score: float
    threshold: float
    model: ModelRef
    shard: ShardRef
    frames_agreeing: int
    rule: str = "k_of_n"  # which tracker rule fired (edge.tracking: KOFN, TEMPLATE); audit record only
    margin: float | None = None  # the score's margin over the runner-up entry; None: a one-entry list
    # from the signed deployment the alert is raised under, carried in the event so that the console judges it by
    # the same figures as the node (None: not known, the event goes without them)
    reviewers_required: int | None = None
    retention_days: int | None = None


def shard_push_handler(store: ShardStore, model: ModelSpec,
                       on_accepted: Callable[[AcceptedShard], None]) -> Handler:
    """shard-push: the shard inside is verified with every shard check, then put in force. The shard already in
    force (pushed again, or the retained desired state under a new command) is checked again and left as it is:
    done, `already_in_force` true, nothing reloaded or recorded twice."""
    def handle(cmd: Command) -> Mapping[str, Any]:
        try:
            data = base64.b64decode(cmd.args["shard"], validate=True)
        except binascii.Error:
            raise CommandFailedError("args.shard is not base64") from None
        try:
            if _in_force(store, data):
                again = store.verifier(model).verify(data, now(), reload_current=True)  # still valid, still ours
                again.gallery.wipe()
                m = again.manifest
                return {"shard_id": m.shard_id, "version": m.version, "entries": m.entries,
                        "deployment_id": m.deployment.id, "already_in_force": True}
            accepted = store.load_bytes(data, model, now())
        except (StoreError, IdentityError) as exc:
            raise CommandFailedError(str(exc)) from None
        on_accepted(accepted)
        m = accepted.manifest
        return {"shard_id": m.shard_id, "version": m.version, "entries": m.entries, "deployment_id": m.deployment.id,
                "already_in_force": False}
    return handle


def _in_force(store: ShardStore, data: bytes) -> bool:
    """Whether `data` carries the signed manifest of the shard the node accepted last."""
    current = store.state().get("current")
    try:
        envelope, _ = split_shard(data)
    except ShardFormatError:
        return False  # the full check says what is wrong with it
    return isinstance(current, dict) and current.get("manifest_sha256") == hashlib.sha256(envelope).hexdigest()


@dataclass(frozen=True)
class HeldEvent:
    """A signed match event committed but not yet sendable (`seq` None: no outbox, printed only)."""

    event_id: str
    seq: int | None
    payload: bytes


class EventService:
    """One device's outgoing events and incoming commands."""

    def __init__(self, state_dir: Path, identity: DeviceIdentity, settings: BrokerSettings,
                 operator_key: X25519PublicKey | None, root: Callable[[], TrustedRoot],
                 handlers: Mapping[str, Handler] | None = None, event_ttl: timedelta = DEFAULT_EVENT_TTL,
                 max_rows: int = DEFAULT_MAX_ROWS, durable: bool = True,
                 state_detail: Callable[[], dict[str, Any]] | None = None, state_every: float = 30.0,
                 record: Callable[[Mapping[str, Any]], None] | None = None,
                 checks: Mapping[str, Check] | None = None):
        """`record` receives each command's outcome (the node's audit log); without it they are journaled.
        `checks`: per verb, what must hold before a command is taken (CommandService)."""
        self.identity = identity
        self.signer = EventSigner(identity, operator_key, event_ttl)
        self.outbox = Outbox(state_dir / "outbox" / "outbox.db", identity.storage_key("outbox"), max_rows, durable)
        topics = DeviceTopics(identity.device_id)
        self.commands = CommandService(identity, state_dir, root, handlers or {}, self.outbox,
                                       topics.command_result, now, notify=lambda: self.link.wake(), record=record,
                                       checks=checks)
        def detail() -> dict[str, Any]:
            d = {"commands": {"dropped": self.commands.dropped}}
            return {**d, **(state_detail() if state_detail else {})}

        self.link = DeviceLink(settings, identity, self.outbox, on_command=self.commands.submit,
                               state_detail=detail, state_every=state_every)

    def start(self) -> None:
        self.commands.start()
        self.link.start()

    def drain(self, timeout: float) -> bool:
        """Wait until every sendable row is acknowledged or `timeout` passes; True if none is left. Rows
        left (broker away, no subscriber yet, held) stay in the outbox and go out after the next start."""
        deadline = time.monotonic() + timeout
        self.link.wake()
        while self.outbox.sendable() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.outbox.sendable() == 0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking commands, say offline and disconnect (each wait at most `timeout`), close the outbox."""
        self.commands.stop()
        self.link.stop(timeout)
        self.outbox.close()

    def hold(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> HeldEvent:
        """Sign and commit one match event, held: durable in the outbox but not sent until `release`."""
        event_id, expires, build = self.signer.prepare(draft, crop, media_type, context)
        signed: list[bytes] = []

        def keep(seq: int) -> tuple[str, bytes]:
            eid, payload = build(seq)
            signed.append(payload)
            return eid, payload

        seq = self.outbox.enqueue(self.link.topics.match, expires.timestamp(), keep, hold=True)
        return HeldEvent(event_id, seq, signed[-1])

    def release(self, held: HeldEvent) -> None:
        """The held event may go now (the node has it on its record)."""
        if held.seq is not None:
            self.outbox.release(held.seq)
            self.link.wake()

    def emit(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> str:
        """Sign, commit and release one match event at once (a service that keeps no record of its own);
        returns its event id once it is durable in the outbox."""
        held = self.hold(draft, crop, media_type, context)
        self.release(held)
        return held.event_id


class EventSigner:
    """Builds signed match events: id, time, expiry, evidence sealed to the operator, device signature."""

    def __init__(self, identity: DeviceIdentity, operator_key: X25519PublicKey | None,
                 event_ttl: timedelta = DEFAULT_EVENT_TTL):
        self.identity = identity
        self.operator_key = operator_key
        self.event_ttl = event_ttl

    def prepare(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
                context: bytes | None = None) -> tuple[str, datetime, Callable[[int], tuple[str, bytes]]]:
        """(event id, expiry, build(seq) -> (event id, signed payload)); the seq comes from whoever commits it."""
        t = now()
        expires = t + self.event_ttl
        event_id = uuid7()

        def seal(data: bytes | None, part: str) -> SealedEvidence | None:
            if data is None:
                return None
            try:
                if self.operator_key is None:
                    raise EvidenceError(f"event {event_id}: no operator key configured")
                return seal_evidence(data, media_type, self.operator_key, self.identity.device_id, event_id, part)
            except EvidenceError as exc:  # the alert still goes out, without that crop; the reason is logged
                log.warning("event %s is sent without its %s crop: %s", event_id, part, exc)
                return None

        evidence, sealed_context = seal(crop, "face"), seal(context, "context")

        def build(seq: int) -> tuple[str, bytes]:
            event = MatchEvent(event_id=event_id, seq=seq, device_id=self.identity.device_id,
                               camera_id=draft.camera_id, deployment_id=draft.deployment_id, ts=t, expires=expires,
                               track_id=draft.track_id, entry_id=draft.entry_id, score=draft.score,
                               threshold=draft.threshold, model=draft.model, shard=draft.shard,
                               frames_agreeing=draft.frames_agreeing, evidence=evidence,
                               context=sealed_context, margin=draft.margin,
                               reviewers_required=draft.reviewers_required, retention_days=draft.retention_days)
            return event_id, sign_message(event.to_body(), self.identity.signing_key)

        return event_id, expires, build
