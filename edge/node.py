"""The node service (`edge-node run --config node.toml`): models, the shard in force, camera, pipeline,
events and commands, and what systemd and the fleet see of them.

READY=1 is sent once the models are verified and loaded and a shard is in force (until then STATUS says
what the node waits for); WATCHDOG=1 only while capture, inference and MQTT all make progress; STATUS=
carries fps, faces, alerts and the shard version.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.alerts import MAX_IDS_RECORDED, AuditedSink, HoldingSink, PrintSink, recover_held_alerts
from edge.audit import AuditEntry, AuditLog
from edge.capture import CameraSupervisor, open_source
from edge.config import MqttConfig, NodeConfig
from edge.deployment import DeploymentGate, DeploymentUse, Effectiveness, UnknownAlertError, open_use
from edge.events.commands import Command, CommandFailedError
from edge.events.ids import uuid7
from edge.events.link import BrokerSettings
from edge.events.service import EventService, EventSigner, shard_push_handler
from edge.identity import DeviceIdentity, load_identity
from edge.pipeline import Pipeline, PipelineSettings
from edge.reviews import ReviewQuorum
from edge.systemd import Heartbeat, Notifier, WatchdogFeeder, disable_core_dumps, watchdog_interval
from edge.tls import DeviceTLS
from edge.trust.keys import x25519_public
from edge.trust.root import TrustError
from edge.trust.times import format_time, now, parse_time
from edge.vault import (
    DEFAULT_RETENTION_DAYS,
    STORAGE_PURPOSE,
    EvidenceVault,
    VaultError,
    purge_and_record,
)
from edge.vision.analyzer import FaceAnalyzer
from edge.watchlist.loader import AcceptedShard
from edge.watchlist.store import ActiveWatchList, ShardStore, StoreError

log = logging.getLogger(__name__)
STATUS_EVERY = 5.0
CHECKPOINT_EVERY = 600.0  # seconds between signed audit checkpoints (and evidence purges, effectiveness records)
# Stopping (SIGTERM, or a finite replay's end) must fit systemd's TimeoutStopSec (systemd/edge-node.service):
# the pipeline winds down, the outbox is drained for what time is left, then the link says offline and closes.
STOP_TIMEOUT_S = 30.0  # = TimeoutStopSec
PIPELINE_JOIN_S = 10.0  # at most this for the capture and inference threads to end
LINK_STOP_S = 2.0  # each of the link's two waits at stop (publisher thread, the offline state's PUBACK)
STOP_MARGIN_S = 3.0  # left after the link stops: models released, vault closed, process exit


@dataclass(frozen=True)
class StopDeadline:
    """The time by which a stopping node must have exited; each step takes what is left."""

    at: float = field(default_factory=time.monotonic)
    timeout: float = STOP_TIMEOUT_S

    def left(self, keep: float = 0.0) -> float:
        """Seconds left before the deadline, keeping `keep` back for the steps after."""
        return max(0.0, self.at + self.timeout - keep - time.monotonic())


class NodeError(Exception):
    """The node cannot start (names the file or setting at fault)."""


def broker_settings(config: NodeConfig, mqtt: MqttConfig) -> BrokerSettings:
    host, port = BrokerSettings.parse_url(mqtt.broker)
    tls = DeviceTLS(config.state_dir)
    for f in (tls.key, tls.cert, tls.ca):
        if not f.is_file():
            raise NodeError(f"{f}: missing; the device needs its broker certificate (`edge-node cert request`, "
                            "then `edge-node cert install`)")
    return BrokerSettings(host, port, tls.ca, tls.cert, tls.key,
                          session_expiry=int(mqtt.session_expiry_days * 86400))


def operator_public_key(mqtt: MqttConfig) -> Any:
    path = mqtt.operator_key
    try:
        doc = json.loads(path.read_text())
        return x25519_public(doc["x25519"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeError(f"{path}: not an operator public key file from `edge-fleet operator add` ({exc})") from None


class Node:
    """One running node. `run()` blocks until `stop` is set or a finite replay ends."""

    def __init__(self, config: NodeConfig, out: TextIO = sys.stdout, notifier: Notifier | None = None,
                 clock: Callable[[], datetime] = now, operator_key: X25519PublicKey | None = None,
                 print_events: bool = False, harden: bool = True, stop_timeout: float = STOP_TIMEOUT_S):
        """`operator_key` seals evidence when there is no [mqtt] section (the demo); `print_events` also
        prints each event as a JSON line when MQTT is on; `stop_timeout` bounds stopping, outbox drain
        included."""
        self.config = config
        self.out = out
        self.operator_key = operator_key
        self.print_events = print_events
        self.harden = harden  # core dumps off for the whole process (tests running in-process opt out)
        self.stop_timeout = stop_timeout
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.watchlist = ActiveWatchList()
        self.capture_beat = Heartbeat()
        self.inference_beat = Heartbeat()
        self.pipeline: Pipeline | None = None
        self.events: EventService | None = None
        self.camera: CameraSupervisor | None = None
        self.audit: AuditLog | None = None
        self.vault: EvidenceVault | None = None
        self.effectiveness = Effectiveness()
        self.quorum = ReviewQuorum()  # distinct reviewers each alerted deployment's reviews must name
        self.store: ShardStore | None = None  # the trusted root and the shard in force, once running
        self.use = DeploymentUse(self._audit, config.camera.id)  # start/end of matching under a deployment
        self._recorded: dict[str, Any] | None = None  # the last effectiveness record written
        self.ready = threading.Event()

    def _load_shard(self, store: ShardStore, analyzer: FaceAnalyzer) -> None:
        try:
            accepted = store.reload_current(analyzer.embedder_spec, self.clock())
        except TrustError as exc:
            log.error("the stored shard is not usable: %s: %s", type(exc).__name__, exc)
            self._audit("shard-rejected", {"source": "stored", "code": type(exc).__name__, "reason": str(exc)})
            accepted = None
        if accepted is not None:
            self._on_shard(accepted)

    def _on_shard(self, accepted: AcceptedShard) -> None:
        self.watchlist.swap(accepted)
        self.quorum.accepted(accepted.manifest.deployment)
        m = accepted.manifest
        log.info("shard %s v%d in force (deployment %s, %d entries)", m.shard_id, m.version, m.deployment.id,
                 m.entries)
        self._audit("shard-accepted", {"shard_id": m.shard_id, "version": m.version, "entries": m.entries,
                                       "deployment_id": m.deployment.id, "authorisation": m.deployment.authorisation,
                                       "start": format_time(m.deployment.start),
                                       "end": format_time(m.deployment.end), "cameras": list(m.deployment.cameras),
                                       "retention_days": m.deployment.retention_days,
                                       "reviewers_required": m.deployment.reviewers_required,
                                       "expires": format_time(m.expires)})
        self._audit("threshold", {"threshold": m.deployment.threshold, "deployment_id": m.deployment.id,
                                  "model": {"id": m.model_id, "sha256": m.model_sha256}})

    def _record_command(self, outcome: Mapping[str, Any]) -> None:
        self._audit("command", dict(outcome))

    def _audit(self, kind: str, data: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append(kind, data)

    def _checkpoint(self, identity: DeviceIdentity) -> None:
        """Sign the audit log's head and send it on the audit topic (a copy off the device: truncation shows)."""
        if self.audit is None:
            return
        signed = self.audit.checkpoint(identity.device_id, identity.signing_key)
        if self.events is not None:
            events = self.events
            events.outbox.enqueue(events.link.topics.audit, (self.clock() + timedelta(days=7)).timestamp(),
                                  lambda _seq: (uuid7(), signed))
            events.link.wake()

    def _retention_days(self, deployment_id: str) -> int:
        cur = self.watchlist.current(self.clock())
        if cur is not None and cur.manifest.deployment.id == deployment_id:
            return cur.manifest.deployment.retention_days
        return DEFAULT_RETENTION_DAYS

    def _purge(self) -> None:
        """Destroy the evidence whose retention ran out, and prune audit records past the log's own, longer
        retention (also run by the retention timer)."""
        if self.vault is None or self.audit is None:
            return
        try:
            report = purge_and_record(self.vault, self.audit)
        except VaultError as exc:
            log.error("evidence purge failed: %s", exc)
            return
        if not report.empty:
            log.info("purged %d evidence day key(s) and %d row(s)", len(report.keys_destroyed), report.rows_deleted)
        pruned = self.audit.prune(self.clock() - timedelta(days=self.config.audit_retention_days))
        if pruned:
            log.info("pruned %d audit records older than %d days", pruned, self.config.audit_retention_days)

    def _close_unclean_use(self, entries: list[AuditEntry]) -> None:
        """A session killed while matching left its deployment-start open: close it on the record, saying
        it was not a clean stop and the last record known from that session."""
        unclosed = open_use(entries)
        if unclosed is not None:
            log.warning("deployment %s was in use when the node last stopped uncleanly; closing it on the record",
                        unclosed.deployment_id)
            self._audit("deployment-end", unclosed.closing_record())

    def _recover_held(self, identity: DeviceIdentity) -> None:
        """Alerts a kill left committed but unsent: put each on the record, then let it go (edge.alerts)."""
        assert self.events is not None and self.audit is not None and self.vault is not None
        recover_held_alerts(self.events.outbox, self.audit, self.effectiveness, self.events.link.topics.match,
                            identity.signing_key.public_key(), set(self.vault.event_ids()))

    def _drop_unrecorded_evidence(self) -> None:
        """Evidence is stored before its alert is recorded; a kill in between leaves crops that no audit
        record accounts for (their held events were recorded first, if there is an outbox). Nothing is kept
        off the record: they are deleted, and that is recorded."""
        assert self.vault is not None
        orphans = [e for e in self.vault.event_ids() if not self.effectiveness.alerted(e)]
        for event_id in orphans:
            self.vault.acknowledge(event_id)
        if orphans:
            self._audit("recovered", {"reason": "evidence with no alert record (the node stopped between storing "
                                                "it and recording the alert) was deleted",
                                      "event_ids": orphans[:MAX_IDS_RECORDED], "count": len(orphans)})

    def _purge_command(self, cmd: Command) -> dict[str, Any]:
        """purge (signed by the fleet): destroy a deployment's evidence now, or that of days before a time."""
        assert self.vault is not None and self.audit is not None
        before = None if cmd.args["before"] is None else parse_time(cmd.args["before"])
        try:
            report = purge_and_record(self.vault, self.audit, "ordered by the fleet", cmd.args["deployment_id"],
                                      before, cmd.command_id)
        except VaultError as exc:
            raise CommandFailedError(str(exc)) from None
        return {"deployment_id": cmd.args["deployment_id"], "keys_destroyed": len(report.keys_destroyed),
                "rows_deleted": report.rows_deleted}

    def _check_review(self, cmd: Command) -> int:
        """A review names an alert of this node and enough distinct reviewers for it (the figure the alert was
        raised with: TooFewReviewersError); returns that figure. Run before the command id is remembered, so
        a refused review leaves no trace but its `command` record."""
        try:
            alert = self.effectiveness.raised(cmd.args["event_id"])
        except UnknownAlertError as exc:
            raise CommandFailedError(str(exc)) from None
        return self.quorum.check(alert, list(cmd.args["reviewers"]))

    def _review_command(self, cmd: Command) -> dict[str, Any]:
        """review (from the operator console): record the human decision, count it, drop the node's copy of
        the evidence. Recorded before the evidence goes, so a crash in between loses nothing on the record.
        A review naming fewer distinct reviewers than the alert requires is refused first (`_check_review`):
        nothing recorded as a review, the evidence kept."""
        assert self.vault is not None and self.audit is not None
        event_id, outcome, reviewers = cmd.args["event_id"], cmd.args["outcome"], list(cmd.args["reviewers"])
        required = self._check_review(cmd)
        deployment_id = self.effectiveness.review(event_id, outcome)
        self.audit.append("review", {"event_id": event_id, "deployment_id": deployment_id, "outcome": outcome,
                                     "reviewers": reviewers, "reviewers_required": required,
                                     "command_id": cmd.command_id})
        try:
            deleted = self.vault.acknowledge(event_id)
        except VaultError as exc:
            raise CommandFailedError(f"outcome recorded; the evidence could not be deleted: {exc}") from None
        return {"event_id": event_id, "outcome": outcome, "deployment_id": deployment_id,
                "evidence_deleted": deleted}

    def _record_effectiveness(self) -> None:
        """An `effectiveness` record when the figures changed since the last one (faces seen are restored
        from it at start); an idle node adds nothing to the log."""
        record = self.effectiveness.record()
        if self.audit is not None and record["deployments"] and record != self._recorded:
            self.audit.append("effectiveness", record)
            self._recorded = record

    def state_detail(self) -> dict[str, Any]:
        """What the retained state topic says besides online/offline and the outbox counters."""
        detail: dict[str, Any] = {}
        if self.camera is not None:
            detail["camera"] = asdict(self.camera.status())
        if self.pipeline is not None:
            p = self.pipeline
            detail["pipeline"] = {**p.counters.snapshot(), "fps": round(p.fps, 2)}
            detail["matching"] = "on" if p.refusal is None else f"off: {p.refusal.code}: {p.refusal.reason}"
        detail["effectiveness"] = {d: t.to_json() for d, t in self.effectiveness.snapshot().items()}
        if self.vault is not None:
            detail["vault"] = asdict(self.vault.stats())
        detail["root"] = self._root_detail()
        cur = self.watchlist.current(self.clock())
        detail["shard"] = None if cur is None else {
            "id": cur.manifest.shard_id, "version": cur.manifest.version,
            "deployment": cur.manifest.deployment.id, "expires": format_time(cur.manifest.expires)}
        return detail

    def _root_detail(self) -> dict[str, Any] | None:
        """The fleet root this node trusts: the fleet signs a review with the role that root gives reviews
        (`edge-fleet key add review` moves the fleet ahead of a device until `edge-node trust update`)."""
        if self.store is None:
            return None
        try:
            root = self.store.trusted_root().root
        except (StoreError, TrustError) as exc:
            log.error("the trusted root cannot be read for the state topic: %s", exc)
            return None
        return {"version": root.version, "review_role": root.has_role("review")}

    def status_line(self) -> str:
        p = self.pipeline
        cur = self.watchlist.current(self.clock())
        shard = f"shard {cur.manifest.shard_id} v{cur.manifest.version}" if cur else "no shard"
        if p is None:
            return f"starting; {shard}"
        c = p.counters.snapshot()
        matching = "matching" if p.refusal is None else f"not matching ({p.refusal.code})"
        camera = "" if self.camera is None else f"; camera {self.camera.status().state}"
        link = "" if self.events is None else (
            "; mqtt " + ("up" if self.events.link.health().connected else "down"))
        matched = c["faces"] - c["below_quality"] - c["discarded"]  # the three parts of `faces` (docs/node.md)
        return (f"{p.fps:.1f} fps, {c['faces']} faces ({c['below_quality']} low quality, {c['discarded']} no match, "
                f"{matched} matched), {c['alerts']} alerts; {shard}; {matching}{camera}{link}")

    def _drain(self, events: EventService, deadline: StopDeadline) -> None:
        """Stopping: what is in the outbox goes out while the stop timeout allows (the alerts and the
        closing checkpoint); what cannot (broker away) stays in the outbox for the next start."""
        budget = deadline.left(2 * LINK_STOP_S + STOP_MARGIN_S)
        if events.drain(budget):
            log.info("outbox drained")
        else:
            log.warning("stopping with %d outbox row(s) not yet taken by the broker (waited %.1f s); they are "
                        "kept and sent after the next start", events.outbox.stats().pending, budget)
        events.stop(LINK_STOP_S)

    def run(self, stop: threading.Event) -> int:
        if self.harden:
            disable_core_dumps()
        cfg = self.config
        identity: DeviceIdentity = load_identity(cfg.state_dir)
        self.audit = AuditLog.in_state_dir(cfg.state_dir, self.clock)
        entries = list(self.audit.entries())
        self._close_unclean_use(entries)
        self._audit("node-start", {"device_id": identity.device_id, "camera_id": cfg.camera.id,
                                   "config": str(cfg.source_file) if cfg.source_file else None,
                                   "profile": cfg.profile})
        self.effectiveness.restore(entries)
        self.quorum.restore(entries)
        self.vault = EvidenceVault.in_state_dir(cfg.state_dir, identity.storage_key(STORAGE_PURPOSE), self.clock)
        self._purge()
        store = self.store = ShardStore(cfg.state_dir)
        self.notifier.status("loading models")
        analyzer = FaceAnalyzer(cfg.vision)
        self._load_shard(store, analyzer)
        signer_key = operator_public_key(cfg.mqtt) if cfg.mqtt else self.operator_key
        sink: HoldingSink
        if cfg.mqtt is not None:
            handlers = {"shard-push": shard_push_handler(store, analyzer.embedder_spec, self._on_shard),
                        "purge": self._purge_command, "review": self._review_command}
            self.events = EventService(cfg.state_dir, identity, broker_settings(cfg, cfg.mqtt), signer_key,
                                       store.trusted_root, handlers,
                                       event_ttl=timedelta(hours=cfg.mqtt.event_ttl_hours),
                                       state_detail=self.state_detail, state_every=cfg.mqtt.state_every_s,
                                       record=self._record_command, checks={"review": self._check_review})
            sink = PrintSink(self.events.signer, self.out, self.events) if self.print_events else self.events
            self._recover_held(identity)  # before the link starts: nothing leaves unrecorded
        else:
            sink = PrintSink(EventSigner(identity, signer_key), self.out)
        self._drop_unrecorded_evidence()
        self.camera = CameraSupervisor(open_source(cfg.camera))
        live = cfg.camera.source != "replay" or cfg.camera.realtime
        self.pipeline = Pipeline(
            PipelineSettings(cfg.camera.id, cfg.tracking, live=live, replay_fps=cfg.camera.fps),
            self.camera, analyzer, DeploymentGate(self.watchlist, cfg.camera.id),
            AuditedSink(sink, self.audit, self.vault, self._retention_days), self.clock,
            self.capture_beat, self.inference_beat, self.effectiveness, self.use)
        feeder_stop = threading.Event()
        camera = self.camera
        probes: dict[str, Callable[[], bool]] = {
            # a camera that is gone is being reopened (reported on STATUS and the state topic), not stalled;
            # a read that hangs is a stall
            "capture": lambda: (self.capture_beat.progressed_within(cfg.watchdog_stall_s)
                                or camera.status().state == "reopening"),
            "inference": lambda: self.inference_beat.progressed_within(cfg.watchdog_stall_s)}
        if self.events is not None:
            events = self.events
            probes["mqtt"] = lambda: events.link.health().progressing(cfg.watchdog_stall_s)
        period = watchdog_interval()
        feeder = WatchdogFeeder(probes, self.notifier, period or 1.0)
        feeder_thread = threading.Thread(target=feeder.run, args=(feeder_stop,), name="edge-watchdog", daemon=True)
        try:
            if self.events is not None:
                self.events.start()
            self.pipeline.start()
            if period is not None:
                feeder_thread.start()
            next_status = 0.0
            next_checkpoint = time.monotonic() + CHECKPOINT_EVERY
            while not stop.is_set():
                if time.monotonic() >= next_checkpoint:
                    self._record_effectiveness()
                    self._purge()
                    self._checkpoint(identity)
                    next_checkpoint = time.monotonic() + CHECKPOINT_EVERY
                if not self.ready.is_set() and self.watchlist.current(self.clock()) is not None:
                    self.ready.set()
                    self.notifier.ready(self.status_line())
                    log.info("ready: %s", self.status_line())
                if time.monotonic() >= next_status:
                    if self.ready.is_set():
                        self.notifier.status(self.status_line())
                    else:  # still starting: a shard may come by MQTT; keep systemd's start timeout at bay
                        self.notifier.status(f"waiting for a shard; {self.status_line()}")
                        self.notifier.extend_timeout(3 * STATUS_EVERY)
                    next_status = time.monotonic() + STATUS_EVERY
                if self.pipeline.join(timeout=0.2):
                    break  # a finite replay has ended
        finally:
            deadline = StopDeadline(timeout=self.stop_timeout)
            self.notifier.stopping()
            feeder_stop.set()
            self.camera.stop()
            self.pipeline.stop()
            if self.pipeline.join(min(PIPELINE_JOIN_S, deadline.left(2 * LINK_STOP_S + STOP_MARGIN_S))):
                self.camera.close()  # only once the capture thread is out of read()
            self.use.end("node stopping")  # the inference thread wrote it, unless it is stuck
            self._record_effectiveness()
            self._audit("node-stop", {"counters": self.pipeline.counters.snapshot(),
                                      "error": self.pipeline.error})
            self._checkpoint(identity)
            if self.events is not None:
                self._drain(self.events, deadline)
            analyzer.release()
            self.watchlist.swap(None)
            self.vault.close()
        log.info("stopped: %s", self.pipeline.counters.snapshot())
        if self.pipeline.error is not None:
            log.error("the node stopped on a failure: %s", self.pipeline.error)
            return 1
        return 0
