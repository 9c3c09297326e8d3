"""Decisions on alerts, and the signed `review` command that tells the node once an outcome stands.

The rules (GOVERNANCE G7, EU AI Act Art. 14(5)):
- a reviewer or a supervisor may decide; an admin (accounts only) may not, nor a disabled account;
- an account decides an alert once; a decided alert takes no more decisions;
- the outcome stands when `reviewers_required` distinct accounts agree on it;
- two accounts that disagree leave the alert open as disputed: from then on only a supervisor decides, and the
  outcome stands once `reviewers_required` accounts (the supervisor among them) agree.
The review command names every account that agreed, signed with the review key (a key of the fleet root's review
role, or the command role under a root without one), and goes to the node over the console's own connection.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.events.commands import REVIEW_OUTCOMES, CommandError, check_args
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


class DuplicateReviewerError(ConsoleError):
    """The same account decides the same alert twice."""


class AlreadyDecidedError(ConsoleError):
    """The alert's outcome stands already."""


class ReviewerRoleError(ConsoleError):
    """The account's role may not decide this alert (an admin; a reviewer on a disputed alert; disabled)."""


class OutcomeError(ConsoleError):
    """Not an outcome a review command can carry."""


@dataclass(frozen=True)
class Standing:
    """An outcome that stands, and the accounts that agreed on it (in the order they decided)."""

    outcome: str
    reviewers: tuple[str, ...]


def disputed(decisions: Sequence[StoredDecision]) -> bool:
    return len({d.outcome for d in decisions}) > 1


def check_decision(alert: StoredAlert, account: Account, outcome: str) -> None:
    """Raise the rule this decision breaks, if any."""
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
    if disputed(alert.decisions) and account.role != SETTLING_ROLE:
        raise ReviewerRoleError(f"alert {alert.event_id} is disputed (its reviewers disagree): a supervisor "
                                "decides it")


def standing(decisions: Sequence[StoredDecision], required: int) -> Standing | None:
    """The outcome that stands after these decisions, if one does."""
    for outcome in REVIEW_OUTCOMES:
        agreed = tuple(d.reviewer for d in decisions if d.outcome == outcome)
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


def sign_review(fleet: Fleet, key: Ed25519PrivateKey | None, alert: StoredAlert, result: Standing) -> ReviewCommand:
    """The review command for an outcome that stands, signed with the console's review key."""
    if key is None:
        raise FleetError("the console has no review key (--review-key): the outcome is not sent to the node")
    args = {"event_id": alert.event_id, "outcome": result.outcome, "reviewers": list(result.reviewers)}
    try:
        check_args("review", args)  # the node's own rules, before anything is signed
    except CommandError as exc:
        raise FleetError(str(exc)) from None
    cid, envelope = sign_command(fleet, alert.device_id, "review", args, REVIEW_LIFETIME, keys=[key])
    return ReviewCommand(alert.event_id, alert.device_id, cid, envelope)


def answer_text(ok: bool, code: str, reason: str) -> str:
    """What the console shows as the node's answer to a review command."""
    return RECORDED if ok else f"{code}: {reason}"


class ReviewSender:
    """Sends review commands one at a time on its own thread over the console's connection, and hands each
    answer (or why there is none yet) to `on_answer(command_id, text, final)`; not final: a later answer, taken
    by the ingest, replaces it."""

    def __init__(self, client: FleetClient, fleet: Fleet, on_answer: Callable[[str, str, bool], None],
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
                results = publish_commands(self.client, self.fleet,
                                           {command.device_id: ("review", command.command_id, command.envelope)},
                                           self.wait, REVIEW_LIFETIME, keep_open=True)
            except (FleetError, OSError, ValueError) as exc:
                self.on_answer(command.command_id, f"not sent: {exc}", True)
                continue
            for r in results:
                if r.answered:
                    self.on_answer(r.command_id, answer_text(r.ok, r.code, r.reason), True)
                else:  # the node's answer may still come: the ingest records it then
                    self.on_answer(r.command_id, f"no answer yet: {r.reason}", False)
