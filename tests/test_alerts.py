"""An alert's way out (edge.alerts) with the real outbox, audit log, evidence vault and device keys: recorded
before it is released, held when it cannot be recorded, and held rows a crash left put on the record."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from mqttworld import make_broker
from shardworld import World, make_world

from edge.alerts import AuditedSink, recover_held_alerts
from edge.audit import AuditError, AuditLog
from edge.deployment import Effectiveness, RaisedAlert
from edge.events.messages import MATCH_EVENT, MatchEvent, ModelRef, ShardRef, open_message
from edge.events.outbox import Outbox
from edge.events.service import EventService, EventSigner, HeldEvent, MatchDraft
from edge.events.topics import DeviceTopics
from edge.trust.times import now
from edge.vault import EvidenceVault

TOPICS = DeviceTopics("cam-01")
FAR = 4_000_000_000.0
FACE = b"\xff\xd8face-crop"


def draft(i: int) -> MatchDraft:
    return MatchDraft(camera_id="gate-a", deployment_id="dep-test", track_id=f"t{i}", entry_id="wl-000001",
                      score=0.95123, threshold=0.94, model=ModelRef("dlib_resnet_v1_int8", "ab" * 32),
                      shard=ShardRef("s-1", 3), frames_agreeing=4)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


def test_an_alert_is_recorded_before_release_and_stays_held_when_it_cannot_be(world: World) -> None:
    broker = make_broker(world.tmp / "broker")  # certificates only: the service is not started, nothing is sent
    service = EventService(world.tmp / "node", world.device, broker.settings("cam-01"), None,
                           world.store.trusted_root)
    audit = AuditLog(world.tmp / "audit" / "audit.jsonl", now)
    vault = EvidenceVault(world.tmp / "vault.db", world.device.storage_key("vault"), now)
    sink = AuditedSink(service, audit, vault)
    try:
        first = sink.emit(draft(1), FACE)
        assert service.outbox.held() == [] and [i.event_id for i in service.outbox.next_batch(0, 10)] == [first]
        [record] = [e.data for e in audit.entries() if e.kind == "alert"]
        assert record == {"evidence_kept": True, "event_id": first, "entry_id": "wl-000001", "score": 0.9512,
                          "threshold": 0.94, "track_id": "t1", "camera_id": "gate-a", "deployment_id": "dep-test",
                          "shard": {"id": "s-1", "version": 3}, "frames_agreeing": 4, "rule": "k_of_n"}
        assert vault.read(first).face == FACE

        audit.path.unlink()
        audit.path.mkdir()  # the log can no longer be written
        with pytest.raises(AuditError, match=r"audit\.jsonl"):
            sink.emit(draft(2), FACE)
        [held] = service.outbox.held()  # committed, but not sendable: it has no record
        assert held.event_id != first and service.outbox.next_batch(1, 10) == []
        assert service.outbox.sendable() == 1
    finally:
        service.stop(0.1)
        vault.close()


def test_held_rows_a_crash_left_are_recorded_released_or_withdrawn(world: World) -> None:
    outbox = Outbox(world.tmp / "outbox.db", world.device.storage_key("outbox"))
    audit = AuditLog(world.tmp / "audit.jsonl", now)
    signer = EventSigner(world.device, None)
    counts = Effectiveness()

    def commit(d: MatchDraft, hold: bool = True) -> str:
        event_id, expires, build = signer.prepare(d, None)
        outbox.enqueue(TOPICS.match, expires.timestamp(), build, hold=hold)
        return event_id

    unrecorded = commit(draft(1))  # killed right after the commit
    kept = commit(draft(2))  # killed after the vault stored its crops
    recorded = commit(draft(3))  # killed after its record was written
    audit.append("alert", {"event_id": recorded, "deployment_id": "dep-test"})
    counts.alert("dep-test", recorded)
    outbox.enqueue(TOPICS.match, FAR, lambda _s: ("not-an-event", b'{"type":"match-event"}'), hold=True)
    sent = commit(draft(4), hold=False)  # an ordinary row: left alone
    before = len(list(audit.entries()))

    got = recover_held_alerts(outbox, audit, counts, TOPICS.match, world.device.signing_key.public_key(), {kept})

    assert (got.recorded, got.released, got.withdrawn) == ((unrecorded, kept), (recorded,), ("not-an-event",))
    assert outbox.held() == []
    assert [i.event_id for i in outbox.next_batch(0, 10)] == [unrecorded, kept, recorded, sent]
    assert outbox.stats().dropped == 1
    new = list(audit.entries())[before:]
    assert [e.kind for e in new] == ["alert", "alert", "recovered"]
    assert new[0].data == {"evidence_kept": False, "event_id": unrecorded, "entry_id": "wl-000001", "score": 0.9512,
                           "threshold": 0.94, "track_id": "t1", "camera_id": "gate-a", "deployment_id": "dep-test",
                           "shard": {"id": "s-1", "version": 3}, "frames_agreeing": 4, "recovered": True}
    assert new[1].data["evidence_kept"] is True and new[1].data["event_id"] == kept
    assert new[2].data["event_ids"] == ["not-an-event"]
    assert counts.alerted(unrecorded) and counts.alerted(kept)
    assert counts.snapshot()["dep-test"].alerts == 3
    # a second start finds nothing more to do
    again = recover_held_alerts(outbox, audit, counts, TOPICS.match, world.device.signing_key.public_key(), set())
    assert again.recorded == again.released == again.withdrawn == () and len(list(audit.entries())) == before + 3
    outbox.close()


def test_the_deployments_figures_travel_with_the_alert(world: World) -> None:
    """A draft raised under a deployment requiring two reviewers and keeping evidence 7 days: the signed event
    carries both (the console judges and keeps it by them), the `alert` record carries reviewers_required (the
    node's review check restores it from there), and the vault keeps the crops 7 days, not the default. A held
    row a crash left is recorded with the event's own figure."""
    clock = {"now": now()}

    def at() -> datetime:
        return clock["now"]

    outbox = Outbox(world.tmp / "outbox.db", world.device.storage_key("outbox"))
    audit = AuditLog(world.tmp / "audit.jsonl", at)
    vault = EvidenceVault(world.tmp / "vault.db", world.device.storage_key("vault"), at)
    signer = EventSigner(world.device, None)
    under = replace(draft(1), reviewers_required=2, retention_days=7)

    class Holding:
        def hold(self, d: MatchDraft, crop: bytes | None, media_type: str = "image/jpeg",
                 context: bytes | None = None) -> HeldEvent:
            event_id, expires, build = signer.prepare(d, crop, media_type, context)
            seq = outbox.enqueue(TOPICS.match, expires.timestamp(), build, hold=True)
            (item,) = [i for i in outbox.held() if i.seq == seq]
            return HeldEvent(event_id, seq, item.payload)

        def release(self, held: HeldEvent) -> None:
            assert held.seq is not None
            outbox.release(held.seq)

    try:
        event_id = AuditedSink(Holding(), audit, vault).emit(under, FACE)
        (item,) = outbox.next_batch(0, 10)
        event = MatchEvent.from_body(open_message(item.payload, MATCH_EVENT, world.device.signing_key.public_key()))
        assert (event.reviewers_required, event.retention_days) == (2, 7)
        (record,) = [e.data for e in audit.entries() if e.kind == "alert"]
        assert record["reviewers_required"] == 2
        counts = Effectiveness()
        counts.restore(audit.entries())
        assert counts.raised(event_id) == RaisedAlert("dep-test", 2)
        clock["now"] = now() + timedelta(days=8)  # past 7 days of retention, well inside the default 30
        vault.purge()
        assert event_id not in vault.event_ids()

        crashed, expires, build = signer.prepare(replace(draft(2), reviewers_required=2, retention_days=7), None)
        outbox.enqueue(TOPICS.match, expires.timestamp(), build, hold=True)
        got = recover_held_alerts(outbox, audit, counts, TOPICS.match, world.device.signing_key.public_key(), set())
        assert got.recorded == (crashed,)
        assert [e.data for e in audit.entries() if e.kind == "alert"][-1]["reviewers_required"] == 2
        assert counts.raised(crashed) == RaisedAlert("dep-test", 2)
    finally:
        outbox.close()
        vault.close()
