"""Decisions on alerts, and the signed `review` command that tells the node once an outcome stands.

The rules (GOVERNANCE G7, EU AI Act Art. 14(5)):
- a reviewer or a supervisor may decide; an admin (accounts only) may not, nor a disabled account;
- an account decides an alert once; a decided alert takes no more decisions;
- `confirmed` only with something to compare: the face crop kept and a watch-list entry with a reference photo;
- the outcome stands when `reviewers_required` distinct accounts agree on it; the decision of an account disabled
  before the outcome stands does not count (it is shown, marked);
- two accounts that disagree leave the alert open as disputed: from then on only a supervisor decides, and the
  outcome stands once `reviewers_required` accounts (the supervisor among them) agree.
The review command names every account that agreed, signed with the review keys (keys of the fleet root's review
role, or the command role under a root without one, checked at start: `check_review_keys`), and goes to the node
over the console's own connection.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.audit import AuditError
from edge.events.commands import REVIEW_OUTCOMES, CommandError, check_args, signing_role
from edge.trust.keys import key_id
from edge.trust.root import parse_envelope
from edge.trust.times import parse_time
from provisioning.commands import sign_command
from provisioning.console.accounts import Account
from provisioning.console.store import ConsoleError, StoredAlert, StoredDecision
from provisioning.fleet import Fleet, FleetError
from provisioning.link import FleetClient, publish_commands

log = logging.getLogger(__name__)
DECIDING_ROLES = frozenset({"reviewer", "supervisor"})
SETTLING_ROLE = "supervisor"  # decides a disputed alert
REVIEW_LIFETIME = timedelta(days=7)  # the longest a command may live: the node may be away for days
ANSWER_WAIT = 30.0  # seconds the sender waits for the node's answer; a later answer is recorded by the ingest
RECORDED = "recorded"  # node_answer when the node took the review
CONFIRMED = "confirmed"
TOO_FEW_REVIEWERS = "TooFewReviewersError"  # the node's code: the outcome re-opens (edge.events.commands)
REPLAYED = "CommandReplayError"  # the node had the command already (a resend after a restart)


class DuplicateReviewerError(ConsoleError):
    """The same account decides the same alert twice."""


class AlreadyDecidedError(ConsoleError):
    """The alert's outcome stands already."""


class ReviewerRoleError(ConsoleError):
    """The account's role may not decide this alert (an admin; a reviewer on a disputed alert; disabled)."""


class OutcomeError(ConsoleError):
    """Not an outcome a review command can carry."""


class NothingToCompareError(ConsoleError):
    """`confirmed` refused: no face crop, or no watch-list entry with a reference photo, to compare (dismissing
    stays possible)."""


class ReviewKeyError(ConsoleError):
    """A review key given to the console is not one the trusted root takes for reviews, or the keys given do not
    meet the role's threshold (names the file)."""


@dataclass(frozen=True)
class Standing:
    """An outcome that stands, and the accounts that agreed on it (in the order they decided)."""

    outcome: str
    reviewers: tuple[str, ...]


def counted(decisions: Sequence[StoredDecision], void: Collection[str]) -> list[StoredDecision]:
    """The decisions that count: not those of the accounts in `void` (disabled or gone since they decided)."""
    return [d for d in decisions if d.reviewer not in void]


def disputed(decisions: Sequence[StoredDecision], void: Collection[str] = ()) -> bool:
    return len({d.outcome for d in counted(decisions, void)}) > 1


def check_decision(alert: StoredAlert, account: Account, outcome: str, void: Collection[str] = ()) -> None:
    """Raise the rule this decision breaks, if any (`void`: accounts whose decisions no longer count)."""
    if outcome not in REVIEW_OUTCOMES:
        raise OutcomeError(f"outcome {outcome!r}: expected one of {', '.join(REVIEW_OUTCOMES)}")
    if account.disabled:
        raise ReviewerRoleError(f"account {account.name} is disabled")
    if account.role not in DECIDING_ROLES:
        raise ReviewerRoleError(f"account {account.name} is an {account.role}: only a reviewer or a supervisor "
                                "decides an alert")
    if alert.outcome is not None:
        raise AlreadyDecidedError(f"alert {alert.event_id} is {alert.outcome} already")
    if any(d.reviewer == account.name for d in alert.decisions):
        raise DuplicateReviewerError(f"account {account.name} has decided alert {alert.event_id} already; "
                                     f"{alert.reviewers_required} different accounts must agree")
    if disputed(alert.decisions, void) and account.role != SETTLING_ROLE:
        raise ReviewerRoleError(f"alert {alert.event_id} is disputed (its reviewers disagree): a supervisor "
                                "decides it")


def standing(decisions: Sequence[StoredDecision], required: int, void: Collection[str] = ()) -> Standing | None:
    """The outcome that stands after these decisions (those of `void` accounts not counted), if one does."""
    for outcome in REVIEW_OUTCOMES:
        agreed = tuple(d.reviewer for d in counted(decisions, void) if d.outcome == outcome)
        if len(agreed) >= max(1, required):
            return Standing(outcome, agreed)
    return None


@dataclass(frozen=True)
class ReviewCommand:
    """A signed review command for one alert's device, waiting to be sent."""

    event_id: str
    device_id: str
    command_id: str
    envelope: bytes
    expires: datetime


def sign_review(fleet: Fleet, keys: Ed25519PrivateKey | Sequence[Ed25519PrivateKey] | None, alert: StoredAlert,
                result: Standing) -> ReviewCommand:
    """The review command for an outcome that stands, signed with the console's review key(s)."""
    signers = [keys] if isinstance(keys, Ed25519PrivateKey) else list(keys or ())
    if not signers:
        raise FleetError("the console has no review key (--review-key): the outcome is not sent to the node")
    args = {"event_id": alert.event_id, "outcome": result.outcome, "reviewers": list(result.reviewers)}
    try:
        check_args("review", args)  # the node's own rules, before anything is signed
    except CommandError as exc:
        raise FleetError(str(exc)) from None
    cid, envelope = sign_command(fleet, alert.device_id, "review", args, REVIEW_LIFETIME, keys=signers)
    expires = parse_time(parse_envelope(envelope, "edge-command").body["expires"])
    return ReviewCommand(alert.event_id, alert.device_id, cid, envelope, expires)


def check_review_keys(fleet: Fleet, keys: Sequence[tuple[Path, Ed25519PrivateKey]]) -> None:
    """Refuse review keys the fleet's trusted root does not take for a review (a key of another role, or of
    none), and keys that together fall short of the role's threshold. No keys at all is allowed (outcomes then
    stand in the console and are not sent)."""
    if not keys:
        return
    try:
        root = fleet.root()
    except FleetError as exc:
        raise ReviewKeyError(f"{fleet.dir}: cannot read the fleet's trusted root to check the review keys ({exc})") \
            from None
    role = signing_role("review", root)
    seen: set[str] = set()
    for path, key in keys:
        kid = key_id(key.public_key())
        if kid not in root.roles[role].keyids:
            other = root.role_of(kid)
            what = f"a {other} key" if other else "a key of no role"
            raise ReviewKeyError(f"{path}: key {kid[:16]} is {what} of root v{root.version}, not of its {role} role: "
                                 "it cannot sign reviews" + ("; the console must not hold the command key"
                                                             if other == "command" and role == "review" else ""))
        seen.add(kid)
    need = root.roles[role].threshold
    if len(seen) < need:
        files = ", ".join(str(p) for p, _k in keys)
        raise ReviewKeyError(f"{files}: {len(seen)} distinct {role} key(s) given; root v{root.version} needs {need} "
                             "to sign a review (give --review-key once per key)")


@dataclass(frozen=True)
class NodeAnswer:
    """What became of one review command: the node's answer (`code`: "ok" or its refusal's class) or why there is
    none (`code` None). `final`: the node answered; a later answer does not replace it. `weak`: the node had the
    command already (a resend), final only where nothing final is recorded."""

    command_id: str
    code: str | None
    text: str
    final: bool
    weak: bool = False


def node_answer(command_id: str, ok: bool, code: str, reason: str) -> NodeAnswer:
    """The node's answer to a review command, as the console records it."""
    if code == REPLAYED:
        return NodeAnswer(command_id, code, f"the node had this command already ({reason})", True, weak=True)
    return NodeAnswer(command_id, code, RECORDED if ok else f"{code}: {reason}", True)


class ReviewSender:
    """Sends review commands one at a time on its own thread over the console's connection, and hands each
    answer (or why there is none yet) to `on_answer`; not final: a later answer, taken by the ingest, replaces
    it. A failure with one command (the broker, the store) is handed on or logged: the thread goes on."""

    def __init__(self, client: FleetClient, fleet: Fleet, on_answer: Callable[[NodeAnswer], None],
                 wait: float = ANSWER_WAIT):
        self.client = client
        self.fleet = fleet
        self.on_answer = on_answer
        self.wait = wait
        self._queue: queue.Queue[ReviewCommand | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-reviews", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.wait + 10)
            self._thread = None

    def send(self, command: ReviewCommand) -> None:
        self._queue.put(command)

    def _run(self) -> None:
        while (command := self._queue.get()) is not None:
            try:
                self._send(command)
            except (ConsoleError, AuditError, sqlite3.Error) as exc:  # the answer could not be recorded
                log.error("review command %s for %s: its answer not recorded: %s", command.command_id,
                          command.event_id, exc)

    def _send(self, command: ReviewCommand) -> None:
        try:
            results = publish_commands(self.client, self.fleet,
                                       {command.device_id: ("review", command.command_id, command.envelope)},
                                       self.wait, REVIEW_LIFETIME, keep_open=True, subscribed=True)
        except (FleetError, OSError, ValueError) as exc:  # sent again at the next start
            self.on_answer(NodeAnswer(command.command_id, None, f"not sent: {exc}", False))
            return
        for r in results:
            if r.answered:
                self.on_answer(node_answer(r.command_id, r.ok, r.code, r.reason))
            else:  # the node's answer may still come: the ingest records it then
                self.on_answer(NodeAnswer(r.command_id, None, f"no answer yet: {r.reason}", False))
