"""The Console: what the web layer calls. It puts together the ingest (MQTT), the store, the watch-list
references, the decision rules with the review sender, the fleet view, the accounts and the console's journal.

Every method is thread-safe: the web layer calls from its worker threads while the paho loop thread ingests.
Decisions and review results are journaled here; a view is journaled when the web layer calls `viewed`.

An alert is judged under the terms the signed event carries (the node's shard's deployment), else the fleet's
record of the deployment, else fail-closed terms: two reviewers, evidence kept one day, and the alert says why.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.audit import AuditError
from edge.events.link import BrokerSettings
from edge.events.messages import COMMAND_RESULT, EVIDENCE_MEDIA_TYPES, MatchEvent
from edge.trust.times import now
from edge.watchlist.shard import MAX_REVIEWERS_REQUIRED, MIN_RETENTION_DAYS
from provisioning.console.accounts import Account, AccountStore, UnknownAccountError
from provisioning.console.fleetview import DeviceView, FleetView
from provisioning.console.ingest import Ingest
from provisioning.console.journal import ConsoleJournal
from provisioning.console.references import WatchEntry, WatchListReadError, WatchReferences, media_type
from provisioning.console.reviews import (
    ANSWER_WAIT,
    CONFIRMED,
    TOO_FEW_REVIEWERS,
    AlreadyDecidedError,
    DuplicateReviewerError,
    NodeAnswer,
    NothingToCompareError,
    ReviewCommand,
    ReviewerRoleError,
    ReviewKeyError,
    ReviewSender,
    Standing,
    check_decision,
    check_review_keys,
    node_answer,
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
    StoredDecision,
    StoredTerms,
    UnknownAlertError,
)
from provisioning.deployments import DeploymentRecordError, UnknownDeploymentError, read_deployment_record
from provisioning.fleet import Fleet, FleetError, passphrase
from provisioning.link import CommandAnswer, FleetClient
from provisioning.operators import operator_key as read_operator_key
from provisioning.reports import AuditSource
from provisioning.tail import EventTail, RejectedEvent, VerifiedEvent

__all__ = ["Alert", "AlreadyDecidedError", "Console", "ConsoleError", "Decision", "DeviceView",
           "DuplicateReviewerError", "EvidenceGoneError", "NothingToCompareError", "ReviewKeyError",
           "ReviewerRoleError", "UnknownAlertError", "WatchEntry", "open_console"]

log = logging.getLogger(__name__)
ACCOUNTS_FILE = "accounts.db"
PARTS = ("face", "context")
MAX_NOTE = 2000  # characters of a decision's note
PURGE_EVERY = 60.0  # seconds between retention purges (and retried destructions) while the console runs
FAIL_CLOSED_REVIEWERS = MAX_REVIEWERS_REQUIRED  # with neither the event's terms nor a fleet record: the most
FAIL_CLOSED_RETENTION_DAYS = MIN_RETENTION_DAYS  # ... and the shortest retention a deployment may have


@dataclass(frozen=True)
class Decision:
    reviewer: str
    outcome: str
    note: str
    at: datetime
    counts: bool = True  # False: the account was disabled (or removed) since, so the decision does not count


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
    terms_note: str = ""  # where retention and reviewers_required came from; fail-closed: and why
    confirm_blocked: str | None = None  # why `confirmed` is refused (nothing to compare); None: it may be confirmed


class Console:
    """The officer's console behind the web pages."""

    def __init__(self, fleet: Fleet, console_dir: Path, client: FleetClient, operator: X25519PrivateKey | None,
                 review_key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey] | None,
                 clock: Callable[[], datetime] = now, audit_logs: Sequence[AuditSource] = (),
                 answer_wait: float = ANSWER_WAIT):
        """`review_key`: the key(s) that sign review commands (open_console checks them against the root).
        `answer_wait`: seconds the review sender waits for a node's answer before sending the next command (a
        later answer is recorded all the same)."""
        self.fleet = fleet
        self.clock = clock
        self.accounts = AccountStore(console_dir / ACCOUNTS_FILE, clock)
        self.journal = ConsoleJournal(console_dir, clock)
        self.store = AlertStore(console_dir, clock)
        self.references = WatchReferences(fleet)
        self.fleet_view = FleetView(fleet, clock, audit_logs)
        self.tail = EventTail(fleet, operator, clock)
        self.review_keys = ((review_key,) if isinstance(review_key, Ed25519PrivateKey)
                            else tuple(review_key or ()))
        self.review_key = self.review_keys[0] if self.review_keys else None
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
        """Purge what retention ended while the console was down, connect and subscribe, then send again every
        review command the node has not answered (or that could not be sent)."""
        self.journal.record("console-start", fleet=self.fleet.name)
        self.housekeeping()
        self.ingest.start()
        self.sender.start()
        self.resend_pending()
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
                self.housekeeping()
            except (ConsoleError, AuditError, sqlite3.Error) as exc:
                log.error("housekeeping failed: %s", exc)

    def housekeeping(self) -> None:
        """Destroy what retention ended, and the evidence of dismissed alerts whose destruction failed before."""
        self.purge_expired()
        for event_id in self.store.undestroyed_dismissals():
            self._destroy_dismissed(event_id)

    # -- alerts --
    def terms(self, event: MatchEvent) -> StoredTerms:
        """What an alert is judged under: the terms the signed event carries (its shard's deployment), else the
        fleet's record of the deployment (`shard issue` writes it), else fail-closed: the most reviewers and the
        shortest retention a deployment may have, with the reason on the alert."""
        dep = event.deployment_id
        if event.reviewers_required is not None and event.retention_days is not None:
            return StoredTerms(event.retention_days, event.reviewers_required,
                               "from the signed event (the deployment in the node's shard)")
        try:
            r = read_deployment_record(self.fleet, dep)
        except UnknownDeploymentError:
            why = f"this fleet has no record of deployment {dep}"
        except (DeploymentRecordError, FleetError) as exc:
            why = f"the fleet's record of deployment {dep} cannot be read ({exc})"
            log.warning("%s", why)
        else:
            return StoredTerms(event.retention_days or r.retention_days,
                               event.reviewers_required or r.reviewers_required,
                               f"from the fleet's record of deployment {dep}")
        retention = event.retention_days or FAIL_CLOSED_RETENTION_DAYS
        reviewers = event.reviewers_required or FAIL_CLOSED_REVIEWERS
        return StoredTerms(retention, reviewers,
                           f"fail-closed: {why} and the event does not carry its terms; {reviewers} reviewers "
                           f"required and the evidence kept {retention} day(s)")

    def _watchlist(self, deployment_id: str) -> str | None:
        """The watch list the fleet's record names for a deployment (searched first for an alert's entry)."""
        try:
            return read_deployment_record(self.fleet, deployment_id).watchlist
        except (UnknownDeploymentError, DeploymentRecordError, FleetError):
            return None

    def _void(self, decisions: Sequence[StoredDecision]) -> frozenset[str]:
        """The reviewers whose decisions no longer count: their accounts are disabled or gone."""
        void = set()
        for d in decisions:
            try:
                if self.accounts.get(d.reviewer).disabled:
                    void.add(d.reviewer)
            except UnknownAccountError:
                void.add(d.reviewer)
        return frozenset(void)

    def _view(self, a: StoredAlert) -> Alert:
        try:
            entry = self.references.entry(a.entry_id, self._watchlist(a.deployment_id))
        except WatchListReadError as exc:
            log.warning("alert %s: %s", a.event_id, exc)
            entry = None
        note = a.evidence_note
        if a.evidence_gone is not None:
            gone = ("destroyed at once on dismissal" if a.evidence_gone == DISMISSED
                    else "destroyed at the deployment's retention")
            note = f"evidence {gone}" + (f"; {note}" if note else "")
        live = a.evidence_gone is None
        void = self._void(a.decisions)
        has_face = a.has_face and live
        return Alert(a.event_id, a.device_id, a.camera_id, a.deployment_id, a.entry_id, a.track_id, a.score,
                     a.threshold, a.margin, a.frames_agreeing, a.event_time, a.received, a.evidence_until, a.signature,
                     has_face, a.has_context and live, note, entry, a.reviewers_required,
                     tuple(Decision(d.reviewer, d.outcome, d.note, d.at, d.reviewer not in void) for d in a.decisions),
                     a.outcome, a.node_answer, a.terms_note, _nothing_to_compare(a, has_face, entry, note))

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
        """(bytes, media type) of an alert's face or context crop; the type is read from the bytes themselves,
        and only a JPEG or a PNG is handed out."""
        if part not in PARTS:
            raise EvidenceGoneError(f"evidence part {part!r}: expected one of {', '.join(PARTS)}")
        self.store.get(event_id)
        kept = self.store.evidence(event_id)
        data = kept.face if part == "face" else kept.context
        if data is None:
            raise EvidenceGoneError(f"event {event_id}: no {part} crop was kept")
        kind = media_type(data)
        if kind not in EVIDENCE_MEDIA_TYPES:
            raise EvidenceGoneError(f"event {event_id}: the {part} crop is not a JPEG or PNG image ({kind})")
        return data, kind

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
        """Record one account's decision. When it makes an outcome stand, the signed review command is kept and
        queued for the node (sent on the review thread; its answer recorded when it comes), and then a dismissal
        destroys the console's copy of the evidence (a failure there is journaled and retried by housekeeping).
        `confirmed` is refused (NothingToCompareError) without a face crop and a reference photo to compare."""
        current = self.accounts.get(account.name)  # as it is now: disabled or re-roled since login counts
        at = self.clock()
        with self._decide_lock:
            stored = self.store.get(event_id)
            void = self._void(stored.decisions)
            check_decision(stored, current, outcome, void)
            if outcome == CONFIRMED:
                self._check_comparable(stored)
            self.store.add_decision(event_id, current.name, outcome, note[:MAX_NOTE], at)
            self.journal.record("decision", event_id=event_id, account=current.name, role=current.role,
                                outcome=outcome, note=note[:MAX_NOTE])
            stored = self.store.get(event_id)
            result = standing(stored.decisions, stored.reviewers_required, void)
            if result is None:
                return self._view(stored)
            self.store.set_outcome(event_id, result.outcome, None, "not sent yet")
            command = self._sign(stored, result)
            if command is not None:
                self.sender.send(command)  # queued before anything else can fail
            if result.outcome == DISMISSED:
                self._destroy_dismissed(event_id)
        return self.alert(event_id)

    def _check_comparable(self, stored: StoredAlert) -> None:
        """Refuse `confirmed` when the officer has nothing to compare: no face crop, no watch-list entry, or no
        reference photo that can be read."""
        view = self._view(stored)
        if view.confirm_blocked is not None:
            raise NothingToCompareError(f"confirm refused: {view.confirm_blocked}")
        try:
            self.references.photo(stored.entry_id, 0, self._watchlist(stored.deployment_id))
        except WatchListReadError as exc:
            raise NothingToCompareError(f"confirm refused: the entry's reference photo cannot be shown ({exc})") \
                from None

    def _sign(self, stored: StoredAlert, result: Standing, resent: bool = False) -> ReviewCommand | None:
        """Sign the review command of an outcome that stands and keep it with the alert (None: it cannot be
        signed, which the alert's node_answer says)."""
        try:
            command = sign_review(self.fleet, self.review_keys, stored, result)
        except FleetError as exc:
            self.store.set_command(stored.event_id, None, None, None, f"not sent: {exc}")
            self.journal.record("review-sent", event_id=stored.event_id, outcome=result.outcome,
                                reviewers=list(result.reviewers), command_id=None, sent=False, reason=str(exc))
            return None
        self.store.set_command(stored.event_id, command.command_id, command.envelope, command.expires, None)
        self.journal.record("review-sent", event_id=stored.event_id, outcome=result.outcome,
                            reviewers=list(result.reviewers), command_id=command.command_id, sent=True,
                            device_id=stored.device_id, **({"resent": True} if resent else {}))
        return command

    def resend_pending(self) -> int:
        """Queue again every outcome without the node's final answer: its kept command while it is valid, else
        (expired, or never signed for want of a key) a command signed now. Returns how many were queued."""
        queued = 0
        with self._decide_lock:
            for p in self.store.pending_reviews():
                stored = self.store.get(p.event_id)
                if p.envelope is not None and p.command_id is not None and p.expires is not None:
                    command: ReviewCommand | None = ReviewCommand(p.event_id, p.device_id, p.command_id, p.envelope,
                                                                  p.expires)
                    self.journal.record("review-sent", event_id=p.event_id, outcome=p.outcome, command_id=p.command_id,
                                        sent=True, device_id=p.device_id, resent=True)
                else:
                    agreed = tuple(d.reviewer for d in stored.decisions if d.outcome == p.outcome)
                    command = self._sign(stored, Standing(p.outcome, agreed), resent=True)
                if command is not None:
                    self.sender.send(command)
                    queued += 1
        return queued

    def _answered(self, answer: NodeAnswer) -> None:
        """What became of a review command (from the review thread or the ingest)."""
        if answer.code == TOO_FEW_REVIEWERS:
            self._reopen(answer)
            return
        event_id = self.store.set_node_answer(answer.command_id, answer.text, answer.final, answer.weak)
        if event_id is not None and answer.final:
            self.journal.record("review-result", event_id=event_id, command_id=answer.command_id,
                                answer=answer.text[:500])

    def _reopen(self, answer: NodeAnswer) -> None:
        """The node refused the outcome for naming too few reviewers: its deployment needs more than the console
        asked for. The alert goes back to the queue with its decisions, now needing one more reviewer."""
        with self._decide_lock:
            stored = self.store.by_command(answer.command_id)
            if stored is None or stored.outcome is None:
                return  # not ours, or re-opened already (the answer delivered twice)
            agreed = len({d.reviewer for d in stored.decisions if d.outcome == stored.outcome})
            required = max(stored.reviewers_required, agreed + 1)
            text = f"{answer.text} (re-opened: {required} reviewers now required)"
            if not self.store.reopen(stored.event_id, answer.command_id, required, text):
                return
            self.journal.record("review-result", event_id=stored.event_id, command_id=answer.command_id,
                                answer=text[:500], reopened=True, reviewers_required=required)
        self._notify(stored.event_id)

    # -- evidence lifetime --
    def purge_expired(self) -> Destroyed:
        """Destroy the evidence whose retention has run out (by the console's clock)."""
        return self._destroyed(self.store.purge_expired())

    def _destroy_dismissed(self, event_id: str) -> None:
        """Destroy a dismissed alert's crops; a failure is journaled and housekeeping tries again."""
        try:
            self._destroyed(self.store.destroy(event_id))
        except ConsoleError as exc:
            log.error("alert %s: the dismissed evidence could not be destroyed (tried again later): %s", event_id, exc)
            self.journal.record("evidence-destroy-failed", event_id=event_id, reason=str(exc)[:500])

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
        signature = f"verified by {e.device_id} key {verified.signer[:16]}"
        if c.store.add(verified, signature, c.terms(e)):
            c._notify(e.event_id)

    def rejected(self, rejection: RejectedEvent) -> None:
        self.console.journal.record("event-rejected", flag=rejection.flag, reason=rejection.reason[:500],
                                    topic=rejection.topic, claimed_event_id=rejection.claimed_event_id)

    def device_message(self, device_id: str, kind: str, body: Mapping[str, Any]) -> None:
        """A verified state, checkpoint or command answer (MessageFormatError: its body is not well formed)."""
        c = self.console
        if kind != COMMAND_RESULT:
            c.fleet_view.heard(device_id, kind, body)
            return
        answer = CommandAnswer.from_body(body)
        if answer.verb == "review" and answer.command_id is not None:
            c._answered(node_answer(answer.command_id, answer.ok, answer.code, answer.reason))


def _nothing_to_compare(a: StoredAlert, has_face: bool, entry: WatchEntry | None, note: str | None) -> str | None:
    """Why an officer could not compare this alert (so it cannot be confirmed), or None."""
    if not has_face:
        return "no face crop to compare" + (f" ({note})" if note else "")
    if entry is None:
        return f"watch-list entry {a.entry_id} is not in this fleet's watch lists: no reference photo to compare"
    if entry.photos < 1:
        return f"watch-list entry {entry.reference} has no reference photo to compare"
    return None


def open_console(fleet_dir: Path, console_dir: Path, broker: BrokerSettings, operator_key: Path | None,
                 review_key: Path | Sequence[Path] | None, clock: Callable[[], datetime] = now,
                 audit_logs: Sequence[AuditSource] = (), answer_wait: float = ANSWER_WAIT) -> Console:
    """A Console for a fleet directory, kept in `console_dir`: the operator key opens the crops (without it they
    stay sealed and are not kept), the review key(s) sign review commands (without one, outcomes are not sent).
    Review keys must be keys of the trusted root's review role (its command role under a root without one) and
    meet its threshold: ReviewKeyError names the file otherwise. The keys' passphrase comes from
    $EDGE_FLEET_PASSPHRASE or a prompt."""
    fleet = Fleet(fleet_dir)
    fleet.meta()  # must be a fleet
    console_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    operator = read_operator_key(operator_key, passphrase(str(operator_key))) if operator_key is not None else None
    paths = [review_key] if isinstance(review_key, Path) else list(review_key or ())
    signers = []
    for path in paths:
        try:
            signers.append((path, fleet.read_key(path)))
        except FleetError as exc:
            raise ReviewKeyError(f"{path}: cannot read the review key ({exc})") from None
    check_review_keys(fleet, signers)
    return Console(fleet, console_dir, FleetClient(broker, broker.cert_file.stem), operator,
                   [k for _p, k in signers], clock, audit_logs, answer_wait)
