"""The Console: what the web layer calls. It puts together the ingest (MQTT), the store, the watch-list
references, the decision rules with the review sender, the fleet view, the accounts and the console's journal.

Every method is thread-safe: the web layer calls from its worker threads while the paho loop thread ingests.
Decisions and review results are journaled here; a view is journaled when the web layer calls `viewed`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.events.link import BrokerSettings
from edge.events.messages import COMMAND_RESULT
from edge.trust.times import now
from edge.vault import DEFAULT_RETENTION_DAYS
from edge.watchlist.shard import DEFAULT_REVIEWERS_REQUIRED
from provisioning.console.accounts import Account, AccountStore
from provisioning.console.fleetview import DeviceView, FleetView
from provisioning.console.ingest import Ingest
from provisioning.console.journal import ConsoleJournal
from provisioning.console.references import WatchEntry, WatchListReadError, WatchReferences
from provisioning.console.reviews import (
    ANSWER_WAIT,
    AlreadyDecidedError,
    DuplicateReviewerError,
    ReviewCommand,
    ReviewerRoleError,
    ReviewSender,
    answer_text,
    check_decision,
    sign_review,
    standing,
)
from provisioning.console.store import (
    DISMISSED,
    AlertStore,
    ConsoleError,
    Destroyed,
    EvidenceGoneError,
    StoredAlert,
    UnknownAlertError,
)
from provisioning.deployments import DeploymentRecordError, UnknownDeploymentError, read_deployment_record
from provisioning.fleet import Fleet, FleetError, passphrase
from provisioning.link import FleetClient
from provisioning.operators import operator_key as read_operator_key
from provisioning.reports import AuditSource
from provisioning.tail import EventTail, RejectedEvent, VerifiedEvent

__all__ = ["Alert", "AlreadyDecidedError", "Console", "ConsoleError", "Decision", "DeviceView",
           "DuplicateReviewerError", "EvidenceGoneError", "ReviewerRoleError", "UnknownAlertError", "WatchEntry",
           "open_console"]

log = logging.getLogger(__name__)
ACCOUNTS_FILE = "accounts.db"
PARTS = ("face", "context")
MAX_NOTE = 2000  # characters of a decision's note
PURGE_EVERY = 60.0  # seconds between retention purges while the console runs


@dataclass(frozen=True)
class Decision:
    reviewer: str
    outcome: str
    note: str
    at: datetime


@dataclass(frozen=True)
class Alert:
    event_id: str
    device_id: str
    camera_id: str
    deployment_id: str
    entry_id: str
    track_id: str
    score: float
    threshold: float
    margin: float | None
    frames_agreeing: int
    event_time: datetime
    received: datetime
    evidence_until: datetime  # when retention deletes it
    signature: str  # "verified by <device> key <keyid16>" (only verified events are alerts)
    has_face: bool
    has_context: bool
    evidence_note: str | None  # why a crop is absent, unopened or destroyed
    entry: WatchEntry | None  # None: the reference is not in this fleet's watch lists
    reviewers_required: int
    decisions: tuple[Decision, ...]  # so far, in order
    outcome: str | None  # "confirmed" | "dismissed" once it stands, else None
    node_answer: str | None  # what the node said to the review command ("recorded", or the refusal)


@dataclass(frozen=True)
class DeploymentTerms:
    """What a deployment's alerts are judged under (the fleet's record, or the defaults when it has none)."""

    retention_days: int
    reviewers_required: int
    watchlist: str | None


class Console:
    """The officer's console behind the web pages."""

    def __init__(self, fleet: Fleet, console_dir: Path, client: FleetClient, operator: X25519PrivateKey | None,
                 review_key: Ed25519PrivateKey | None, clock: Callable[[], datetime] = now,
                 audit_logs: Sequence[AuditSource] = (), answer_wait: float = ANSWER_WAIT):
        """`answer_wait`: seconds the review sender waits for a node's answer before sending the next command (a
        later answer is recorded all the same)."""
        self.fleet = fleet
        self.clock = clock
        self.accounts = AccountStore(console_dir / ACCOUNTS_FILE, clock)
        self.journal = ConsoleJournal(console_dir, clock)
        self.store = AlertStore(console_dir, clock)
        self.references = WatchReferences(fleet)
        self.fleet_view = FleetView(fleet, clock, audit_logs)
        self.tail = EventTail(fleet, operator, clock)
        self.review_key = review_key
        self.intake = Intake(self)
        self.ingest = Ingest(client, fleet, self.tail, self.intake)
        self.sender = ReviewSender(client, fleet, self._answered, answer_wait)
        self._decide_lock = threading.Lock()
        self._listeners: dict[int, Callable[[str], None]] = {}
        self._listen_lock = threading.Lock()
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None

    # -- running --
    def start(self) -> None:
        """Purge what retention ended while the console was down, then connect and subscribe."""
        self.journal.record("console-start", fleet=self.fleet.name)
        self.purge_expired()
        self.ingest.start()
        self.sender.start()
        self._stop.clear()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="console-retention", daemon=True)
        self._housekeeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(10)
        self.sender.stop()
        self.ingest.stop()
        self.journal.record("console-stop", **self.tail.counts.to_json())
        self.store.close()

    def _housekeeping(self) -> None:
        while not self._stop.wait(PURGE_EVERY):
            try:
                self.purge_expired()
            except ConsoleError as exc:
                log.error("retention purge failed: %s", exc)

    # -- alerts --
    def terms(self, deployment_id: str) -> DeploymentTerms:
        """The fleet's record of the deployment (shard issue writes it); the defaults when there is none."""
        try:
            r = read_deployment_record(self.fleet, deployment_id)
        except UnknownDeploymentError:
            return DeploymentTerms(DEFAULT_RETENTION_DAYS, DEFAULT_REVIEWERS_REQUIRED, None)
        except (DeploymentRecordError, FleetError) as exc:  # a bad record: said in the log, the defaults used
            log.warning("deployment %s: %s; retention %d days and %d reviewer(s) assumed", deployment_id, exc,
                        DEFAULT_RETENTION_DAYS, DEFAULT_REVIEWERS_REQUIRED)
            return DeploymentTerms(DEFAULT_RETENTION_DAYS, DEFAULT_REVIEWERS_REQUIRED, None)
        return DeploymentTerms(r.retention_days, r.reviewers_required, r.watchlist)

    def _view(self, a: StoredAlert) -> Alert:
        try:
            entry = self.references.entry(a.entry_id, self.terms(a.deployment_id).watchlist)
        except WatchListReadError as exc:
            log.warning("alert %s: %s", a.event_id, exc)
            entry = None
        note = a.evidence_note
        if a.evidence_gone is not None:
            gone = ("destroyed at once on dismissal" if a.evidence_gone == DISMISSED
                    else "destroyed at the deployment's retention")
            note = f"evidence {gone}" + (f"; {note}" if note else "")
        live = a.evidence_gone is None
        return Alert(a.event_id, a.device_id, a.camera_id, a.deployment_id, a.entry_id, a.track_id, a.score,
                     a.threshold, a.margin, a.frames_agreeing, a.event_time, a.received, a.evidence_until, a.signature,
                     a.has_face and live, a.has_context and live, note, entry, a.reviewers_required,
                     tuple(Decision(d.reviewer, d.outcome, d.note, d.at) for d in a.decisions), a.outcome,
                     a.node_answer)

    def queue(self) -> list[Alert]:
        """Open alerts, newest first."""
        return [self._view(a) for a in self.store.alerts(decided=False)]

    def recent(self, limit: int = 50) -> list[Alert]:
        """Decided alerts, newest first."""
        return [self._view(a) for a in self.store.alerts(decided=True, limit=limit)]

    def alert(self, event_id: str) -> Alert:
        return self._view(self.store.get(event_id))

    def viewed(self, event_id: str, account: Account) -> None:
        """The web layer shows an alert to an account: on the record (who viewed which alert when)."""
        self.store.get(event_id)
        self.journal.record("view", event_id=event_id, account=account.name)

    def evidence(self, event_id: str, part: str) -> tuple[bytes, str]:
        """(bytes, media type) of an alert's face or context crop."""
        if part not in PARTS:
            raise EvidenceGoneError(f"evidence part {part!r}: expected one of {', '.join(PARTS)}")
        self.store.get(event_id)
        kept = self.store.evidence(event_id)
        data = kept.face if part == "face" else kept.context
        if data is None:
            raise EvidenceGoneError(f"event {event_id}: no {part} crop was kept")
        return data, kept.media_type

    def reference_photo(self, reference: str, index: int) -> tuple[bytes, str]:
        """(bytes, media type) of a watch-list entry's reference photo (`reference`: the alert's entry id). Only
        beside an alert: the console shows no watch-list photo that no alert here names."""
        if not self.store.names_entry(reference):
            raise EvidenceGoneError(f"no alert in this console names watch-list entry {reference!r}")
        try:
            return self.references.photo(reference, index)
        except WatchListReadError as exc:
            raise EvidenceGoneError(str(exc)) from None

    # -- decisions --
    def decide(self, event_id: str, account: Account, outcome: str, note: str) -> Alert:
        """Record one account's decision. When it makes an outcome stand, the signed review command goes to the
        node (sent on the review thread; its answer recorded when it comes), and a dismissal destroys the
        console's copy of the evidence at once."""
        current = self.accounts.get(account.name)  # as it is now: disabled or re-roled since login counts
        at = self.clock()
        with self._decide_lock:
            stored = self.store.get(event_id)
            check_decision(stored, current, outcome)
            self.store.add_decision(event_id, current.name, outcome, note[:MAX_NOTE], at)
            self.journal.record("decision", event_id=event_id, account=current.name, role=current.role,
                                outcome=outcome, note=note[:MAX_NOTE])
            stored = self.store.get(event_id)
            result = standing(stored.decisions, stored.reviewers_required)
            if result is None:
                return self._view(stored)
            command: ReviewCommand | None
            try:
                command = sign_review(self.fleet, self.review_key, stored, result)
            except FleetError as exc:
                self.store.set_outcome(event_id, result.outcome, None, f"not sent: {exc}")
                self.journal.record("review-sent", event_id=event_id, outcome=result.outcome,
                                    reviewers=list(result.reviewers), command_id=None, sent=False, reason=str(exc))
                command = None
            else:
                self.store.set_outcome(event_id, result.outcome, command.command_id)
                self.journal.record("review-sent", event_id=event_id, outcome=result.outcome,
                                    reviewers=list(result.reviewers), command_id=command.command_id, sent=True,
                                    device_id=stored.device_id)
            if result.outcome == DISMISSED:
                self._destroyed(self.store.destroy(event_id))
        if command is not None:
            self.sender.send(command)
        return self.alert(event_id)

    def _answered(self, command_id: str, text: str, final: bool) -> None:
        event_id = self.store.set_node_answer(command_id, text, replace=final)
        if event_id is not None and final:
            self.journal.record("review-result", event_id=event_id, command_id=command_id, answer=text[:500])

    # -- evidence lifetime --
    def purge_expired(self) -> Destroyed:
        """Destroy the evidence whose retention has run out (by the console's clock)."""
        return self._destroyed(self.store.purge_expired())

    def _destroyed(self, d: Destroyed) -> Destroyed:
        if d.event_ids or d.keys:
            self.journal.record("evidence-destroyed", reason=d.reason, event_ids=list(d.event_ids),
                                keys=list(d.keys))
        return d

    # -- fleet --
    def devices(self) -> list[DeviceView]:
        return self.fleet_view.devices()

    def deployment_report(self) -> Mapping[str, Mapping[str, int]]:
        """deployment -> alerts/confirmed/dismissed/unreviewed (the console's), and the devices' verified
        figures (device_*) when audit logs were given."""
        return self.fleet_view.report(self.store.counts())

    # -- live feed --
    def listen(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """callback(event_id) from the MQTT thread for each new verified alert; returns the unsubscribe."""
        with self._listen_lock:
            token = max(self._listeners, default=0) + 1
            self._listeners[token] = callback

        def unsubscribe() -> None:
            with self._listen_lock:
                self._listeners.pop(token, None)
        return unsubscribe

    def _notify(self, event_id: str) -> None:
        with self._listen_lock:
            listeners = list(self._listeners.values())
        for callback in listeners:
            callback(event_id)


class Intake:
    """What the ingest hands over, put into the console (the IngestSink; tests feed it directly too)."""

    def __init__(self, console: Console):
        self.console = console

    def alert(self, verified: VerifiedEvent) -> None:
        c = self.console
        e = verified.event
        terms = c.terms(e.deployment_id)
        signature = f"verified by {e.device_id} key {verified.signer[:16]}"
        if c.store.add(verified, signature, terms.retention_days, terms.reviewers_required):
            c._notify(e.event_id)

    def rejected(self, rejection: RejectedEvent) -> None:
        self.console.journal.record("event-rejected", flag=rejection.flag, reason=rejection.reason[:500],
                                    topic=rejection.topic, claimed_event_id=rejection.claimed_event_id)

    def device_message(self, device_id: str, kind: str, body: Mapping[str, Any]) -> None:
        c = self.console
        if kind != COMMAND_RESULT:
            c.fleet_view.heard(device_id, kind, body)
        elif body.get("verb") == "review" and isinstance(body.get("command_id"), str):
            c._answered(body["command_id"], answer_text(bool(body["ok"]), str(body["code"]), str(body["reason"])),
                        True)


def open_console(fleet_dir: Path, console_dir: Path, broker: BrokerSettings, operator_key: Path | None,
                 review_key: Path | None, clock: Callable[[], datetime] = now,
                 audit_logs: Sequence[AuditSource] = (), answer_wait: float = ANSWER_WAIT) -> Console:
    """A Console for a fleet directory, kept in `console_dir`: the operator key opens the crops (without it they
    stay sealed and are not kept), the review key signs review commands (without it outcomes are not sent).
    The keys' passphrase comes from $EDGE_FLEET_PASSPHRASE or a prompt."""
    fleet = Fleet(fleet_dir)
    fleet.meta()  # must be a fleet
    console_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    operator = read_operator_key(operator_key, passphrase(str(operator_key))) if operator_key is not None else None
    signer = fleet.read_key(review_key) if review_key is not None else None
    return Console(fleet, console_dir, FleetClient(broker, broker.cert_file.stem), operator, signer, clock,
                   audit_logs, answer_wait)
