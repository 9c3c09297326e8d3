"""Fleet -> device commands: shard push, deployment, purge, config, review. Signed by the fleet's command keys
(a review by its review keys, once the trusted root has that role: `signing_role`) and checked like shards, in a
fixed order, each failure its own error; then executed at most once.

Wire format (the one definition; `provisioning` builds commands with `command_body`): the fleet's signed
envelope {"signatures": [...], "signed": body} with body
    {type: "edge-command", schema: 1, fleet, command_id (UUIDv7), device_id, verb, issued, expires, args}
published on edge/v1/<device>/cmd/<verb>. The device answers on edge/v1/<device>/cmd-result.

A shard push is the device's desired state as well as a command: it is published retained (RETAINED_VERBS), so
the broker keeps the latest one and hands it to the device on every subscription, including the first one of a
device that had no session when it was sent. A retained copy of a command the device has already taken is
the broker showing the standing desired state again: it is let go quietly (no answer, no record), while any
other repeat is still answered as a replay (docs/mqtt.md, "Desired state").
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edge.events.ids import is_uuid7, uuid7
from edge.events.messages import command_result_body, sign_message
from edge.events.outbox import Outbox, OutboxError
from edge.events.topics import COMMAND, VERBS, TopicError, split_topic
from edge.fsutil import write_atomic
from edge.identity import DeviceIdentity, IdentityError
from edge.trust.root import (
    DocumentFormatError,
    Root,
    Signed,
    TrustedRoot,
    TrustError,
    UnknownSignerError,
    parse_envelope,
)
from edge.trust.times import TimeFormatError, format_time, now, parse_time
from edge.watchlist.shard import MAX_REVIEWERS_REQUIRED
from edge.watchlist.store import StoreError

log = logging.getLogger(__name__)

COMMAND_TYPE = "edge-command"
COMMAND_SCHEMA = 1
MAX_COMMAND_BYTES = 64 << 20  # a shard push carries the shard (base64)
MAX_VALIDITY = timedelta(days=7)  # bounds the replay memory
CLOCK_SKEW = timedelta(minutes=5)
# the verbs whose latest command is the device's desired state: published retained, delivered again on every
# (re)subscription, applied idempotently
RETAINED_VERBS = frozenset({"shard-push"})
_FIELDS = {"type", "schema", "fleet", "command_id", "device_id", "verb", "issued", "expires", "args"}


class CommandError(TrustError):
    """A command was not accepted (the subclass says which check failed)."""


class CommandTooLargeError(CommandError):
    """Over the size cap; rejected before parsing."""


class CommandFormatError(CommandError):
    """Not a command envelope, a field missing, extra or of the wrong type, or args wrong for the verb."""


class CommandNotForThisDeviceError(CommandError):
    """Addressed to another device (or arrived on a topic that is not this device's)."""


class CommandExpiredError(CommandError):
    """Past its `expires`."""


class CommandNotYetValidError(CommandError):
    """Issued in the future (beyond the clock-skew allowance)."""


class CommandReplayError(CommandError):
    """A command id this device has already accepted (each command runs at most once)."""


class CommandUnsupportedError(CommandError):
    """A verb this node has no handler for."""


class CommandFailedError(CommandError):
    """The command was valid but carrying it out failed (the reason says why)."""


class CommandRoleError(CommandError, UnknownSignerError):
    """Signed by a fleet key of another role than the verb's: a review key signing anything but a review, a
    shard key signing a command."""


class ReviewRoleError(CommandRoleError):
    """A review signed by a command key although the trusted root has a review role (docs/trust.md)."""


class TooFewReviewersError(CommandError):
    """A review names fewer distinct reviewers than the alert's deployment requires (`reviewers_required`
    in its signed deployment): nothing is recorded as a review, the evidence is kept."""


@dataclass(frozen=True)
class Command:
    command_id: str
    fleet: str
    device_id: str
    verb: str
    issued: datetime
    expires: datetime
    args: Mapping[str, Any]


def command_body(fleet: str, device_id: str, verb: str, args: Mapping[str, Any], issued: datetime,
                 lifetime: timedelta, command_id: str | None = None) -> dict[str, Any]:
    """The body the fleet signs; args and validity are checked here as the device will check them."""
    if not timedelta(0) < lifetime <= MAX_VALIDITY:
        raise CommandFormatError(f"lifetime {lifetime.total_seconds() / 3600:g} h: a command is valid for more "
                                 f"than 0 and at most {MAX_VALIDITY.days * 24} hours ({MAX_VALIDITY.days} days)")
    body = {"type": COMMAND_TYPE, "schema": COMMAND_SCHEMA, "fleet": fleet,
            "command_id": command_id or uuid7(), "device_id": device_id, "verb": verb,
            "issued": format_time(issued), "expires": format_time(issued + lifetime), "args": dict(args)}
    check_args(verb, body["args"])
    return body


def shard_push_args(shard: bytes) -> dict[str, Any]:
    return {"shard": base64.b64encode(shard).decode()}


def _str(args: Mapping[str, Any], name: str, verb: str) -> str:
    v = args.get(name)
    if not isinstance(v, str) or not 0 < len(v) <= 128:
        raise CommandFormatError(f"{verb}: args.{name}: expected a string of 1-128 characters")
    return v


REVIEW_OUTCOMES = ("confirmed", "dismissed")
MAX_REVIEWERS = 4
assert MAX_REVIEWERS_REQUIRED <= MAX_REVIEWERS  # a deployment never requires more than a review can name
REVIEW_VERB = "review"
REVIEWER_ID = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # an opaque id (badge, account), never a name


def distinct_reviewers(reviewers: Sequence[str]) -> int:
    """How many different people a review names: ids are compared casefolded, as the console's account names
    are unique in any case ("alice" and "ALICE" are one person)."""
    return len({r.casefold() for r in reviewers})


def check_args(verb: str, args: object) -> None:
    """Each verb's arguments, exactly."""
    expected = {"shard-push": {"shard"}, "deployment": {"deployment_id", "action"},
                "purge": {"deployment_id", "before"}, "config": {"set"},
                "review": {"event_id", "outcome", "reviewers"}}
    if verb not in expected:
        raise CommandFormatError(f"verb {verb!r}: expected one of {', '.join(VERBS)}")
    if not isinstance(args, dict) or set(args) != expected[verb]:
        raise CommandFormatError(f"{verb}: args must be exactly {{{', '.join(sorted(expected[verb]))}}}")
    if verb == "shard-push":
        try:
            base64.b64decode(_str_any(args, "shard", verb), validate=True)
        except binascii.Error:
            raise CommandFormatError("shard-push: args.shard: not base64") from None
    elif verb == "deployment":
        _str(args, "deployment_id", verb)
        if args["action"] != "end":
            raise CommandFormatError("deployment: args.action: expected 'end'")
    elif verb == "purge":
        _str(args, "deployment_id", verb)
        if args["before"] is not None:
            try:
                parse_time(args["before"])
            except TimeFormatError:
                # the reason is journaled and sent back: say what is wrong without echoing the value
                raise CommandFormatError("purge: args.before: expected YYYY-MM-DDTHH:MM:SSZ or null") from None
    elif verb == "review":
        if not isinstance(args["event_id"], str) or not is_uuid7(args["event_id"]):
            raise CommandFormatError("review: args.event_id: expected the alert's event id (a UUIDv7)")
        if args["outcome"] not in REVIEW_OUTCOMES:
            raise CommandFormatError(f"review: args.outcome: expected one of {', '.join(REVIEW_OUTCOMES)}")
        reviewers = args["reviewers"]
        if (not isinstance(reviewers, list) or not 1 <= len(reviewers) <= MAX_REVIEWERS
                or not all(isinstance(r, str) and REVIEWER_ID.fullmatch(r) for r in reviewers)
                or distinct_reviewers(reviewers) != len(reviewers)):
            raise CommandFormatError(f"review: args.reviewers: expected 1-{MAX_REVIEWERS} reviewer ids distinct in "
                                     "any case (1-64 of A-Z a-z 0-9 . _ @ -)")
    elif verb == "config":
        s = args["set"]
        if not isinstance(s, dict) or not s or not all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in s.items()):
            raise CommandFormatError("config: args.set: expected a non-empty {key: scalar} object")


def _str_any(args: Mapping[str, Any], name: str, verb: str) -> str:
    v = args.get(name)
    if not isinstance(v, str):
        raise CommandFormatError(f"{verb}: args.{name}: expected a string")
    return v


def signing_role(verb: str, root: Root) -> str:
    """The root role whose keys sign a command of this verb: a review by the review role once the root has
    one (under a root made before it, by the command role, as every other verb)."""
    return "review" if verb == REVIEW_VERB and root.has_role("review") else "command"


def verify_signers(root: Root, signed: Signed, verb: str) -> None:
    """The verb's role's signatures and threshold; a key of another fleet role gets its own error."""
    role = signing_role(verb, root)
    for kid, _sig in signed.signatures:
        other = root.role_of(kid)
        if kid in root.roles[role].keyids or other is None:
            continue  # a key of no role is an UnknownSignerError from root.verify
        if role == "review" and other == "command":
            raise ReviewRoleError(f"key {kid[:16]}... is a command key; root v{root.version} has a review role, "
                                  "and only its keys sign reviews")
        raise CommandRoleError(f"key {kid[:16]}... is a {other} key; a {verb} command is signed by the {role} "
                               f"role of root v{root.version}")
    root.verify(signed, role)


class SeenCommands:
    """Command ids already acted on, kept until they expire (so a replay is always recognised)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self, at: datetime) -> dict[str, str]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CommandFailedError(f"{self.path}: unreadable ({exc})") from None
        if not isinstance(doc, dict):
            raise CommandFailedError(f"{self.path}: expected {{command_id: expires}}")
        try:
            return {str(k): v for k, v in doc.items() if parse_time(v) > at}
        except TimeFormatError as exc:
            raise CommandFailedError(f"{self.path}: {exc}") from None

    def add(self, command_id: str, expires: datetime, at: datetime) -> None:
        seen = self.load(at)
        seen[command_id] = format_time(expires)
        write_atomic(self.path, json.dumps(seen, sort_keys=True).encode(), 0o600)


class CommandVerifier:
    """The order of checks: size, topic, envelope, root unexpired, signatures (the role of the topic's verb:
    `signing_role`, threshold), fields, fleet, addressee, verb = topic, validity window, replay, args."""

    def __init__(self, root: TrustedRoot, device_id: str, seen: SeenCommands,
                 max_bytes: int = MAX_COMMAND_BYTES):
        self.root = root
        self.device_id = device_id
        self.seen = seen
        self.max_bytes = max_bytes

    def verify(self, topic: str, data: bytes, at: datetime) -> Command:
        if len(data) > self.max_bytes:
            raise CommandTooLargeError(f"{len(data)} bytes exceeds the cap of {self.max_bytes}")
        try:
            device, suffix = split_topic(topic)
        except TopicError as exc:
            raise CommandNotForThisDeviceError(str(exc)) from None
        kind, _, topic_verb = suffix.partition("/")
        if device != self.device_id or kind != COMMAND:
            raise CommandNotForThisDeviceError(f"topic {topic!r} is not one of {self.device_id}'s command topics")
        try:
            signed = parse_envelope(data, COMMAND_TYPE)
        except DocumentFormatError as exc:
            raise CommandFormatError(f"envelope: {exc}") from None
        self.root.check_unexpired(at)
        verify_signers(self.root.root, signed, topic_verb)  # the body's verb must equal it (checked below)
        cmd = self._parse(signed.body)
        if cmd.fleet != self.root.root.fleet:
            raise CommandFormatError(f"fleet {cmd.fleet!r} is not this node's fleet")
        if cmd.device_id != self.device_id:
            raise CommandNotForThisDeviceError(f"addressed to {cmd.device_id!r}, this is {self.device_id!r}")
        if cmd.verb != topic_verb:
            raise CommandFormatError(f"verb {cmd.verb!r} arrived on the {topic_verb!r} topic")
        if cmd.issued > at + CLOCK_SKEW:
            raise CommandNotYetValidError(f"issued {format_time(cmd.issued)}, in the future")
        if at >= cmd.expires:
            raise CommandExpiredError(f"expired at {format_time(cmd.expires)}")
        if not cmd.issued < cmd.expires or cmd.expires - cmd.issued > MAX_VALIDITY:
            raise CommandFormatError(f"validity must be positive and at most {MAX_VALIDITY.days} days")
        if cmd.command_id in self.seen.load(at):
            raise CommandReplayError(f"command {cmd.command_id} was received before")
        check_args(cmd.verb, cmd.args)
        return cmd

    @staticmethod
    def _parse(body: Mapping[str, Any]) -> Command:
        if set(body) != _FIELDS:
            raise CommandFormatError(f"fields must be exactly {', '.join(sorted(_FIELDS))}")
        if body["schema"] != COMMAND_SCHEMA:
            raise CommandFormatError(f"schema {body['schema']!r} is not {COMMAND_SCHEMA}")
        if not is_uuid7(body["command_id"]):
            raise CommandFormatError("command_id: expected a UUIDv7")
        for name in ("fleet", "device_id", "verb"):
            if not isinstance(body[name], str):
                raise CommandFormatError(f"{name}: expected a string")
        try:
            issued, expires = parse_time(body["issued"]), parse_time(body["expires"])
        except TimeFormatError as exc:
            raise CommandFormatError(f"issued/expires: {exc}") from None
        if not isinstance(body["args"], dict):
            raise CommandFormatError("args: expected an object")
        return Command(body["command_id"], body["fleet"], body["device_id"], body["verb"], issued, expires,
                       body["args"])


def _claimed(topic: str, payload: bytes) -> tuple[str | None, str | None]:
    """The id and verb a rejected command claims, so the fleet can match the rejection to what it sent
    (unverified: reported only alongside the rejection)."""
    verb = topic.rsplit("/", 1)[-1]
    try:
        cid = parse_envelope(payload, COMMAND_TYPE).body.get("command_id")
    except DocumentFormatError:
        cid = None
    return (cid if is_uuid7(cid) else None), (verb if verb in VERBS else None)


# A handler returns the detail for a successful answer and reports failure by raising a CommandError
# (CommandFailedError with the reason); anything else is a bug in the handler.
Handler = Callable[[Command], Mapping[str, Any]]
# A check runs before the command id is remembered, and refuses by raising a CommandError: a command it refuses
# leaves no trace in the replay memory (only in the journal), so it is answered as refused, not as a replay,
# if it comes again. A handler's own failures come after the id is remembered (at most once, even across a crash).
Check = Callable[[Command], object]  # what it returns is not used


@dataclass(frozen=True)
class CommandOutcome:
    command_id: str | None
    verb: str | None
    ok: bool
    code: str
    reason: str
    detail: Mapping[str, Any]
    answered: bool = True  # False: a retained copy of a command already taken, let go without an answer


class CommandService:
    """Receives command messages from the link (any thread), verifies and runs them one at a time on its own
    thread, and answers each on cmd-result through the outbox. Every outcome is recorded (never the args):
    in the node's audit log, or without one in STATE/commands/journal.jsonl."""

    def __init__(self, identity: DeviceIdentity, state_dir: Path, root: Callable[[], TrustedRoot],
                 handlers: Mapping[str, Handler], outbox: Outbox, result_topic: str,
                 clock: Callable[[], datetime], notify: Callable[[], None] = lambda: None,
                 result_ttl: timedelta = timedelta(days=1),
                 record: Callable[[Mapping[str, Any]], None] | None = None,
                 checks: Mapping[str, Check] | None = None):
        """`checks`: per verb, what must hold before the command is taken (e.g. a review's quorum)."""
        self.identity = identity
        self.seen = SeenCommands(state_dir / "commands" / "seen.json")
        self.record = record or journal_to(state_dir / "commands" / "journal.jsonl")
        self._root = root
        self._handlers = dict(handlers)
        self._checks = dict(checks or {})
        self._outbox = outbox
        self._result_topic = result_topic
        self._clock = clock
        self._notify = notify
        self._result_ttl = result_ttl
        self._queue: queue.Queue[tuple[str, bytes, Callable[[], None], bool]] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, topic: str, payload: bytes, ack: Callable[[], None] = lambda: None,
               retained: bool = False) -> None:
        """Called from the MQTT thread: never blocks. `ack` tells the broker the command is done with; it is
        called only once the answer is committed, so a command lost to a crash or a full queue is redelivered
        (and a redelivered command that did run is answered as a replay). `retained`: the broker delivered its
        retained copy (the desired state, on subscribing)."""
        try:
            self._queue.put_nowait((topic, payload, ack, retained))
        except queue.Full:
            self.dropped += 1
            log.warning("command queue full; a command on %s waits for redelivery", topic)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-commands", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, ack, retained = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.handle(topic, payload, retained)
            except (OutboxError, OSError) as exc:  # the answer could not be stored: no ack, redelivered later
                log.error("command on %s: the answer could not be recorded: %s", topic, exc)
                continue
            ack()

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> CommandOutcome:
        """Verify, check (the verb's `checks`), mark seen, run, answer, journal. Returns what was answered.
        A retained copy of a command already taken (every check passed but the replay check) is let go without
        an answer or a record: the broker shows the standing desired state on each subscription, and it is in
        force already."""
        at = self._clock()
        cmd: Command | None = None
        try:
            try:
                cmd = CommandVerifier(self._root(), self.identity.device_id, self.seen).verify(topic, payload, at)
            except CommandReplayError:
                if not retained:
                    raise
                cid, verb = _claimed(topic, payload)
                log.debug("retained command %s on %s was taken before; nothing to do", cid, topic)
                return CommandOutcome(cid, verb, True, "ok", "taken before (retained copy)", {}, answered=False)
            check = self._checks.get(cmd.verb)
            if check is not None:
                check(cmd)  # a refusal here is not remembered as seen
            self.seen.add(cmd.command_id, cmd.expires, at)  # before running: at most once, even across a crash
            handler = self._handlers.get(cmd.verb)
            if handler is None:
                raise CommandUnsupportedError(f"verb {cmd.verb!r} is not handled by this node")
            detail = handler(cmd)
            outcome = CommandOutcome(cmd.command_id, cmd.verb, True, "ok", "done", dict(detail))
        except (StoreError, IdentityError, OSError) as exc:  # the node's own state is at fault, not the command
            outcome = CommandOutcome(cmd.command_id if cmd else None, cmd.verb if cmd else None, False,
                                     "CommandFailedError", f"{type(exc).__name__}: {exc}", {})
            log.error("command on %s failed: %s: %s", topic, type(exc).__name__, exc)
        except TrustError as exc:
            cid, verb = (cmd.command_id, cmd.verb) if cmd else _claimed(topic, payload)
            outcome = CommandOutcome(cid, verb, False, type(exc).__name__, str(exc), {})
            log.warning("command on %s rejected: %s: %s", topic, type(exc).__name__, exc)
        self._answer(outcome, at)
        return outcome

    def _answer(self, outcome: CommandOutcome, at: datetime) -> None:
        def build(_seq: int) -> tuple[str, bytes]:
            rid = uuid7()
            body = command_result_body(rid, self.identity.device_id, outcome.command_id, outcome.verb, outcome.ok,
                                       outcome.code, outcome.reason, at, outcome.detail)
            return rid, sign_message(body, self.identity.signing_key)

        self._outbox.enqueue(self._result_topic, (at + self._result_ttl).timestamp(), build)
        self._notify()
        self.record({"command_id": outcome.command_id, "verb": outcome.verb, "ok": outcome.ok,
                     "code": outcome.code, "reason": outcome.reason[:MAX_RECORDED_REASON]})


MAX_RECORDED_REASON = 500


def journal_to(path: Path) -> Callable[[Mapping[str, Any]], None]:
    """Command outcomes as JSON lines in a file (a service without an audit log)."""
    def write(outcome: Mapping[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as f:
            f.write(json.dumps({"ts": format_time(now()), **outcome}) + "\n")
    return write
