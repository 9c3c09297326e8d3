"""An alert's way out of the node: on the node's own record first, then sent.

Order for each alert (`AuditedSink.emit`):
  1. the signed event is committed to the outbox *held* (durable, not sendable);
  2. its crops are stored in the evidence vault;
  3. the audit log gets its `alert` record (fsynced);
  4. the outbox row is released and the publisher may send it.
A kill anywhere in between leaves a held row; at the next start, before the link publishes anything,
`recover_held_alerts` puts each such event on the record (from the signed event's own fields) and releases
it. So no alert reaches the broker unless the node's record of it is durable first.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.audit import AuditLog
from edge.deployment import Effectiveness
from edge.events.messages import MATCH_EVENT, MatchEvent, MessageError, ShardRef, open_message
from edge.events.outbox import Outbox
from edge.events.service import EventService, EventSigner, HeldEvent, MatchDraft
from edge.trust.canonical import canonical
from edge.vault import DEFAULT_RETENTION_DAYS, EvidenceVault, VaultError

log = logging.getLogger(__name__)
MAX_IDS_RECORDED = 20  # an audit record stays small; the count is always there


class AlertFacts(Protocol):
    """What an alert record says, shared by the tracker's draft and the signed event."""

    @property
    def camera_id(self) -> str: ...
    @property
    def deployment_id(self) -> str: ...
    @property
    def track_id(self) -> str: ...
    @property
    def entry_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def shard(self) -> ShardRef: ...
    @property
    def frames_agreeing(self) -> int: ...
    @property
    def reviewers_required(self) -> int | None: ...


def alert_record(event_id: str, facts: AlertFacts, evidence_kept: bool, recovered: bool = False,
                 rule: str | None = None) -> dict[str, Any]:
    """The audit `alert` record (ids and score only, never an image). `recovered`: written at start for an
    event a crash left committed but unrecorded. `rule`: which tracker rule fired (the signed event does not
    carry it, so a recovered record has none). `reviewers_required`: what the alert's deployment required when
    it was raised, the figure its review is judged by (edge.reviews); absent only when not known."""
    record: dict[str, Any] = {
        "evidence_kept": evidence_kept, "event_id": event_id, "entry_id": facts.entry_id,
        "score": round(facts.score, 4), "threshold": facts.threshold, "track_id": facts.track_id,
        "camera_id": facts.camera_id, "deployment_id": facts.deployment_id,
        "shard": {"id": facts.shard.id, "version": facts.shard.version}, "frames_agreeing": facts.frames_agreeing}
    if facts.reviewers_required is not None:
        record["reviewers_required"] = facts.reviewers_required
    if rule is not None:
        record["rule"] = rule
    if recovered:
        record["recovered"] = True
    return record


class HoldingSink(Protocol):
    """Where signed events go in two steps: committed held, then released (EventService, PrintSink)."""

    def hold(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> HeldEvent: ...

    def release(self, held: HeldEvent) -> None: ...


class AuditedSink:
    """The pipeline's sink: each alert is committed held, its crops kept in the evidence vault (until review
    or retention), its `alert` record written, and only then released to leave the node."""

    def __init__(self, sink: HoldingSink, audit: AuditLog, vault: EvidenceVault | None = None,
                 retention_days: Callable[[str], int] = lambda _dep: DEFAULT_RETENTION_DAYS):
        """`retention_days`: for a draft that does not carry its deployment's figure."""
        self.sink = sink
        self.audit = audit
        self.vault = vault
        self.retention_days = retention_days

    def emit(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> str:
        held = self.sink.hold(draft, crop, media_type, context)
        kept = False
        if self.vault is not None and (crop is not None or context is not None):
            retention = (self.retention_days(draft.deployment_id) if draft.retention_days is None
                         else draft.retention_days)  # the event says the same figure to the console
            try:
                self.vault.store(held.event_id, draft.deployment_id, retention, crop, context, media_type)
                kept = True
            except VaultError as exc:  # the event carries its sealed crops; only the node's copy is missing
                log.error("evidence of event %s was not kept: %s", held.event_id, exc)
        self.audit.append("alert", alert_record(held.event_id, draft, kept, rule=draft.rule))
        self.sink.release(held)
        return held.event_id


def compact(payload: bytes) -> dict[str, Any]:
    """A signed event for a terminal: the sealed crops shown by size and recipient instead of ~20 kB of base64."""
    doc: dict[str, Any] = json.loads(payload)
    for part in ("evidence", "context"):
        ev = doc.get(part)
        if isinstance(ev, dict):
            doc[part] = {"sealed_to": ev["recipient"][:16], "media_type": ev["media_type"],
                         "base64_chars": len(ev["ciphertext"])}
    return doc


class PrintSink:
    """Alerts as signed match events, one JSON line each, printed once released (a node without MQTT, and
    the demo); with `then`, each event is also committed to that service's outbox and published."""

    def __init__(self, signer: EventSigner, out: TextIO, then: EventService | None = None,
                 show: Callable[[bytes], dict[str, Any]] = compact):
        self.signer = signer
        self.out = out
        self.then = then
        self.show = show
        self._seq = 0
        self._lock = threading.Lock()

    def hold(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> HeldEvent:
        if self.then is not None:  # the outbox assigns the seq; what is printed is exactly what it will send
            return self.then.hold(draft, crop, media_type, context)
        with self._lock:
            self._seq += 1
            event_id, _expires, build = self.signer.prepare(draft, crop, media_type, context)
            return HeldEvent(event_id, None, build(self._seq)[1])

    def release(self, held: HeldEvent) -> None:
        if self.then is not None:
            self.then.release(held)
        with self._lock:
            self.out.write(canonical(self.show(held.payload)).decode() + "\n")
            self.out.flush()


@dataclass(frozen=True)
class Recovery:
    """What `recover_held_alerts` found: events already on the record (released), events recorded now
    (released), and rows that were not a readable event of this device (withdrawn, never sent)."""

    released: tuple[str, ...]
    recorded: tuple[str, ...]
    withdrawn: tuple[str, ...]


def recover_held_alerts(outbox: Outbox, audit: AuditLog, effectiveness: Effectiveness, match_topic: str,
                        device_key: Ed25519PublicKey, kept: Collection[str]) -> Recovery:
    """At start, before the link publishes: every held row a crash left. An event with its `alert` record
    is released; one without gets an `alert` record marked recovered, made from the signed event's own
    fields (`evidence_kept` says whether the vault holds its crops, `kept`), and is released. A held row
    that is not a readable match event signed by this device is withdrawn, and that is recorded."""
    released: list[str] = []
    recorded: list[str] = []
    withdrawn: list[str] = []
    for item in outbox.held():
        if item.topic == match_topic and not effectiveness.alerted(item.event_id):
            try:
                event = MatchEvent.from_body(open_message(item.payload, MATCH_EVENT, device_key))
            except MessageError as exc:
                log.error("held outbox row %d is not a readable event (%s); withdrawn", item.seq, exc)
                outbox.withdraw(item.seq)
                withdrawn.append(item.event_id)
                continue
            audit.append("alert", alert_record(event.event_id, event, event.event_id in kept, recovered=True))
            effectiveness.alert(event.deployment_id, event.event_id, event.reviewers_required)
            recorded.append(event.event_id)
        else:
            released.append(item.event_id)
        outbox.release(item.seq)
    if withdrawn:
        audit.append("recovered", {"reason": "held outbox rows that were not a readable match event of this device "
                                             "were withdrawn unsent",
                                   "event_ids": withdrawn[:MAX_IDS_RECORDED], "count": len(withdrawn)})
    if recorded:
        log.warning("recorded %d alert(s) the node had committed but not recorded before it stopped", len(recorded))
    return Recovery(tuple(released), tuple(recorded), tuple(withdrawn))
