"""How many distinct reviewers an alert's outcome needs on this node (GOVERNANCE G7, EU AI Act Art. 14(5)).

Each deployment says it in its signed shard (`reviewers_required`, 1 when absent). An alert is judged by the
figure of the shard it was raised under, fixed at that moment: it is in the alert's `alert` audit record and
in its signed event (so the console counts the same), and comes back from the record at start
(`Effectiveness.raised`). A later shard of the same deployment changes the figure only for later alerts.

Only an alert recorded before the figure was (an older node) falls back to its deployment's figure from the
log's `shard-accepted` records, and, where those are pruned too, fail-closed to MAX_REVIEWERS_REQUIRED.

Reviewers are counted distinct in any case: "alice" and "ALICE" are one person.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from edge.audit import AuditEntry
from edge.deployment import RaisedAlert
from edge.events.commands import TooFewReviewersError, distinct_reviewers
from edge.watchlist.shard import DEFAULT_REVIEWERS_REQUIRED, MAX_REVIEWERS_REQUIRED, Deployment


class ReviewQuorum:
    """The distinct reviewers an alert's review must name: the alert's own figure, else (an alert recorded
    before the figure) its deployment's from `shard-accepted` records. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._required: dict[str, int] = {}

    def accepted(self, deployment: Deployment) -> None:
        """A shard of this deployment is in force (a later shard of the same deployment replaces the figure,
        for alerts whose record does not carry their own)."""
        with self._lock:
            self._required[deployment.id] = deployment.reviewers_required

    def restore(self, entries: Iterable[AuditEntry]) -> None:
        """From the audit log at start: every `shard-accepted` record, oldest first (one written before the
        field existed was for a shard that could not ask for more than one)."""
        for e in entries:
            if e.kind == "shard-accepted":
                with self._lock:
                    self._required[str(e.data["deployment_id"])] = int(
                        e.data.get("reviewers_required", DEFAULT_REVIEWERS_REQUIRED))

    def required(self, deployment_id: str) -> int:
        with self._lock:
            return self._required.get(deployment_id, MAX_REVIEWERS_REQUIRED)

    def check(self, alert: RaisedAlert, reviewers: Sequence[str]) -> int:
        """Raises TooFewReviewersError unless `reviewers` names enough distinct people (in any case) for the
        alert; returns the figure it was judged by."""
        need = alert.reviewers_required
        if need is None:
            need = self.required(alert.deployment_id)
        named = distinct_reviewers(reviewers)
        if named < need:
            raise TooFewReviewersError(f"deployment {alert.deployment_id} requires {need} distinct reviewers for "
                                       f"this alert; the review names {named}: nothing recorded, the evidence "
                                       "is kept")
        return need
