"""Fleet commands on the device, without a broker: every check of CommandVerifier with its own error, the
order of the checks, and CommandService answering through the outbox and journaling."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shardworld import World, make_world

from edge.events.commands import (
    CLOCK_SKEW,
    MAX_VALIDITY,
    Check,
    Command,
    CommandError,
    CommandExpiredError,
    CommandFailedError,
    CommandFormatError,
    CommandNotForThisDeviceError,
    CommandNotYetValidError,
    CommandReplayError,
    CommandService,
    CommandTooLargeError,
    CommandUnsupportedError,
    CommandVerifier,
    Handler,
    SeenCommands,
    TooFewReviewersError,
    check_args,
    command_body,
    shard_push_args,
)
from edge.events.ids import uuid7
from edge.events.messages import COMMAND_RESULT, open_message
from edge.events.outbox import Outbox
from edge.events.topics import DeviceTopics
from edge.trust.canonical import canonical
from edge.trust.root import BadSignatureError, RootExpiredError, TrustError, UnknownSignerError, sign_document
from edge.trust.times import format_time, now
from provisioning.commands import sign_command

TOPICS = DeviceTopics("cam-01")
AT = now().replace(microsecond=0)
HOUR = timedelta(hours=1)
VALID_ARGS: dict[str, dict[str, Any]] = {
    "shard-push": shard_push_args(b"\x00shard bytes\xff"),
    "deployment": {"deployment_id": "dep-test", "action": "end"},
    "purge": {"deployment_id": "dep-test", "before": None},
    "config": {"set": {"fps": 10, "mode": "day", "ratio": 0.5, "on": True}},
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(tmp_path, monkeypatch)


def command_key(world: World) -> Ed25519PrivateKey:
    return world.fleet.read_key(world.fleet.key_files("command")[0])


def body(verb: str = "config", args: Mapping[str, Any] | None = None, issued: datetime = AT,
         lifetime: timedelta = HOUR, device: str = "cam-01", fleet: str = "acme") -> dict[str, Any]:
    return command_body(fleet, device, verb, VALID_ARGS[verb] if args is None else args, issued, lifetime)


def sign(world: World, b: Mapping[str, Any], key: Ed25519PrivateKey | None = None) -> bytes:
    return sign_document(b, [key or command_key(world)])


def verifier(world: World, max_bytes: int | None = None) -> CommandVerifier:
    seen = SeenCommands(world.tmp / "seen.json")
    if max_bytes is None:
        return CommandVerifier(world.store.trusted_root(), "cam-01", seen)
    return CommandVerifier(world.store.trusted_root(), "cam-01", seen, max_bytes=max_bytes)


def flip_signature(data: bytes) -> bytes:
    doc = json.loads(data)
    sig = doc["signatures"][0]["sig"]
    doc["signatures"][0]["sig"] = ("1" if sig[0] == "0" else "0") + sig[1:]
    return canonical(doc)


# -- the good path --
def test_a_command_from_sign_command_is_accepted(world: World) -> None:
    cid, data = sign_command(world.fleet, "cam-01", "config", {"set": {"fps": 10}})
    at = now()
    cmd = verifier(world).verify(TOPICS.command("config"), data, at)
    assert isinstance(cmd, Command)
    assert (cmd.command_id, cmd.fleet, cmd.device_id, cmd.verb) == (cid, "acme", "cam-01", "config")
    assert cmd.args == {"set": {"fps": 10}}
    assert cmd.expires - cmd.issued == timedelta(days=1)
    assert cmd.issued <= at < cmd.expires


@pytest.mark.parametrize("verb", sorted(VALID_ARGS))
def test_every_verb_with_valid_args_is_accepted(world: World, verb: str) -> None:
    b = body(verb)
    cmd = verifier(world).verify(TOPICS.command(verb), sign(world, b), AT)
    assert (cmd.command_id, cmd.verb, dict(cmd.args)) == (b["command_id"], verb, VALID_ARGS[verb])
    assert (cmd.issued, cmd.expires) == (AT, AT + HOUR)


def test_purge_with_a_time_is_accepted(world: World) -> None:
    args = {"deployment_id": "dep-test", "before": format_time(AT - HOUR)}
    cmd = verifier(world).verify(TOPICS.command("purge"), sign(world, body("purge", args)), AT)
    assert cmd.args["before"] == format_time(AT - HOUR)


# -- each check with its own error --
def test_too_large_is_rejected_before_anything_else(world: World) -> None:
    data = sign(world, body())
    assert verifier(world, max_bytes=len(data)).verify(TOPICS.command("config"), data, AT).verb == "config"
    with pytest.raises(CommandTooLargeError):
        verifier(world, max_bytes=len(data) - 1).verify(TOPICS.command("config"), data, AT)
    with pytest.raises(CommandTooLargeError):  # even garbage on a foreign topic
        verifier(world, max_bytes=3).verify("elsewhere", b"not json at all", AT)


@pytest.mark.parametrize("topic", [
    DeviceTopics("cam-02").command("config"),  # another device's command topic
    TOPICS.state,  # this device, not a command topic
    TOPICS.command_result,
    f"{TOPICS.base}/cmdx/config",
    "edge/v2/cam-01/cmd/config",
    "config",
])
def test_a_topic_that_is_not_this_devices_command_topic(world: World, topic: str) -> None:
    with pytest.raises(CommandNotForThisDeviceError):
        verifier(world).verify(topic, sign(world, body()), AT)


@pytest.mark.parametrize("data", [
    b"",
    b"\xff\xfe not utf-8",
    b"not json",
    b'{"not":"a command"}',
    b"[]",
    b'{"signatures": [], "signed": {}}',  # whitespace: not canonical
], ids=["empty", "binary", "text", "other-object", "list", "non-canonical"])
def test_not_a_command_envelope(world: World, data: bytes) -> None:
    with pytest.raises(CommandFormatError):
        verifier(world).verify(TOPICS.command("config"), data, AT)


def test_a_non_canonical_encoding_of_a_valid_command_is_rejected(world: World) -> None:
    data = sign(world, body())
    pretty = json.dumps(json.loads(data), sort_keys=True, indent=1).encode()
    doc = json.loads(data)
    unsorted = ('{"signed":' + canonical(doc["signed"]).decode() + ',"signatures":'
                + canonical(doc["signatures"]).decode() + "}").encode()
    for variant in (pretty, unsorted, data + b"\n", b" " + data):
        with pytest.raises(CommandFormatError):
            verifier(world).verify(TOPICS.command("config"), variant, AT)
    verifier(world).verify(TOPICS.command("config"), data, AT)


def test_a_field_missing_extra_or_wrong_is_a_format_error(world: World) -> None:
    v = verifier(world)
    cases: list[Callable[[dict[str, Any]], None]] = [
        lambda b: b.pop("args"),
        lambda b: b.update(extra=1),
        lambda b: b.update(schema=2),
        lambda b: b.update(command_id="not-a-uuid"),
        lambda b: b.update(command_id="0b3c9d2e-8f0a-4c7d-9e1f-2a3b4c5d6e7f"),  # v4, not v7
        lambda b: b.update(issued="2025-01-01 00:00:00"),
        lambda b: b.update(expires=12345),
        lambda b: b.update(args=[1]),
        lambda b: b.update(verb=7),
    ]
    for edit in cases:
        b = body()
        edit(b)
        with pytest.raises(CommandFormatError):
            v.verify(TOPICS.command("config"), sign(world, b), AT)


def test_a_signature_by_an_unknown_key(world: World) -> None:
    with pytest.raises(UnknownSignerError):
        verifier(world).verify(TOPICS.command("config"), sign(world, body(), Ed25519PrivateKey.generate()), AT)
    # a fleet key of another role is not a command key either
    shard_key = world.fleet.read_key(world.fleet.key_files("shard")[0])
    with pytest.raises(UnknownSignerError):
        verifier(world).verify(TOPICS.command("config"), sign(world, body(), shard_key), AT)
    # nor does an extra good signature save a bad one
    both = sign_document(body(), [command_key(world), Ed25519PrivateKey.generate()])
    with pytest.raises(UnknownSignerError):
        verifier(world).verify(TOPICS.command("config"), both, AT)


def test_a_flipped_byte_in_the_signature(world: World) -> None:
    data = sign(world, body())
    with pytest.raises(BadSignatureError):
        verifier(world).verify(TOPICS.command("config"), flip_signature(data), AT)


def test_a_changed_body_under_a_good_signature(world: World) -> None:
    doc = json.loads(sign(world, body()))
    doc["signed"]["args"]["set"]["fps"] = 11
    with pytest.raises(BadSignatureError):
        verifier(world).verify(TOPICS.command("config"), canonical(doc), AT)


def test_an_expired_root_refuses_everything(world: World) -> None:
    root = world.store.trusted_root().root
    at = root.expires
    data = sign(world, body(issued=at - HOUR, lifetime=2 * HOUR))
    with pytest.raises(RootExpiredError):
        verifier(world).verify(TOPICS.command("config"), data, at)
    assert verifier(world).verify(TOPICS.command("config"), data, at - timedelta(seconds=1)).verb == "config"


def test_another_fleet(world: World) -> None:
    with pytest.raises(CommandFormatError, match="fleet"):
        verifier(world).verify(TOPICS.command("config"), sign(world, body(fleet="globex")), AT)


def test_addressed_to_another_device(world: World) -> None:
    with pytest.raises(CommandNotForThisDeviceError, match="cam-02"):
        verifier(world).verify(TOPICS.command("config"), sign(world, body(device="cam-02")), AT)


def test_the_verb_must_match_the_topic(world: World) -> None:
    data = sign(world, body("config"))
    for topic in (TOPICS.command("purge"), f"{TOPICS.base}/cmd", f"{TOPICS.base}/cmd/config/extra",
                  f"{TOPICS.base}/cmd/reboot"):
        with pytest.raises(CommandFormatError):
            verifier(world).verify(topic, data, AT)


def test_issued_in_the_future(world: World) -> None:
    ok = sign(world, body(issued=AT + CLOCK_SKEW))  # exactly the allowed skew
    assert verifier(world).verify(TOPICS.command("config"), ok, AT).issued == AT + CLOCK_SKEW
    late = sign(world, body(issued=AT + CLOCK_SKEW + timedelta(seconds=1)))
    with pytest.raises(CommandNotYetValidError):
        verifier(world).verify(TOPICS.command("config"), late, AT)
    with pytest.raises(CommandNotYetValidError):
        verifier(world).verify(TOPICS.command("config"), sign(world, body(issued=AT + HOUR)), AT)


def test_expired(world: World) -> None:
    data = sign(world, body(issued=AT - 2 * HOUR, lifetime=HOUR))
    with pytest.raises(CommandExpiredError):
        verifier(world).verify(TOPICS.command("config"), data, AT)
    edge = sign(world, body(issued=AT - HOUR, lifetime=HOUR))  # expires == at: already expired
    with pytest.raises(CommandExpiredError):
        verifier(world).verify(TOPICS.command("config"), edge, AT)
    verifier(world).verify(TOPICS.command("config"), edge, AT - timedelta(seconds=1))


def test_valid_for_longer_than_seven_days(world: World) -> None:
    with pytest.raises(CommandFormatError, match="at most 168 hours"):  # the builder refuses it
        body(issued=AT - HOUR, lifetime=MAX_VALIDITY + timedelta(seconds=1))
    with pytest.raises(CommandFormatError, match="more than 0"):
        body(lifetime=timedelta(0))
    b = body(issued=AT - HOUR)  # a fleet signing whatever it likes: the device refuses it
    b["expires"] = format_time(AT - HOUR + MAX_VALIDITY + timedelta(seconds=1))
    too_long = sign(world, b)
    with pytest.raises(CommandFormatError, match="7 days"):
        verifier(world).verify(TOPICS.command("config"), too_long, AT)
    just = sign(world, body(issued=AT - HOUR, lifetime=MAX_VALIDITY))
    assert verifier(world).verify(TOPICS.command("config"), just, AT).expires == AT - HOUR + MAX_VALIDITY


def test_a_replay_after_it_was_marked_seen(world: World) -> None:
    b = body()
    data = sign(world, b)
    v = verifier(world)
    cmd = v.verify(TOPICS.command("config"), data, AT)
    v.verify(TOPICS.command("config"), data, AT)  # verifying alone does not mark it seen
    v.seen.add(cmd.command_id, cmd.expires, AT)
    with pytest.raises(CommandReplayError):
        v.verify(TOPICS.command("config"), data, AT)
    with pytest.raises(CommandReplayError):  # a fresh verifier on the same file remembers
        verifier(world).verify(TOPICS.command("config"), data, AT + timedelta(minutes=30))
    # another command is not a replay
    verifier(world).verify(TOPICS.command("config"), sign(world, body()), AT)
    assert set(SeenCommands(world.tmp / "seen.json").load(AT)) == {b["command_id"]}


def test_the_replay_memory_forgets_only_expired_ids(world: World) -> None:
    seen = SeenCommands(world.tmp / "seen.json")
    a, b = uuid7(), uuid7()
    seen.add(a, AT + HOUR, AT)
    seen.add(b, AT + 2 * HOUR, AT)
    assert set(seen.load(AT)) == {a, b}
    assert set(seen.load(AT + HOUR)) == {b}
    seen.add(uuid7(), AT + 3 * HOUR, AT + HOUR)  # rewriting drops the expired one from the file
    assert a not in json.loads((world.tmp / "seen.json").read_text())


@pytest.mark.parametrize(("verb", "args"), [
    ("shard-push", {"shard": "not base64!!"}),
    ("shard-push", {"shard": 12}),
    ("shard-push", {"shard": "AAAA", "extra": "x"}),
    ("shard-push", {}),
    ("deployment", {"deployment_id": "dep-test", "action": "start"}),
    ("deployment", {"deployment_id": "", "action": "end"}),
    ("deployment", {"deployment_id": "dep-test"}),
    ("purge", {"deployment_id": "dep-test", "before": "yesterday"}),
    ("purge", {"deployment_id": "dep-test", "before": "2025-02-30T00:00:00Z"}),
    ("purge", {"deployment_id": 5, "before": None}),
    ("config", {"set": {}}),
    ("config", {"set": {"fps": [10]}}),
    ("config", {"set": {"fps": None}}),
    ("config", {"set": "fps=10"}),
    ("config", {"set": {"fps": 10}, "extra": 1}),
])
def test_bad_args_for_the_verb(world: World, verb: str, args: dict[str, Any]) -> None:
    b = body(verb)
    with pytest.raises(CommandFormatError):  # the builder refuses them too
        command_body("acme", "cam-01", verb, args, AT, HOUR)
    b["args"] = args  # bypass the builder: a fleet signing whatever it likes
    with pytest.raises(CommandFormatError, match=verb):
        verifier(world).verify(TOPICS.command(verb), sign(world, b), AT)


# -- the order of the checks --
def test_signatures_are_checked_before_content(world: World) -> None:
    v = verifier(world)
    expired = sign(world, body(issued=AT - 3 * HOUR, lifetime=HOUR))
    with pytest.raises(CommandExpiredError):
        v.verify(TOPICS.command("config"), expired, AT)
    with pytest.raises(BadSignatureError):
        v.verify(TOPICS.command("config"), flip_signature(expired), AT)

    stranger = Ed25519PrivateKey.generate()
    bad_everything = body(issued=AT + 2 * HOUR, device="cam-02", fleet="globex")
    bad_everything["args"] = {"set": {}}
    with pytest.raises(UnknownSignerError):
        v.verify(TOPICS.command("purge"), sign(world, bad_everything, stranger), AT)


@pytest.mark.parametrize(("edit", "error"), [
    # fleet before addressee before verb/topic before time before replay before args
    ({"fleet": "globex", "device_id": "cam-02"}, CommandFormatError),
    ({"device_id": "cam-02", "verb": "purge"}, CommandNotForThisDeviceError),
    ({"verb": "purge", "expires": format_time(AT - HOUR)}, CommandFormatError),
    ({"issued": format_time(AT + HOUR), "expires": format_time(AT + 2 * HOUR), "args": {"set": {}}},
     CommandNotYetValidError),
    ({"issued": format_time(AT - 2 * HOUR), "expires": format_time(AT - HOUR), "args": {"set": {}}},
     CommandExpiredError),
    ({"command_id": "SEEN", "args": {"set": {}}}, CommandReplayError),
], ids=["fleet", "device", "verb", "not-yet", "expired", "replay"])
def test_content_checks_in_order(world: World, edit: dict[str, Any], error: type[CommandError]) -> None:
    b = body()
    v = verifier(world)
    if edit.get("command_id") == "SEEN":
        v.seen.add(b["command_id"], AT + HOUR, AT)
        edit = {k: val for k, val in edit.items() if k != "command_id"}
    b.update(edit)
    with pytest.raises(error):
        v.verify(TOPICS.command("config"), sign(world, b), AT)


def test_topic_before_envelope_and_size_before_topic(world: World) -> None:
    with pytest.raises(CommandNotForThisDeviceError):
        verifier(world).verify(DeviceTopics("cam-02").command("config"), b"garbage", AT)
    with pytest.raises(CommandTooLargeError):
        verifier(world, max_bytes=4).verify(DeviceTopics("cam-02").command("config"), b"garbage", AT)


def test_every_command_error_is_a_trust_error() -> None:
    for cls in (CommandTooLargeError, CommandFormatError, CommandNotForThisDeviceError, CommandExpiredError,
                CommandNotYetValidError, CommandReplayError, CommandUnsupportedError, CommandFailedError):
        assert issubclass(cls, CommandError) and issubclass(cls, TrustError)


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"some-id": "soon"}'], ids=["garbage", "list", "bad-time"])
def test_a_damaged_replay_memory_is_a_command_failure(world: World, content: bytes,
                                                      request: pytest.FixtureRequest) -> None:
    (world.tmp / "seen.json").write_bytes(content)
    with pytest.raises(CommandFailedError):
        verifier(world).verify(TOPICS.command("config"), sign(world, body()), AT)


# -- CommandService: answers through the outbox, journals without args --
class Rig:
    def __init__(self, world: World, handlers: Mapping[str, Handler], checks: Mapping[str, Check] | None = None):
        self.world = world
        self.state = world.tmp / "node"
        self.outbox = Outbox(world.tmp / "outbox.db", world.device.storage_key("outbox"))
        self.notified = 0
        self.service = CommandService(world.device, self.state, world.store.trusted_root, handlers, self.outbox,
                                      TOPICS.command_result, clock=lambda: AT, notify=self.notify, checks=checks)

    def notify(self) -> None:
        self.notified += 1

    def results(self) -> list[dict[str, Any]]:
        items = self.outbox.next_batch(0, 100)
        assert all(i.topic == TOPICS.command_result for i in items)
        assert all(i.expires == (AT + timedelta(days=1)).timestamp() for i in items)
        key = self.world.device.signing_key.public_key()
        return [open_message(i.payload, COMMAND_RESULT, key) for i in items]

    def journal(self) -> list[str]:
        return (self.state / "commands" / "journal.jsonl").read_text().splitlines()


MARKER = "ARGS-MARKER-9d1e"


def test_a_rejected_command_is_answered_once_and_journaled_without_args(world: World) -> None:
    rig = Rig(world, {"config": lambda c: {"applied": 1}})
    b = body("config", {"set": {MARKER: MARKER + "-value"}})
    outcome = rig.service.handle(TOPICS.command("config"), sign(world, b, Ed25519PrivateKey.generate()))
    assert (outcome.ok, outcome.code, outcome.command_id, outcome.verb) == (
        False, "UnknownSignerError", b["command_id"], "config")

    (res,) = rig.results()
    assert res["ok"] is False and res["code"] == "UnknownSignerError"
    assert res["command_id"] == b["command_id"] and res["verb"] == "config"
    assert res["device_id"] == "cam-01" and res["detail"] == {} and res["ts"] == format_time(AT)
    assert rig.notified == 1
    assert rig.outbox.stats().enqueued == 1

    (line,) = rig.journal()
    entry = json.loads(line)
    assert entry["code"] == "UnknownSignerError" and entry["ok"] is False
    assert entry["command_id"] == b["command_id"]
    assert MARKER not in line and "args" not in entry
    assert rig.service.seen.load(AT) == {}  # a rejected command is not remembered


def test_a_malformed_command_is_answered_with_no_id(world: World) -> None:
    rig = Rig(world, {})
    out = rig.service.handle(TOPICS.command("purge"), b'{"not":"a command"}')
    assert (out.ok, out.code, out.command_id, out.verb) == (False, "CommandFormatError", None, "purge")
    (res,) = rig.results()
    assert (res["command_id"], res["verb"], res["code"]) == (None, "purge", "CommandFormatError")
    assert len(rig.journal()) == 1


def test_the_journal_holds_no_args_even_when_args_are_rejected(world: World) -> None:
    rig = Rig(world, {"purge": lambda c: {}})
    b = body("purge")
    b["args"] = {"deployment_id": "dep-test", "before": MARKER}
    out = rig.service.handle(TOPICS.command("purge"), sign(world, b))
    assert out.code == "CommandFormatError"
    (line,) = rig.journal()
    assert MARKER not in line


def test_a_failing_handler_is_answered_and_still_runs_at_most_once(world: World) -> None:
    calls: list[Command] = []

    def fail(cmd: Command) -> Mapping[str, Any]:
        calls.append(cmd)
        raise CommandFailedError("disk full")

    rig = Rig(world, {"deployment": fail})
    b = body("deployment")
    data = sign(world, b)
    out = rig.service.handle(TOPICS.command("deployment"), data)
    assert (out.ok, out.code, out.command_id, out.verb) == (False, "CommandFailedError", b["command_id"],
                                                            "deployment")
    again = rig.service.handle(TOPICS.command("deployment"), data)
    assert again.code == "CommandReplayError"
    assert len(calls) == 1
    res = rig.results()
    assert [(r["ok"], r["code"], r["command_id"]) for r in res] == [
        (False, "CommandFailedError", b["command_id"]), (False, "CommandReplayError", b["command_id"])]
    assert res[0]["reason"] == "disk full"
    assert [json.loads(line)["code"] for line in rig.journal()] == ["CommandFailedError", "CommandReplayError"]


def test_a_command_its_check_refuses_is_answered_and_not_remembered(world: World) -> None:
    """A verb's check (the node's review quorum) runs before the id goes into the replay memory: the refusal is
    answered and journaled, the handler never runs, and the same command sent again is judged again (refused
    the same way while the check fails, taken once it passes), never answered as a replay."""
    quorum = {"met": False}
    ran: list[str] = []

    def check(cmd: Command) -> None:
        if not quorum["met"]:
            raise TooFewReviewersError("deployment dep-test requires 2 distinct reviewers for this alert; the "
                                       "review names 1")

    def review(cmd: Command) -> Mapping[str, Any]:
        ran.append(cmd.command_id)
        return {"outcome": cmd.args["outcome"]}

    rig = Rig(world, {"review": review}, {"review": check})
    cid, data = sign_command(world.fleet, "cam-01", "review", {"event_id": uuid7(), "outcome": "confirmed",
                                                               "reviewers": ["PC-4711"]}, issued=AT)
    first = rig.service.handle(TOPICS.command("review"), data)
    second = rig.service.handle(TOPICS.command("review"), data)
    assert [(o.ok, o.code, o.command_id) for o in (first, second)] == [(False, "TooFewReviewersError", cid)] * 2
    assert ran == [] and rig.service.seen.load(AT) == {}
    quorum["met"] = True
    assert rig.service.handle(TOPICS.command("review"), data).ok
    assert ran == [cid] and list(rig.service.seen.load(AT)) == [cid]
    assert rig.service.handle(TOPICS.command("review"), data).code == "CommandReplayError"
    assert [json.loads(line)["code"] for line in rig.journal()] == [
        "TooFewReviewersError", "TooFewReviewersError", "ok", "CommandReplayError"]


@pytest.mark.parametrize("reviewers", [["alice", "ALICE"], ["PC-4711", "pc-4711", "sgt"]])
def test_a_review_naming_one_reviewer_twice_in_another_case_is_refused(world: World, reviewers: list[str]) -> None:
    """Reviewer ids are distinct in any case (console account names are): "alice" and "ALICE" are one person,
    so they cannot make up a two-reviewer quorum; the builder and the device both refuse the list."""
    args = {"event_id": uuid7(), "outcome": "confirmed", "reviewers": reviewers}
    with pytest.raises(CommandFormatError, match="distinct in any case"):
        check_args("review", args)
    b = body("review", {**args, "reviewers": ["alice"]})
    b["args"] = args  # a fleet signing whatever it likes
    with pytest.raises(CommandFormatError, match="reviewers"):
        verifier(world).verify(TOPICS.command("review"), sign_document(b, [world.fleet.read_key(
            world.fleet.key_files("review")[0])]), AT)


def test_a_verb_without_a_handler_is_unsupported(world: World) -> None:
    rig = Rig(world, {"config": lambda c: {}})
    b = body("purge")
    out = rig.service.handle(TOPICS.command("purge"), sign(world, b))
    assert (out.ok, out.code, out.command_id, out.verb) == (False, "CommandUnsupportedError", b["command_id"],
                                                            "purge")
    (res,) = rig.results()
    assert (res["ok"], res["code"], res["verb"]) == (False, "CommandUnsupportedError", "purge")
    assert json.loads(rig.journal()[0])["code"] == "CommandUnsupportedError"


def test_a_successful_handler_detail_is_in_the_result(world: World) -> None:
    got: list[Command] = []

    def apply(cmd: Command) -> Mapping[str, Any]:
        got.append(cmd)
        return {"applied": sorted(cmd.args["set"]), "version": 3}

    rig = Rig(world, {"config": apply})
    cid, data = sign_command(world.fleet, "cam-01", "config", {"set": {MARKER: 1, "fps": 12}}, issued=AT)
    out = rig.service.handle(TOPICS.command("config"), data)
    assert (out.ok, out.code, out.reason, out.command_id) == (True, "ok", "done", cid)
    assert [c.command_id for c in got] == [cid] and got[0].args == {"set": {MARKER: 1, "fps": 12}}
    (res,) = rig.results()
    assert (res["ok"], res["code"], res["command_id"], res["verb"]) == (True, "ok", cid, "config")
    assert res["detail"] == {"applied": sorted(["fps", MARKER]), "version": 3}
    (line,) = rig.journal()
    assert json.loads(line)["ok"] is True and "fps" not in line
    assert list(rig.service.seen.load(AT)) == [cid]


# -- the retained desired state: a shard push the broker shows again on every subscription --
def test_a_retained_copy_of_a_command_taken_before_is_let_go_quietly(world: World) -> None:
    calls: list[str] = []
    rig = Rig(world, {"config": lambda c: calls.append(c.command_id) or {}})
    cid, data = sign_command(world.fleet, "cam-01", "config", {"set": {"fps": 10}}, issued=AT)
    first = rig.service.handle(TOPICS.command("config"), data, retained=True)  # a new id: runs, answered
    assert (first.ok, first.code, first.answered) == (True, "ok", True)
    again = rig.service.handle(TOPICS.command("config"), data, retained=True)  # the broker shows it again
    assert (again.command_id, again.ok, again.answered) == (cid, True, False)
    assert calls == [cid] and len(rig.results()) == 1 and len(rig.journal()) == 1 and rig.notified == 1
    # the same id without the retain flag is a redelivery or a re-publish: answered as a replay, as before
    replay = rig.service.handle(TOPICS.command("config"), data)
    assert (replay.code, replay.answered) == ("CommandReplayError", True)
    assert [r["code"] for r in rig.results()] == ["ok", "CommandReplayError"] and calls == [cid]


def test_a_tampered_retained_command_is_refused_and_answered(world: World) -> None:
    rig = Rig(world, {"config": lambda c: {}})
    cid, data = sign_command(world.fleet, "cam-01", "config", {"set": {"fps": 10}}, issued=AT)
    assert rig.service.handle(TOPICS.command("config"), data, retained=True).ok
    # a copy of that very command with its signature altered: the signature check comes before the replay
    # check, so it is not mistaken for the desired state seen again
    for bad in (flip_signature(data), sign(world, body(), Ed25519PrivateKey.generate())):
        out = rig.service.handle(TOPICS.command("config"), bad, retained=True)
        assert out.answered and not out.ok and out.code in ("BadSignatureError", "UnknownSignerError")
    assert [r["code"] for r in rig.results()] == ["ok", "BadSignatureError", "UnknownSignerError"]
    assert list(rig.service.seen.load(AT)) == [cid]


def test_a_shard_push_of_the_shard_in_force_is_done_without_reloading(world: World) -> None:
    from edge.events.service import shard_push_handler
    from edge.watchlist.loader import AcceptedShard

    accepted: list[AcceptedShard] = []
    rig = Rig(world, {"shard-push": shard_push_handler(world.store, world.model, accepted.append)})
    v1, v2 = world.issue().read_bytes(), world.issue().read_bytes()

    def push(shard: bytes, retained: bool = False) -> dict[str, Any]:
        _cid, data = sign_command(world.fleet, "cam-01", "shard-push", shard_push_args(shard), issued=AT)
        out = rig.service.handle(TOPICS.command("shard-push"), data, retained)
        assert out.answered
        return {"ok": out.ok, "code": out.code, **out.detail}

    try:
        assert push(v1, retained=True) == {"ok": True, "code": "ok", "shard_id": "dep-test", "version": 1,
                                           "entries": 5, "deployment_id": "dep-test", "already_in_force": False}
        same = push(v1)  # pushed again under a new command: checked again, nothing reloaded
        assert (same["ok"], same["version"], same["already_in_force"]) == (True, 1, True)
        assert len(accepted) == 1
        newer = push(v2, retained=True)
        assert (newer["ok"], newer["version"], newer["already_in_force"]) == (True, 2, False)
        assert len(accepted) == 2
        older = push(v1)
        assert (older["ok"], older["code"]) == (False, "ShardRollbackError")
        assert world.store.state()["current"]["version"] == 2 and len(accepted) == 2
        # the node's stored shard is what counts: one whose payload no longer verifies is not "in force"
        broken = bytearray(v2)
        broken[-1] ^= 1
        out = push(bytes(broken))
        assert (out["ok"], out["code"]) == (False, "ShardPayloadError")
    finally:
        for a in accepted:
            a.gallery.wipe()
