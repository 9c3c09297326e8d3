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
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.audit import AuditLog
from edge.capture import CameraSupervisor, open_source
from edge.config import MqttConfig, NodeConfig
from edge.deployment import DeploymentGate, Effectiveness, UnknownAlertError
from edge.events.commands import Command, CommandFailedError
from edge.events.ids import uuid7
from edge.events.link import BrokerSettings
from edge.events.service import EventService, EventSigner, MatchDraft, shard_push_handler
from edge.identity import DeviceIdentity, load_identity
from edge.pipeline import Pipeline, PipelineSettings
from edge.systemd import Heartbeat, Notifier, WatchdogFeeder, disable_core_dumps, watchdog_interval
from edge.tls import DeviceTLS
from edge.trust.canonical import canonical
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
from edge.watchlist.store import ActiveWatchList, ShardStore

log = logging.getLogger(__name__)
STATUS_EVERY = 5.0
CHECKPOINT_EVERY = 600.0  # seconds between signed audit checkpoints (and evidence purges, effectiveness records)


class AuditedSink:
    """Records each alert once it is sent: its crops in the evidence vault (until review or retention) and a
    line in the audit log (event id, entry id, score: never an image)."""

    def __init__(self, sink: Any, audit: AuditLog, vault: EvidenceVault | None = None,
                 retention_days: Callable[[str], int] = lambda _dep: DEFAULT_RETENTION_DAYS):
        self.sink = sink
        self.audit = audit
        self.vault = vault
        self.retention_days = retention_days

    def emit(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> str:
        event_id: str = self.sink.emit(draft, crop, media_type, context)
        kept = False
        if self.vault is not None and (crop is not None or context is not None):
            try:
                self.vault.store(event_id, draft.deployment_id, self.retention_days(draft.deployment_id), crop,
                                 context, media_type)
                kept = True
            except VaultError as exc:  # the event (with its sealed crops) is out; the node's copy is not
                log.error("evidence of event %s was not kept: %s", event_id, exc)
        self.audit.append("alert", {"evidence_kept": kept,
                                    "event_id": event_id, "entry_id": draft.entry_id, "score": round(draft.score, 4),
                                    "threshold": draft.threshold, "track_id": draft.track_id,
                                    "camera_id": draft.camera_id, "deployment_id": draft.deployment_id,
                                    "shard": {"id": draft.shard.id, "version": draft.shard.version},
                                    "frames_agreeing": draft.frames_agreeing})
        return event_id


class NodeError(Exception):
    """The node cannot start (names the file or setting at fault)."""


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
    """Alerts as signed match events, one JSON line each (a node without MQTT, and the demo); with `then`,
    each event is also committed to that service's outbox and published."""

    def __init__(self, signer: EventSigner, out: TextIO, then: EventService | None = None,
                 show: Callable[[bytes], dict[str, Any]] = compact):
        self.signer = signer
        self.out = out
        self.then = then
        self.show = show
        self._seq = 0
        self._lock = threading.Lock()

    def emit(self, draft: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
             context: bytes | None = None) -> str:
        with self._lock:
            event_id, expires, build = self.signer.prepare(draft, crop, media_type, context)
            if self.then is not None:  # the outbox assigns the seq; print exactly what it will send
                sent: list[bytes] = []

                def keep(seq: int) -> tuple[str, bytes]:
                    eid, payload = build(seq)
                    sent.append(payload)
                    return eid, payload

                self.then.outbox.enqueue(self.then.link.topics.match, expires.timestamp(), keep)
                self.then.link.wake()
                payload = sent[0]
            else:
                self._seq += 1
                payload = build(self._seq)[1]
            self.out.write(canonical(self.show(payload)).decode() + "\n")
            self.out.flush()
            return event_id


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
                 print_events: bool = False, harden: bool = True):
        """`operator_key` seals evidence when there is no [mqtt] section (the demo); `print_events` also
        prints each event as a JSON line when MQTT is on."""
        self.config = config
        self.out = out
        self.operator_key = operator_key
        self.print_events = print_events
        self.harden = harden  # core dumps off for the whole process (tests running in-process opt out)
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
        self._in_use: str | None = None  # the deployment matching is running under, for start/end records
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
        m = accepted.manifest
        log.info("shard %s v%d in force (deployment %s, %d entries)", m.shard_id, m.version, m.deployment.id,
                 m.entries)
        self._audit("shard-accepted", {"shard_id": m.shard_id, "version": m.version, "entries": m.entries,
                                       "deployment_id": m.deployment.id, "authorisation": m.deployment.authorisation,
                                       "start": format_time(m.deployment.start),
                                       "end": format_time(m.deployment.end), "cameras": list(m.deployment.cameras),
                                       "retention_days": m.deployment.retention_days,
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

    def _drop_unrecorded_evidence(self) -> None:
        """Evidence is stored just before its alert is recorded; a kill in between leaves crops that no audit
        record accounts for. Nothing is kept off the record: they are deleted, and that is recorded."""
        assert self.vault is not None
        orphans = [e for e in self.vault.event_ids() if not self.effectiveness.alerted(e)]
        for event_id in orphans:
            self.vault.acknowledge(event_id)
        if orphans:
            self._audit("recovered", {"reason": "evidence with no alert record (the node stopped between storing "
                                                "it and recording the alert) was deleted",
                                      "event_ids": orphans[:20], "count": len(orphans)})

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

    def _review_command(self, cmd: Command) -> dict[str, Any]:
        """review (from the operator console): record the human decision, count it, drop the node's copy of
        the evidence. Recorded before the evidence goes, so a crash in between loses nothing on the record."""
        assert self.vault is not None and self.audit is not None
        event_id, outcome, reviewers = cmd.args["event_id"], cmd.args["outcome"], list(cmd.args["reviewers"])
        try:
            deployment_id = self.effectiveness.review(event_id, outcome)
        except UnknownAlertError as exc:
            raise CommandFailedError(str(exc)) from None
        self.audit.append("review", {"event_id": event_id, "deployment_id": deployment_id, "outcome": outcome,
                                     "reviewers": reviewers, "command_id": cmd.command_id})
        try:
            deleted = self.vault.acknowledge(event_id)
        except VaultError as exc:
            raise CommandFailedError(f"outcome recorded; the evidence could not be deleted: {exc}") from None
        return {"event_id": event_id, "outcome": outcome, "deployment_id": deployment_id,
                "evidence_deleted": deleted}

    def _track_use(self, stopping: bool = False) -> None:
        """Record when matching starts and ends under a deployment (G8: the start and end of each use)."""
        p = self.pipeline
        if not stopping and p is not None and p.refusal is None and p.shard is None:
            return  # no frame judged yet, or the pipeline is winding down: nothing has changed
        shard = None if p is None or stopping or p.refusal is not None else p.shard
        now_in_use = None if shard is None else shard.manifest.deployment.id
        if now_in_use == self._in_use:
            return
        if self._in_use is not None:
            why = "node stopping" if stopping else (
                p.refusal.code if p is not None and p.refusal is not None else "shard replaced")
            self._audit("deployment-end", {"deployment_id": self._in_use, "reason": why})
        if shard is not None:
            m = shard.manifest
            self._audit("deployment-start", {"deployment_id": m.deployment.id, "camera_id": self.config.camera.id,
                                             "shard": {"id": m.shard_id, "version": m.version},
                                             "threshold": m.deployment.threshold})
        self._in_use = now_in_use

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
        cur = self.watchlist.current(self.clock())
        detail["shard"] = None if cur is None else {
            "id": cur.manifest.shard_id, "version": cur.manifest.version,
            "deployment": cur.manifest.deployment.id, "expires": format_time(cur.manifest.expires)}
        return detail

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

    def run(self, stop: threading.Event) -> int:
        if self.harden:
            disable_core_dumps()
        cfg = self.config
        identity: DeviceIdentity = load_identity(cfg.state_dir)
        self.audit = AuditLog.in_state_dir(cfg.state_dir, self.clock)
        self._audit("node-start", {"device_id": identity.device_id, "camera_id": cfg.camera.id,
                                   "config": str(cfg.source_file) if cfg.source_file else None,
                                   "profile": cfg.profile})
        self.effectiveness.restore(self.audit.entries())
        self.vault = EvidenceVault.in_state_dir(cfg.state_dir, identity.storage_key(STORAGE_PURPOSE), self.clock)
        self._drop_unrecorded_evidence()
        self._purge()
        store = ShardStore(cfg.state_dir)
        self.notifier.status("loading models")
        analyzer = FaceAnalyzer(cfg.vision)
        self._load_shard(store, analyzer)
        signer_key = operator_public_key(cfg.mqtt) if cfg.mqtt else self.operator_key
        sink: Any
        if cfg.mqtt is not None:
            handlers = {"shard-push": shard_push_handler(store, analyzer.embedder_spec, self._on_shard),
                        "purge": self._purge_command, "review": self._review_command}
            self.events = EventService(cfg.state_dir, identity, broker_settings(cfg, cfg.mqtt), signer_key,
                                       store.trusted_root, handlers,
                                       event_ttl=timedelta(hours=cfg.mqtt.event_ttl_hours),
                                       state_detail=self.state_detail, state_every=cfg.mqtt.state_every_s,
                                       record=self._record_command)
            sink = PrintSink(self.events.signer, self.out, self.events) if self.print_events else self.events
        else:
            sink = PrintSink(EventSigner(identity, signer_key), self.out)
        sink = AuditedSink(sink, self.audit, self.vault, self._retention_days)
        self.camera = CameraSupervisor(open_source(cfg.camera))
        live = cfg.camera.source != "replay" or cfg.camera.realtime
        self.pipeline = Pipeline(
            PipelineSettings(cfg.camera.id, cfg.tracking, live=live, replay_fps=cfg.camera.fps),
            self.camera, analyzer, DeploymentGate(self.watchlist, cfg.camera.id), sink, self.clock,
            self.capture_beat, self.inference_beat, self.effectiveness)
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
                self._track_use()
        finally:
            self.notifier.stopping()
            feeder_stop.set()
            self.camera.stop()
            self.pipeline.stop()
            if self.pipeline.join(10):
                self.camera.close()  # only once the capture thread is out of read()
            self._track_use(stopping=True)
            self._record_effectiveness()
            self._audit("node-stop", {"counters": self.pipeline.counters.snapshot(),
                                      "error": self.pipeline.error})
            self._checkpoint(identity)
            if self.events is not None:
                if not stop.is_set():  # a replay that ended: give its last events a moment to go out
                    self.events.drain(10.0)
                self.events.stop()
            analyzer.release()
            self.watchlist.swap(None)
            self.vault.close()
        log.info("stopped: %s", self.pipeline.counters.snapshot())
        if self.pipeline.error is not None:
            log.error("the node stopped on a failure: %s", self.pipeline.error)
            return 1
        return 0
