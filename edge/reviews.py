"""How many distinct reviewers an alert's outcome needs on this node (GOVERNANCE G7, EU AI Act Art. 14(5)).

Each deployment says it in its signed shard (`reviewers_required`, 1 when absent). An alert is judged under
the deployment it was raised in, which may no longer be the one in force: the node keeps what every
deployment it accepted a shard for required, rebuilt at start from its audit log's `shard-accepted` records
(each carries the figure), so a restart forgets nothing. A deployment the log no longer names (its records
pruned) is judged fail-closed at MAX_REVIEWERS_REQUIRED.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from edge.audit import AuditEntry
from edge.events.commands import TooFewReviewersError
from edge.watchlist.shard import DEFAULT_REVIEWERS_REQUIRED, MAX_REVIEWERS_REQUIRED, Deployment


class ReviewQuorum:
    """deployment id -> distinct reviewers its alerts' reviews must name. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._required: dict[str, int] = {}

    def accepted(self, deployment: Deployment) -> None:
        """A shard of this deployment is in force (a later shard of the same deployment replaces the figure)."""
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

    def check(self, deployment_id: str, reviewers: Sequence[str]) -> int:
        """Raises TooFewReviewersError unless `reviewers` names enough distinct people; returns the figure."""
        need = self.required(deployment_id)
        named = len(set(reviewers))
        if named < need:
            raise TooFewReviewersError(f"deployment {deployment_id} requires {need} distinct reviewers; the review "
                                       f"names {named}: nothing recorded, the evidence is kept")
        return need
