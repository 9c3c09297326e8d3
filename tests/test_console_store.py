"""The console's store and decisions with real crypto and a real fleet (no broker here; tests/test_console_ingest.py
has the MQTT side): crops encrypted at rest under the console storage key, destroyed on dismissal and at
retention, the decision rules and the signed review command, the watch-list entry and its reference photo."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consolefleet import CONTEXT, FACE, Clock, SmallFleet, listed_entry, review_key_path, small_fleet

from edge.demo.run import FOOTAGE, WATCHLIST_CSV
from edge.events.commands import signing_role
from edge.events.link import BrokerSettings
from edge.events.messages import COMMAND_RESULT, command_result_body
from edge.trust.keys import key_id
from edge.trust.root import parse_envelope
from edge.trust.times import now
from edge.vision.analyzer import FaceAnalyzer
from provisioning.console.accounts import Account
from provisioning.console.service import (
    AlreadyDecidedError,
    Console,
    DuplicateReviewerError,
    EvidenceGoneError,
    ReviewerRoleError,
    UnknownAlertError,
)
from provisioning.console.store import STORAGE_KEY_FILE, AlertStore, StorageKeyError
from provisioning.link import FleetClient
from provisioning.tail import VerifiedEvent
from provisioning.watchlist import build_watchlist

PASSWORD = "a long enough password"


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SmallFleet:
    return small_fleet(tmp_path, monkeypatch)


def console_for(world: SmallFleet, tmp_path: Path, clock: Clock) -> Console:
    """A Console that is not started (no broker needed): events are fed to its intake as the ingest would."""
    unused = BrokerSettings("127.0.0.1", 1, tmp_path / "ca", tmp_path / "crt", tmp_path / "key")
    client = FleetClient.__new__(FleetClient)  # never connected: the sender is not started either
    client.settings = unused
    review = world.fleet.read_key(review_key_path(world.fleet))
    c = Console(world.fleet, tmp_path / "console", client, world.operator, review, clock)
    have = {a.name for a in c.accounts.all()}  # a console opened again on the same directory keeps its accounts
    for name, role in (("PC-4711", "reviewer"), ("PC-0815", "reviewer"), ("PC-1234", "reviewer"),
                       ("sgt-0042", "supervisor"), ("admin-1", "admin")):
        if name not in have:
            c.accounts.add(name, role, PASSWORD)
    return c


def feed(console: Console, world: SmallFleet, device: str = "cam-01", **kw: object) -> str:
    topic, event_id, payload = world.event(device, **kw)  # type: ignore[arg-type]
    checked = console.tail.check(topic, payload)
    assert isinstance(checked, VerifiedEvent), checked
    console.intake.alert(checked)
    return event_id


def account(console: Console, name: str) -> Account:
    return console.accounts.get(name)


def journal(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "console" / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def db_bytes(console_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(console_dir.rglob("*.db*")))


def test_a_verified_event_is_kept_with_its_crops_encrypted_at_rest(world: SmallFleet, tmp_path: Path) -> None:
    clock = Clock(now())
    console = console_for(world, tmp_path, clock)
    world.deployment("dep-1", retention_days=3, reviewers_required=1)
    heard: list[str] = []
    stop = console.listen(heard.append)
    event_id = feed(console, world)
    stop()
    feed(console, world, entry_id="wl-other")  # after unsubscribing: not heard
    assert heard == [event_id]

    a = console.alert(event_id)
    assert a.device_id == "cam-01" and a.camera_id == "gate-a" and a.deployment_id == "dep-1"
    assert a.score == 0.953 and a.threshold == 0.94 and a.frames_agreeing == 4 and a.outcome is None
    device_key = world.devices["cam-01"].signing_key.public_key()
    assert a.signature == f"verified by cam-01 key {key_id(device_key)[:16]}"
    assert a.has_face and a.has_context and a.evidence_note is None and a.entry is None
    assert a.reviewers_required == 1
    assert a.evidence_until == (clock.t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=3))
    assert console.evidence(event_id, "face") == (FACE, "image/jpeg")
    assert console.evidence(event_id, "context") == (CONTEXT, "image/jpeg")
    assert [x.event_id for x in console.queue()][-1] == event_id  # newest first: the second one leads

    console.store.close()
    stored = db_bytes(tmp_path / "console")
    # no JPEG anywhere in the files: neither header (3 magic bytes alone turn up in ~1% of random ciphertexts)
    assert FACE[:3] == b"\xff\xd8\xff" and FACE[:32] not in stored and CONTEXT[:32] not in stored
    assert FACE[1000:1032] not in stored and CONTEXT[1000:1032] not in stored
    key = tmp_path / "console" / STORAGE_KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32

    # the same event again (the broker redelivers after a crash before the ack): one alert, nothing restored
    again = AlertStore(tmp_path / "console", clock)
    assert len(again.alerts(decided=False)) == 2
    again.close()


def test_a_storage_key_readable_by_others_is_refused(world: SmallFleet, tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "c", now)
    store.close()
    os.chmod(tmp_path / "c" / STORAGE_KEY_FILE, 0o644)
    with pytest.raises(StorageKeyError, match=r"storage\.key: the console storage key is readable by others"):
        AlertStore(tmp_path / "c", now)


def test_crops_that_do_not_open_are_not_kept_and_the_alert_says_why(world: SmallFleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    console = console_for(world, tmp_path, Clock(now()))
    event_id = feed(console, world, sealed_to=X25519PrivateKey.generate(), context=None)
    a = console.alert(event_id)
    assert not a.has_face and not a.has_context
    assert a.evidence_note is not None and "face crop not opened" in a.evidence_note
    assert "the device sent no context crop" in a.evidence_note
    with pytest.raises(EvidenceGoneError):
        console.evidence(event_id, "face")
    with pytest.raises(UnknownAlertError):
        console.alert("019a0000-0000-7000-8000-000000000001")


@pytest.fixture()
def built(world: SmallFleet, analyzer: FaceAnalyzer) -> Iterator[SmallFleet]:
    """The world with the demo's watch list built into its fleet (entries with their reference photos)."""
    build_watchlist(world.fleet, "demo", FOOTAGE, WATCHLIST_CSV, analyzer, open(os.devnull, "w"))  # noqa: SIM115
    yield world


def test_two_reviewers_must_agree_and_the_review_command_names_both(built: SmallFleet, tmp_path: Path) -> None:
    world = built
    console = console_for(world, tmp_path, Clock(now()))
    world.deployment("dep-2", retention_days=30, reviewers_required=2)
    event_id = feed(console, world, deployment_id="dep-2", entry_id=listed_entry(world.fleet))
    assert console.alert(event_id).reviewers_required == 2

    with pytest.raises(ReviewerRoleError, match="admin-1 is an admin"):
        console.decide(event_id, account(console, "admin-1"), "confirmed", "")
    a = console.decide(event_id, account(console, "PC-4711"), "confirmed", "same scar, same ear")
    assert a.outcome is None and [d.reviewer for d in a.decisions] == ["PC-4711"]
    with pytest.raises(DuplicateReviewerError, match="PC-4711 has decided alert"):
        console.decide(event_id, account(console, "PC-4711"), "confirmed", "again")
    assert console.sender._queue.empty()  # nothing sent on one reviewer's word

    a = console.decide(event_id, account(console, "PC-0815"), "confirmed", "agreed")
    assert a.outcome == "confirmed" and a.has_face  # a confirmed alert's evidence is kept until retention
    assert [x.event_id for x in console.recent()] == [event_id] and console.queue() == []
    with pytest.raises(AlreadyDecidedError):
        console.decide(event_id, account(console, "sgt-0042"), "dismissed", "")

    command = console.sender._queue.get_nowait()
    assert command is not None and command.device_id == "cam-01"
    signed = parse_envelope(command.envelope, "edge-command")
    root = world.fleet.root()
    root.verify(signed, signing_role("review", root))  # signed by the review key (the role's threshold met)
    assert signed.body["args"] == {"event_id": event_id, "outcome": "confirmed", "reviewers": ["PC-4711", "PC-0815"]}
    assert console.store.get(event_id).review_command_id == command.command_id
    kinds = [(r["kind"], r["data"].get("account")) for r in journal(tmp_path)]
    assert ("decision", "PC-4711") in kinds and ("decision", "PC-0815") in kinds
    sent = [r["data"] for r in journal(tmp_path) if r["kind"] == "review-sent"]
    assert sent == [{"event_id": event_id, "outcome": "confirmed", "reviewers": ["PC-4711", "PC-0815"],
                     "command_id": command.command_id, "sent": True, "device_id": "cam-01"}]


def test_a_disputed_alert_waits_for_a_supervisor_and_a_dismissal_destroys_the_evidence_at_once(
        built: SmallFleet, tmp_path: Path) -> None:
    world = built
    console = console_for(world, tmp_path, Clock(now()))
    world.deployment("dep-2", retention_days=30, reviewers_required=2)
    event_id = feed(console, world, deployment_id="dep-2", entry_id=listed_entry(world.fleet))
    console.decide(event_id, account(console, "PC-4711"), "confirmed", "")
    a = console.decide(event_id, account(console, "PC-0815"), "dismissed", "not him")
    assert a.outcome is None and {d.outcome for d in a.decisions} == {"confirmed", "dismissed"}  # disputed
    with pytest.raises(ReviewerRoleError, match="disputed"):
        console.decide(event_id, account(console, "PC-1234"), "confirmed", "")
    assert console.evidence(event_id, "face")[0] == FACE

    a = console.decide(event_id, account(console, "sgt-0042"), "dismissed", "different chin")
    assert a.outcome == "dismissed" and not a.has_face and not a.has_context
    assert a.evidence_note == "evidence destroyed at once on dismissal"
    with pytest.raises(EvidenceGoneError):
        console.evidence(event_id, "face")
    assert event_id not in console.store.vault.event_ids()
    command = console.sender._queue.get_nowait()
    assert command is not None
    assert parse_envelope(command.envelope, "edge-command").body["args"]["reviewers"] == ["PC-0815", "sgt-0042"]
    destroyed = [r["data"] for r in journal(tmp_path) if r["kind"] == "evidence-destroyed"]
    assert destroyed == [{"reason": "dismissed", "event_ids": [event_id], "keys": []}]
    console.store.close()
    assert FACE[:32] not in db_bytes(tmp_path / "console")


def test_retention_destroys_the_evidence_when_its_day_is_old_enough(world: SmallFleet, tmp_path: Path) -> None:
    clock = Clock(now())
    console = console_for(world, tmp_path, clock)
    world.deployment("dep-short", retention_days=2, reviewers_required=1)
    short = feed(console, world, deployment_id="dep-short")
    long = feed(console, world, deployment_id="dep-long", retention_days=30)  # the event carries its terms
    until = console.alert(short).evidence_until
    assert console.alert(long).evidence_until - until == timedelta(days=28)

    clock.t = until - timedelta(seconds=1)
    assert console.purge_expired().event_ids == ()
    clock.t = until
    destroyed = console.purge_expired()
    assert destroyed.event_ids == (short,) and len(destroyed.keys) == 1 and destroyed.keys[0].startswith("dep-short|")
    with pytest.raises(EvidenceGoneError):
        console.evidence(short, "face")
    a = console.alert(short)
    assert a.outcome is None and not a.has_face
    assert a.evidence_note == "evidence destroyed at the deployment's retention"
    assert console.evidence(long, "face")[0] == FACE
    assert console.purge_expired().event_ids == ()  # destroyed once; the next purge finds nothing
    assert console.deployment_report() == {"dep-long": {"alerts": 1, "confirmed": 0, "dismissed": 0, "unreviewed": 1},
                                           "dep-short": {"alerts": 1, "confirmed": 0, "dismissed": 0,
                                                         "unreviewed": 1}}


def test_the_watch_list_entry_and_its_reference_photo(built: SmallFleet, tmp_path: Path) -> None:
    doc = json.loads((built.fleet.dir / "watchlists" / "demo" / "entries.json").read_text())
    entry = next(e for e in doc["entries"] if e["photos"] == ["obama.jpg"])
    console = console_for(built, tmp_path, Clock(now()))
    with pytest.raises(EvidenceGoneError, match="no alert in this console names"):
        console.reference_photo(entry["id"], 0)  # a watch-list photo only beside an alert that names it
    event_id = feed(console, built, entry_id=entry["id"])
    a = console.alert(event_id)
    assert a.entry is not None and a.entry.reference == entry["reference"] and a.entry.name == entry["name"]
    prov = entry["provenance"]
    assert (a.entry.reason, a.entry.legal_basis, a.entry.image_date, a.entry.approving_officer,
            a.entry.image_source, a.entry.photos) == (prov["reason"], prov["legal_basis"], prov["image_date"],
                                                      prov["approving_officer"], prov["image_source"], 1)
    assert console.reference_photo(entry["id"], 0) == ((FOOTAGE / "obama.jpg").read_bytes(), "image/jpeg")
    with pytest.raises(EvidenceGoneError, match="there is no number 1"):
        console.reference_photo(entry["id"], 1)
    photo = built.fleet.dir / "watchlists" / "demo" / "photos" / f"{entry['id']}-0.jpg"
    assert photo.stat().st_mode & 0o777 == 0o600
    photo.unlink()
    with pytest.raises(EvidenceGoneError, match="rebuild it"):
        console.reference_photo(entry["id"], 0)
    assert console.alert(feed(console, built, entry_id="wl-not-listed")).entry is None


def png_of(jpeg: bytes) -> bytes:
    """A real PNG of the same picture, crop-sized (the node may seal PNG crops too)."""
    import cv2
    import numpy as np
    small = cv2.resize(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), (112, 112))
    ok, data = cv2.imencode(".png", small)
    assert ok
    return bytes(data)


def test_a_crop_is_kept_only_when_its_bytes_are_the_image_type_it_declares(world: SmallFleet, tmp_path: Path) -> None:
    console = console_for(world, tmp_path, Clock(now()))
    html = b"<html><script>alert(document.cookie)</script></html>"
    event_id = feed(console, world, face=html, context=CONTEXT)  # sealed and signed by the device: still refused
    a = console.alert(event_id)
    assert not a.has_face and a.has_context
    assert a.evidence_note is not None and "face crop refused: declared 'image/jpeg'" in a.evidence_note
    assert "application/octet-stream" in a.evidence_note
    with pytest.raises(EvidenceGoneError):
        console.evidence(event_id, "face")
    assert console.evidence(event_id, "context") == (CONTEXT, "image/jpeg")
    assert a.confirm_blocked is not None and a.confirm_blocked.startswith("no face crop to compare")

    png = png_of(FACE)
    mislabelled = feed(console, world, face=png, context=None)  # a PNG said to be a JPEG: refused too
    assert not console.alert(mislabelled).has_face
    labelled = feed(console, world, face=png, context=None, media_type="image/png")
    assert console.evidence(labelled, "face") == (png, "image/png")


def test_an_alert_takes_its_terms_from_the_event_then_the_record_else_fails_closed(
        world: SmallFleet, tmp_path: Path) -> None:
    clock = Clock(now())
    console = console_for(world, tmp_path, clock)
    midnight = clock.t.replace(hour=0, minute=0, second=0, microsecond=0)
    world.deployment("dep-rec", retention_days=30, reviewers_required=1)
    carried = console.alert(feed(console, world, deployment_id="dep-rec", reviewers_required=2, retention_days=5))
    assert (carried.reviewers_required, carried.evidence_until) == (2, midnight + timedelta(days=5))
    assert carried.terms_note.startswith("from the signed event")
    recorded = console.alert(feed(console, world, deployment_id="dep-rec"))
    assert (recorded.reviewers_required, recorded.evidence_until) == (1, midnight + timedelta(days=30))
    assert recorded.terms_note == "from the fleet's record of deployment dep-rec"
    unknown = console.alert(feed(console, world, deployment_id="dep-elsewhere"))
    assert (unknown.reviewers_required, unknown.evidence_until) == (2, midnight + timedelta(days=1))
    assert unknown.terms_note.startswith("fail-closed: this fleet has no record of deployment dep-elsewhere")
    (world.fleet.dir / "deployments" / "dep-bad.json").write_text("{not json")
    damaged = console.alert(feed(console, world, deployment_id="dep-bad"))
    assert damaged.reviewers_required == 2 and "dep-bad cannot be read" in damaged.terms_note

    # one reviewer cannot decide the fail-closed alert alone
    console.decide(unknown.event_id, account(console, "PC-4711"), "dismissed", "")
    assert console.alert(unknown.event_id).outcome is None and console.sender._queue.empty()


def test_confirm_is_refused_without_something_to_compare_and_dismiss_is_not(
        built: SmallFleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from provisioning.console.service import NothingToCompareError
    console = console_for(built, tmp_path, Clock(now()))
    entry = listed_entry(built.fleet)
    terms = {"reviewers_required": 1, "retention_days": 30}
    unopened = feed(console, built, entry_id=entry, sealed_to=X25519PrivateKey.generate(), **terms)
    unlisted = feed(console, built, entry_id="wl-not-listed", **terms)
    fine = feed(console, built, entry_id=entry, **terms)
    with pytest.raises(NothingToCompareError, match="confirm refused: no face crop to compare"):
        console.decide(unopened, account(console, "PC-4711"), "confirmed", "")
    with pytest.raises(NothingToCompareError, match="wl-not-listed is not in this fleet's watch lists"):
        console.decide(unlisted, account(console, "PC-4711"), "confirmed", "")
    assert console.alert(unopened).decisions == () and console.alert(fine).confirm_blocked is None
    photo = built.fleet.dir / "watchlists" / "demo" / "photos" / f"{entry}-0.jpg"
    kept = photo.read_bytes()
    photo.unlink()
    with pytest.raises(NothingToCompareError, match="reference photo cannot be shown"):
        console.decide(fine, account(console, "PC-4711"), "confirmed", "")
    photo.write_bytes(kept)
    assert console.decide(fine, account(console, "PC-4711"), "confirmed", "").outcome == "confirmed"
    assert console.decide(unlisted, account(console, "PC-4711"), "dismissed", "").outcome == "dismissed"


def test_a_decision_by_an_account_disabled_before_the_outcome_stands_does_not_count(
        built: SmallFleet, tmp_path: Path) -> None:
    console = console_for(built, tmp_path, Clock(now()))
    event_id = feed(console, built, entry_id=listed_entry(built.fleet), reviewers_required=2, retention_days=30)
    console.decide(event_id, account(console, "PC-4711"), "confirmed", "")
    console.accounts.disable("PC-4711")
    a = console.decide(event_id, account(console, "PC-0815"), "confirmed", "")
    assert a.outcome is None and [(d.reviewer, d.counts) for d in a.decisions] == [("PC-4711", False),
                                                                                  ("PC-0815", True)]
    a = console.decide(event_id, account(console, "PC-1234"), "confirmed", "")
    assert a.outcome == "confirmed"
    command = console.sender._queue.get_nowait()
    assert command is not None
    assert parse_envelope(command.envelope, "edge-command").body["args"]["reviewers"] == ["PC-0815", "PC-1234"]


def test_review_commands_survive_a_restart_and_are_sent_again_until_the_node_answers(
        built: SmallFleet, tmp_path: Path) -> None:
    clock = Clock(now())
    first = console_for(built, tmp_path, clock)
    entry = listed_entry(built.fleet)
    answered, waiting, expiring = (feed(first, built, entry_id=entry, reviewers_required=1, retention_days=30)
                                   for _ in range(3))
    commands = {}
    for event_id in (answered, waiting, expiring):
        first.decide(event_id, account(first, "PC-4711"), "confirmed", "")
        command = first.sender._queue.get_nowait()
        assert command is not None
        commands[event_id] = command
    ok = command_result_body("019a0000-0000-7000-8000-0000000000aa", "cam-01", commands[answered].command_id,
                             "review", True, "ok", "done", now())
    first.intake.device_message("cam-01", COMMAND_RESULT, ok)
    assert first.alert(answered).node_answer == "recorded"
    # an outcome decided while the console had no review key: not sent
    keyless = Console(built.fleet, tmp_path / "console", first.ingest.client, built.operator, None, clock)
    first.store.close()
    unsent = feed(keyless, built, entry_id=entry, reviewers_required=1, retention_days=30)
    keyless.decide(unsent, account(keyless, "PC-0815"), "dismissed", "")
    assert (keyless.alert(unsent).node_answer or "").startswith("not sent: the console has no review key")
    keyless.store.close()

    # a restart: nothing in memory; the kept commands go out again, the unsent one is signed now
    clock.t += timedelta(hours=1)
    again = console_for(built, tmp_path, clock)
    assert again.resend_pending() == 3
    resent = drain(again)
    assert set(resent) == {waiting, expiring, unsent}
    assert resent[waiting].envelope == commands[waiting].envelope  # the same signed command: the node takes it once
    assert resent[unsent].command_id == again.store.get(unsent).review_command_id
    assert parse_envelope(resent[unsent].envelope, "edge-command").body["args"] == {
        "event_id": unsent, "outcome": "dismissed", "reviewers": ["PC-0815"]}
    # the node had the command already (its first answer lost): that does not undo a recorded answer elsewhere
    replay = command_result_body("019a0000-0000-7000-8000-0000000000ab", "cam-01", commands[waiting].command_id,
                                 "review", False, "CommandReplayError", "command was received before", now())
    again.intake.device_message("cam-01", COMMAND_RESULT, replay)
    assert (again.alert(waiting).node_answer or "").startswith("the node had this command already")
    again.store.close()

    # eight days on, the kept command has expired: a new one is signed (a new id), the answered ones are left alone
    clock.t += timedelta(days=8)
    later = console_for(built, tmp_path, clock)
    assert later.resend_pending() == 2
    fresh = drain(later)
    assert set(fresh) == {expiring, unsent} and fresh[expiring].command_id != commands[expiring].command_id
    sent = [r["data"] for r in journal(tmp_path) if r["kind"] == "review-sent" and r["data"].get("resent")]
    assert len(sent) == 5
    later.store.close()


def drain(console: Console) -> dict[str, Any]:
    """The review commands queued on a console that is not started, by event id."""
    out = {}
    while not console.sender._queue.empty():
        command = console.sender._queue.get_nowait()
        assert command is not None
        out[command.event_id] = command
    return out


def test_a_node_refusing_too_few_reviewers_reopens_the_alert(built: SmallFleet, tmp_path: Path) -> None:
    console = console_for(built, tmp_path, Clock(now()))
    built.deployment("dep-1", retention_days=30, reviewers_required=1)  # the fleet's record says one
    event_id = feed(console, built, entry_id=listed_entry(built.fleet))
    heard: list[str] = []
    console.listen(heard.append)
    assert console.decide(event_id, account(console, "PC-4711"), "confirmed", "").outcome == "confirmed"
    command = console.sender._queue.get_nowait()
    assert command is not None
    refusal = command_result_body("019a0000-0000-7000-8000-0000000000ac", "cam-01", command.command_id, "review",
                                  False, "TooFewReviewersError", "deployment dep-1 requires 2 distinct reviewers; "
                                  "the review names 1: nothing recorded, the evidence is kept", now())
    console.intake.device_message("cam-01", COMMAND_RESULT, refusal)
    a = console.alert(event_id)
    assert a.outcome is None and a.reviewers_required == 2 and [d.reviewer for d in a.decisions] == ["PC-4711"]
    assert a.node_answer is not None and a.node_answer.startswith("TooFewReviewersError: deployment dep-1 requires 2")
    assert [x.event_id for x in console.queue()] == [event_id] and heard == [event_id]
    console.intake.device_message("cam-01", COMMAND_RESULT, refusal)  # the same answer again: nothing more
    assert heard == [event_id]
    a = console.decide(event_id, account(console, "PC-0815"), "confirmed", "")
    assert a.outcome == "confirmed"
    second = console.sender._queue.get_nowait()
    assert second is not None and second.command_id != command.command_id
    assert parse_envelope(second.envelope, "edge-command").body["args"]["reviewers"] == ["PC-4711", "PC-0815"]
    reopened = [r["data"] for r in journal(tmp_path) if r["kind"] == "review-result" and r["data"].get("reopened")]
    assert [(r["event_id"], r["reviewers_required"]) for r in reopened] == [(event_id, 2)]


def test_a_dismissal_whose_destruction_fails_is_sent_all_the_same_and_destroyed_later(
        world: SmallFleet, tmp_path: Path) -> None:
    import sqlite3
    console = console_for(world, tmp_path, Clock(now()))
    event_id = feed(console, world, reviewers_required=1, retention_days=30)
    other = sqlite3.connect(tmp_path / "console" / "evidence" / "vault.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the vault: the deletion cannot run
    try:
        a = console.decide(event_id, account(console, "PC-4711"), "dismissed", "not him")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert a.outcome == "dismissed"
    command = console.sender._queue.get_nowait()  # queued although the destruction failed
    assert command is not None and console.store.get(event_id).review_command_id == command.command_id
    assert console.evidence(event_id, "face")[0] == FACE  # still here, for now
    assert console.store.undestroyed_dismissals() == [event_id]
    failed = [r["data"] for r in journal(tmp_path) if r["kind"] == "evidence-destroy-failed"]
    assert [f["event_id"] for f in failed] == [event_id] and "locked" in failed[0]["reason"]

    console.housekeeping()  # what the console runs every minute
    with pytest.raises(EvidenceGoneError):
        console.evidence(event_id, "face")
    assert console.store.undestroyed_dismissals() == []
    destroyed = [r["data"] for r in journal(tmp_path) if r["kind"] == "evidence-destroyed"]
    assert destroyed == [{"reason": "dismissed", "event_ids": [event_id], "keys": []}]


def test_review_keys_are_checked_against_the_roots_review_role_and_threshold(
        world: SmallFleet, tmp_path: Path) -> None:
    from provisioning.console.reviews import check_review_keys
    from provisioning.console.service import ReviewKeyError, open_console
    fleet = world.fleet
    settings = BrokerSettings("127.0.0.1", 1, tmp_path / "ca", tmp_path / "crt", tmp_path / "key")
    command_key = fleet.dir / "keys" / "command-1.pem"
    with pytest.raises(ReviewKeyError, match=r"command-1\.pem: key [0-9a-f]{16} is a command key of root v1, not of "
                                             "its review role: it cannot sign reviews; the console must not hold"):
        open_console(fleet.dir, tmp_path / "c", settings, None, command_key)
    review_1 = review_key_path(fleet)
    assert review_1.name == "review-1.pem"
    review_2, _root = fleet.add_key("review")
    fleet.set_threshold("review", 2)
    with pytest.raises(ReviewKeyError, match=r"review-1\.pem: 1 distinct review key\(s\) given; root v3 needs 2"):
        open_console(fleet.dir, tmp_path / "c", settings, None, [review_1, review_1])
    check_review_keys(fleet, [(p, fleet.read_key(p)) for p in (review_1, review_2)])  # both: the threshold is met
    with pytest.raises(ReviewKeyError, match=r"nothing\.pem: cannot read the review key"):
        open_console(fleet.dir, tmp_path / "c", settings, None, [review_1, tmp_path / "nothing.pem"])


def test_a_store_from_before_the_kept_commands_resends_only_the_unanswered(world: SmallFleet, tmp_path: Path) -> None:
    import sqlite3
    console = console_for(world, tmp_path, Clock(now()))
    answered, waiting = (feed(console, world, reviewers_required=1, retention_days=30) for _ in range(2))
    for event_id in (answered, waiting):
        console.decide(event_id, account(console, "PC-4711"), "dismissed", "")
    console.store.set_node_answer(console.store.get(answered).review_command_id or "", "recorded")
    console.store.set_node_answer(console.store.get(waiting).review_command_id or "", "no answer yet: ...", False)
    console.store.close()
    db = sqlite3.connect(tmp_path / "console" / "alerts.db")
    for column in ("terms_note", "review_envelope", "review_expires", "answer_final"):  # as the console made it
        db.execute(f"ALTER TABLE alerts DROP COLUMN {column}")
    db.commit()
    db.close()
    store = AlertStore(tmp_path / "console", now)
    assert [p.event_id for p in store.pending_reviews()] == [waiting]
    store.close()
