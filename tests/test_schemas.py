"""The JSON Schemas in edge/events/schemas and docs/asyncapi.yaml against messages built by the project's own code.

No broker: every message is built with the same functions the node and the fleet tools use (signing, HPKE
sealing, command envelopes), parsed back from its canonical bytes and validated against the schema files.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from jsonschema import Draft202012Validator

from edge.events import topics
from edge.events.commands import CommandFormatError, check_args, command_body, shard_push_args
from edge.events.evidence import open_evidence, seal_evidence
from edge.events.ids import uuid7
from edge.events.messages import (
    AUDIT_CHECKPOINT,
    COMMAND_RESULT,
    MATCH_EVENT,
    STATE,
    MatchEvent,
    MessageFormatError,
    ModelRef,
    OutboxStats,
    SealedEvidence,
    ShardRef,
    audit_checkpoint_body,
    command_result_body,
    open_message,
    sign_message,
    state_body,
)
from edge.trust.root import parse_envelope, sign_document

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "edge" / "events" / "schemas"
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"
SCHEMA_FILES = ("match-event.json", "state.json", "command.json", "command-result.json", "audit-checkpoint.json")
DEVICE = "cam-01"
T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)

Doc = dict[str, Any]


def load_schema(name: str) -> Doc:
    doc: Doc = json.loads((SCHEMAS / name).read_text())
    return doc


def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_valid(name: str, doc: Doc) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(doc)]
    assert not errors, f"{name}: {errors}"


def assert_invalid(name: str, doc: Doc) -> None:
    assert not validator(name).is_valid(doc), f"{name} accepted {json.dumps(doc)[:300]}"


@pytest.fixture(scope="module")
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def operator_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def fleet_keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]


def match_event(device_key: Ed25519PrivateKey, operator_key: X25519PrivateKey | None, seq: int = 1) -> Doc:
    """A signed match event as EventService.emit builds it (with a sealed crop if an operator key is given)."""
    event_id = uuid7()
    evidence = None
    if operator_key is not None:
        evidence = seal_evidence(b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg", operator_key.public_key(),
                                 DEVICE, event_id)
    event = MatchEvent(event_id=event_id, seq=seq, device_id=DEVICE, camera_id="gate-a", deployment_id="dep-2025-03",
                       ts=T0, expires=T0 + timedelta(hours=6), track_id="t17", entry_id="wl-000042",
                       score=0.95137, threshold=0.94,
                       model=ModelRef("dlib_resnet_v1_int8", hashlib.sha256(b"model").hexdigest()),
                       shard=ShardRef("shard-north", 3), frames_agreeing=3, evidence=evidence, margin=0.031249,
                       reviewers_required=2, retention_days=31)
    doc: Doc = json.loads(sign_message(event.to_body(), device_key))
    return doc


def signed_command(keys: list[Ed25519PrivateKey], verb: str, args: Doc) -> Doc:
    """A fleet command envelope as provisioning.commands.sign_command builds it."""
    envelope = sign_document(command_body("north", DEVICE, verb, args, T0, timedelta(hours=1)), keys)
    doc: Doc = json.loads(envelope)
    return doc


COMMAND_ARGS: dict[str, Doc] = {
    "shard-push": shard_push_args(b"EDGESHD1" + bytes(range(256))),
    "deployment": {"deployment_id": "dep-2025-03", "action": "end"},
    "purge": {"deployment_id": "dep-2025-03", "before": "2025-03-01T00:00:00Z"},
    "config": {"set": {"threshold_floor": 0.9, "camera": "gate-a", "debug": False, "fps": 10}},
    "review": {"event_id": "019a0000-0000-7000-8000-000000000001", "outcome": "dismissed",
               "reviewers": ["PC-4711", "sgt.ops@force"]},
}


# -- the schema files themselves --
def _described(node: object, path: str) -> Iterator[str]:
    """Paths of properties in a schema that have no description (conditions in if/then/else only select)."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "description" not in sub:
                yield f"{path}/properties/{name}"
        for key, sub in node.items():
            if key not in ("if", "then", "else"):
                yield from _described(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _described(sub, f"{path}/{i}")


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_file_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://edge-node.invalid/schemas/{name}"
    assert schema["title"] and schema["description"]
    assert schema["additionalProperties"] is False
    optional = MatchEvent.OPTIONAL if name == "match-event.json" else frozenset()  # added after schema 1 shipped
    assert set(schema["required"]) == set(schema["properties"]) - optional, "every other field is required"
    assert not list(_described(schema, "#")), "every property has a description"


def test_schema_directory_holds_exactly_the_listed_files() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES)


# -- real messages validate --
def test_match_event_with_sealed_evidence_validates(device_key: Ed25519PrivateKey,
                                                    operator_key: X25519PrivateKey) -> None:
    doc = match_event(device_key, operator_key)
    assert doc["type"] == MATCH_EVENT and doc["evidence"] is not None
    assert set(doc) == MatchEvent.FIELDS | MatchEvent.OPTIONAL | {"sig"}
    assert_valid("match-event.json", doc)
    # the validated message is the real thing: it verifies, parses, and its crop opens for the operator
    body = open_message(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), MATCH_EVENT,
                        device_key.public_key())
    event = MatchEvent.from_body(body)
    assert event.evidence is not None
    assert open_evidence(SealedEvidence.from_json(doc["evidence"]), operator_key, DEVICE, doc["event_id"])


def test_match_event_margin_is_optional_absent_or_in_range(device_key: Ed25519PrivateKey) -> None:
    """An event from a node before `margin` (no field) validates and parses; a one-entry list's event leaves
    it out too, and reads back (as events tail prints it) without it; null is still read as absent; a margin
    outside [0, 2] is refused by the schema and by the parser."""
    doc = match_event(device_key, None)
    assert doc["margin"] == 0.0312  # rounded like the score
    old = {k: v for k, v in doc.items() if k not in ("margin", "sig")}
    older = json.loads(sign_message(old, device_key))
    assert_valid("match-event.json", older)
    event = MatchEvent.from_body(old)
    assert event.margin is None
    assert "margin" not in event.to_body()  # printed as it was sent: absent, not null
    alone = {**old, "margin": None}
    assert_valid("match-event.json", json.loads(sign_message(alone, device_key)))
    assert MatchEvent.from_body(alone).margin is None
    for bad in (-0.01, 2.5, "0.1", True):
        wrong = {**old, "margin": bad}
        assert list(validator("match-event.json").iter_errors(json.loads(sign_message(wrong, device_key))))
        with pytest.raises(MessageFormatError, match="margin"):
            MatchEvent.from_body(wrong)


def test_match_event_carries_the_deployments_reviewers_and_retention(device_key: Ed25519PrivateKey) -> None:
    """reviewers_required and retention_days travel in the signed event and read back; an event without them
    (an older node) is valid and reads as None; out-of-range values are refused by schema and parser."""
    doc = match_event(device_key, None)
    assert (doc["reviewers_required"], doc["retention_days"]) == (2, 31)
    body = {k: v for k, v in doc.items() if k != "sig"}
    event = MatchEvent.from_body(body)
    assert (event.reviewers_required, event.retention_days) == (2, 31)
    assert event.to_body() == body
    old = {k: v for k, v in body.items() if k not in ("reviewers_required", "retention_days")}
    assert_valid("match-event.json", json.loads(sign_message(old, device_key)))
    older = MatchEvent.from_body(old)
    assert (older.reviewers_required, older.retention_days) == (None, None)
    assert set(older.to_body()) == set(old)
    for name, bad in (("reviewers_required", 0), ("reviewers_required", 3), ("reviewers_required", None),
                      ("reviewers_required", True), ("retention_days", 0), ("retention_days", 367),
                      ("retention_days", "30")):
        wrong = {**body, name: bad}
        assert list(validator("match-event.json").iter_errors(json.loads(sign_message(wrong, device_key))))
        with pytest.raises(MessageFormatError, match=name):
            MatchEvent.from_body(wrong)


@pytest.mark.parametrize("media_type", ["text/html", "image/svg+xml", "application/octet-stream", "IMAGE/JPEG"])
def test_sealed_evidence_is_a_jpeg_or_png_only(device_key: Ed25519PrivateKey, operator_key: X25519PrivateKey,
                                               media_type: str) -> None:
    """A device cannot make a consumer serve its crop as anything but an image: the schema and the parser
    refuse every other media type."""
    doc = match_event(device_key, operator_key)
    doc["evidence"]["media_type"] = media_type
    assert_invalid("match-event.json", doc)
    with pytest.raises(MessageFormatError, match="media_type"):
        MatchEvent.from_body({k: v for k, v in doc.items() if k != "sig"})
    doc["evidence"]["media_type"] = "image/png"
    assert_valid("match-event.json", doc)
    assert MatchEvent.from_body({k: v for k, v in doc.items() if k != "sig"}).evidence is not None


def test_match_event_without_evidence_validates(device_key: Ed25519PrivateKey) -> None:
    doc = match_event(device_key, None, seq=7)
    assert doc["evidence"] is None
    assert_valid("match-event.json", doc)


@pytest.mark.parametrize("status", ["online", "offline"])
def test_state_validates(device_key: Ed25519PrivateKey, status: str) -> None:
    detail = {"outbox": OutboxStats(pending=2, enqueued=10, published=8, dropped=0, expired=0, unreadable=0).to_json()}
    doc: Doc = json.loads(sign_message(state_body(DEVICE, status, T0, uuid7(), detail), device_key))
    assert doc["type"] == STATE
    assert_valid("state.json", doc)


def test_state_with_effectiveness_and_vault_validates(device_key: Ed25519PrivateKey, tmp_path: Path) -> None:
    """The figures as the node builds them (edge.deployment.Effectiveness, edge.vault.EvidenceVault.stats)."""
    from dataclasses import asdict

    from edge.deployment import Effectiveness
    from edge.vault import EvidenceVault

    counts = Effectiveness()
    counts.seen("dep-1", 41)
    counts.alert("dep-1", "e1")
    counts.alert("dep-1", "e2")
    assert counts.review("e1", "dismissed") == "dep-1"
    vault = EvidenceVault(tmp_path / "v.db", bytes(32), lambda: T0)
    vault.store("e2", "dep-1", 30, b"\xff\xd8face", None)
    detail = {"outbox": OutboxStats(0, 0, 0, 0, 0, 0).to_json(),
              "effectiveness": {d: t.to_json() for d, t in counts.snapshot().items()},
              "vault": asdict(vault.stats())}
    assert detail["effectiveness"] == {"dep-1": {"faces_seen": 41, "alerts": 2, "confirmed": 0, "dismissed": 1}}
    doc: Doc = json.loads(sign_message(state_body(DEVICE, "online", T0, uuid7(), detail), device_key))
    assert_valid("state.json", doc)
    doc["detail"]["vault"]["oldest_day"] = "yesterday"
    assert_invalid("state.json", doc)
    for root in ({"version": 2, "review_role": True}, None):  # the root the node trusts (Node._root_detail)
        assert_valid("state.json", {**doc, "detail": {**detail, "root": root}})
    assert_invalid("state.json", {**doc, "detail": {**detail, "root": {"version": 0, "review_role": True}}})


def test_command_results_validate(device_key: Ed25519PrivateKey) -> None:
    done = command_result_body(uuid7(), DEVICE, uuid7(), "shard-push", True, "ok", "done", T0,
                               {"shard_id": "shard-north", "version": 3, "entries": 120, "deployment_id": "dep-1"})
    refused = command_result_body(uuid7(), DEVICE, uuid7(), "purge", False, "CommandExpiredError",
                                  "expired at 2025-03-14T08:00:00Z", T0)
    malformed = command_result_body(uuid7(), DEVICE, None, None, False, "CommandFormatError", "x" * 900, T0)
    for body in (done, refused, malformed):
        doc: Doc = json.loads(sign_message(body, device_key))
        assert doc["type"] == COMMAND_RESULT
        assert_valid("command-result.json", doc)


def test_audit_checkpoint_validates(device_key: Ed25519PrivateKey) -> None:
    body = audit_checkpoint_body(DEVICE, 42, hashlib.sha256(b"record 42").hexdigest(), T0)
    doc: Doc = json.loads(sign_message(body, device_key))
    assert doc["type"] == AUDIT_CHECKPOINT
    assert_valid("audit-checkpoint.json", doc)


@pytest.mark.parametrize("verb", topics.VERBS)
def test_signed_command_validates(fleet_keys: list[Ed25519PrivateKey], verb: str) -> None:
    doc = signed_command(fleet_keys, verb, COMMAND_ARGS[verb])
    assert len(doc["signatures"]) == 2
    assert_valid("command.json", doc)
    parse_envelope(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), "edge-command")


def test_purge_before_may_be_null(fleet_keys: list[Ed25519PrivateKey]) -> None:
    assert_valid("command.json", signed_command(fleet_keys, "purge", {"deployment_id": "dep-1", "before": None}))


# -- what must fail --
Mutation = Callable[[Doc], None]


def _set(path: str, value: object) -> Mutation:
    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = value
    return apply


def _drop(path: str) -> Mutation:
    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        del doc[last]
    return apply


MATCH_MUTATIONS: dict[str, Mutation] = {
    "extra field": _set("name", "Jane Doe"),
    "missing field": _drop("threshold"),
    "missing sig": _drop("sig"),
    "event_id not a UUIDv7 (v4)": _set("event_id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
    "event_id upper case": _set("event_id", "018f4a6e-7b1c-7abc-9def-0123456789AB"),
    "score of 2": _set("score", 2),
    "threshold below -1": _set("threshold", -1.5),
    "score as a string": _set("score", "0.95"),
    "seq 0": _set("seq", 0),
    "boolean frames_agreeing": _set("frames_agreeing", True),
    "ts with offset": _set("ts", "2025-03-14T09:26:53+00:00"),
    "ts with fraction": _set("ts", "2025-03-14T09:26:53.123Z"),
    "device id upper case": _set("device_id", "Cam-01"),
    "device id with trailing newline": _set("device_id", "cam-01\n"),
    "device id starting with -": _set("device_id", "-cam"),
    "empty entry_id": _set("entry_id", ""),
    "model sha256 upper case": _set("model.sha256", "AB" * 32),
    "extra field in model": _set("model.path", "/opt/models/x.tflite"),
    "shard version 0": _set("shard.version", 0),
    "sig upper case": _set("sig", "AB" * 64),
    "short sig": _set("sig", "ab" * 63),
    "wrong type": _set("type", "edge-state"),
    "schema 2": _set("schema", 2),
    "evidence recipient not hex": _set("evidence.recipient", "z" * 64),
    "evidence ciphertext not base64": _set("evidence.ciphertext", "not base64!"),
    "evidence ciphertext with newline": _set("evidence.ciphertext", "AAAA\n"),
    "evidence in the clear": _set("evidence.crop", "AAAA"),
}


@pytest.mark.parametrize("what", sorted(MATCH_MUTATIONS))
def test_bad_match_event_is_rejected(device_key: Ed25519PrivateKey, operator_key: X25519PrivateKey,
                                     what: str) -> None:
    doc = match_event(device_key, operator_key)
    assert_valid("match-event.json", doc)
    MATCH_MUTATIONS[what](doc)
    assert_invalid("match-event.json", doc)


def test_bad_state_is_rejected(device_key: Ed25519PrivateKey) -> None:
    good: Doc = json.loads(sign_message(state_body(DEVICE, "online", T0, uuid7(), {}), device_key))
    assert_valid("state.json", good)
    for mutate in (_set("status", "sleeping"), _set("boot_id", "boot-1"), _drop("detail"), _set("extra", 1),
                   _set("detail", {"outbox": {"pending": -1}})):
        doc = copy.deepcopy(good)
        mutate(doc)
        assert_invalid("state.json", doc)


def test_bad_command_result_is_rejected(device_key: Ed25519PrivateKey) -> None:
    good: Doc = json.loads(sign_message(
        command_result_body(uuid7(), DEVICE, uuid7(), "config", False, "CommandFailedError", "no", T0), device_key))
    assert_valid("command-result.json", good)
    for mutate in (_set("code", "ok"), _set("ok", True), _set("verb", "reboot"), _set("command_id", "c-1"),
                   _set("reason", "x" * 501), _drop("result_id"), _set("seq", 1)):
        doc = copy.deepcopy(good)
        mutate(doc)
        assert_invalid("command-result.json", doc)


def test_bad_audit_checkpoint_is_rejected(device_key: Ed25519PrivateKey) -> None:
    good: Doc = json.loads(sign_message(audit_checkpoint_body(DEVICE, 1, "cd" * 32, T0), device_key))
    assert_valid("audit-checkpoint.json", good)
    for mutate in (_set("seq", -1), _set("head", "cd" * 31), _drop("head"), _set("entries", [])):
        doc = copy.deepcopy(good)
        mutate(doc)
        assert_invalid("audit-checkpoint.json", doc)


def test_shard_push_with_purge_args_is_rejected(fleet_keys: list[Ed25519PrivateKey]) -> None:
    doc = signed_command(fleet_keys, "shard-push", COMMAND_ARGS["shard-push"])
    doc["signed"]["args"] = dict(COMMAND_ARGS["purge"])
    with pytest.raises(CommandFormatError, match="shard-push"):
        check_args("shard-push", doc["signed"]["args"])  # the device refuses it too
    assert_invalid("command.json", doc)


@pytest.mark.parametrize(("verb", "args"), [
    ("shard-push", {"shard": "not base64!"}),
    ("shard-push", {"shard": "AAAA", "extra": 1}),
    ("deployment", {"deployment_id": "dep-1", "action": "start"}),
    ("deployment", {"deployment_id": "", "action": "end"}),
    ("purge", {"deployment_id": "dep-1", "before": "2025-03-01"}),
    ("purge", {"deployment_id": "dep-1"}),
    ("config", {"set": {}}),
    ("config", {"set": {"threshold": None}}),
    ("config", {"set": {"cameras": ["a", "b"]}}),
])
def test_bad_command_args_are_rejected(fleet_keys: list[Ed25519PrivateKey], verb: str, args: Doc) -> None:
    doc = signed_command(fleet_keys, verb, COMMAND_ARGS[verb])
    doc["signed"]["args"] = args
    with pytest.raises(CommandFormatError, match=verb):
        check_args(verb, args)  # schema and device agree
    assert_invalid("command.json", doc)


def test_bad_command_envelope_is_rejected(fleet_keys: list[Ed25519PrivateKey]) -> None:
    good = signed_command(fleet_keys, "deployment", COMMAND_ARGS["deployment"])
    for mutate in (_set("signatures", []), _set("signatures", [{"keyid": "ab" * 32, "sig": "ab" * 63}]),
                   _set("extra", True), _drop("signed"), _set("signed.verb", "reboot"),
                   _set("signed.command_id", "0f8fad5b-d9cb-469f-a165-70867728950e"), _drop("signed.expires")):
        doc = copy.deepcopy(good)
        mutate(doc)
        assert_invalid("command.json", doc)


# -- docs/asyncapi.yaml --
def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, sub in node.items():
            if key == "$ref" and isinstance(sub, str):
                yield sub
            else:
                yield from _refs(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _refs(sub)


def _pointer(doc: object, fragment: str) -> object:
    """Resolve a JSON pointer ("/a/b~1c") in doc; KeyError/IndexError if it leads nowhere."""
    for raw in fragment.lstrip("/").split("/") if fragment.strip("/") else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]  # type: ignore[index]
    return doc


def load_asyncapi() -> Doc:
    doc: Doc = yaml.safe_load(ASYNCAPI.read_text())
    return doc


def test_asyncapi_is_3_0_0_and_covers_every_topic() -> None:
    doc = load_asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = [ch["address"] for ch in doc["channels"].values()]
    base = f"{topics.PREFIX}/{{device}}/"
    assert all(a.startswith(base) for a in addresses), addresses
    kinds = {a.removeprefix(base).split("/{")[0] for a in addresses}  # "cmd/{verb}" -> "cmd"
    for kind in (topics.MATCH, topics.STATE, topics.AUDIT, topics.COMMAND, topics.COMMAND_RESULT):
        assert kind in kinds, f"no channel for {kind!r}"
    # the addresses are exactly what DeviceTopics builds for a device
    t = topics.DeviceTopics(DEVICE)
    built = {t.match, t.state, t.audit, t.command_result, *(t.command(v) for v in topics.VERBS)}
    expanded = {a.replace("{device}", DEVICE).replace("{verb}", v) for a in addresses for v in topics.VERBS}
    assert built == expanded
    assert doc["components"]["parameters"]["verb"]["enum"] == list(topics.VERBS)


def test_asyncapi_operations_bindings_and_security() -> None:
    doc = load_asyncapi()
    server = doc["servers"]["mqtts"]
    schemes = [_pointer(doc, ref["$ref"].removeprefix("#")) for ref in server["security"]]
    assert [s["type"] for s in schemes] == ["X509"]  # type: ignore[index]
    assert server["bindings"]["mqtt"]["lastWill"]["retain"] is True
    actions = {name: op["action"] for name, op in doc["operations"].items()}
    assert actions == {"sendMatchEvent": "send", "sendState": "send", "sendAuditCheckpoint": "send",
                       "receiveCommand": "receive", "sendCommandResult": "send"}
    for name, op in doc["operations"].items():
        assert op["bindings"]["mqtt"]["qos"] == 1, name
    assert doc["operations"]["sendState"]["bindings"]["mqtt"]["retain"] is True
    schema_refs = set()
    for name, message in doc["components"]["messages"].items():
        assert message["payload"]["schemaFormat"] == "application/schema+json;version=draft-2020-12", name
        schema_refs.add(message["payload"]["schema"]["$ref"])
    assert schema_refs == {f"../edge/events/schemas/{f}" for f in SCHEMA_FILES}


def test_asyncapi_refs_resolve() -> None:
    doc = load_asyncapi()
    refs = list(_refs(doc))
    assert refs
    for ref in refs:
        target, _, fragment = ref.partition("#")
        if not target:
            _pointer(doc, fragment)  # a local reference leads somewhere
            continue
        assert not urlsplit(target).scheme, f"{ref}: expected a relative file reference"
        path = (ASYNCAPI.parent / target).resolve()
        assert path.is_file(), f"{ref}: {path} does not exist"
        if fragment:
            _pointer(json.loads(path.read_text()), fragment)
