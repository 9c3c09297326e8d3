"""`edge-fleet provision`: the technician's side of serial provisioning (docs/serial-protocol.md).

    edge-fleet provision --port /dev/ttyUSB0 --fleet-dir F --broker mqtts://HOST:PORT [--device-id ID]
        OPEN -> HELLO: the device's id, keys, CSR and the fleet root it trusts (checked: this fleet's)
        signs the bundle with the fleet's command key(s) -> PROVISION -> PENDING: both ends show a 6-digit code
        the technician compares the codes and answers `yes` (any case) or types the code back; only then, and
        only within the device's confirm window (PENDING.confirm_within): registers the device (or finds it
        registered with the same keys), certifies its CSR -> CONFIRM with the certificate -> DONE;
        anything else (`y` too): CLOSE (nothing changes, on the device or in the fleet); a window that closed,
        or a CONFIRM the device refused without committing: this run's fleet records are undone
    edge-fleet provision --check --port /dev/ttyUSB0 --fleet-dir F      reads identity and state back
    edge-fleet provision --issue-token FILE --device-id ID --fleet-dir F  a signed re-provisioning token

Fleet records: F/provisioning/ID/{tls.csr, tls.crt, provisioned.json}.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import re
import secrets
import select
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import DEFAULT_CONFIG, DEFAULT_STATE_DIR
from edge.events.link import BrokerSettings, BrokerURLError
from edge.identity import IdentityError, check_device_id
from edge.provision.agent import Paths
from edge.provision.bundle import OperatorKey, new_bundle, sign_bundle, token_body
from edge.provision.errors import (
    CommitError,
    ConfirmTimeoutError,
    DeviceIdMismatchError,
    DeviceRefusedError,
    FrameError,
    LineBusyError,
    LineNoiseError,
    LinkLostError,
    MessageFieldError,
    NoFleetRootError,
    NoSessionError,
    NotInProvisioningModeError,
    ProvisionError,
    ProvisionTimeoutError,
    TechnicianAbortError,
    ToolError,
    TranscriptMismatchError,
    WrongFleetRootError,
)
from edge.provision.link import DEFAULT_BAUD, SerialLink
from edge.provision.protocol import (
    MAX_SEQ,
    REPLY_TO,
    Frame,
    MsgType,
    confirmation_code,
    decode_message,
    encode_body,
    encode_frame,
    show_code,
    transcript_hash,
)
from edge.trust.root import TrustError, sign_document
from edge.trust.times import now
from provisioning.ca import CertificateError, FleetCA, client_cn
from provisioning.fleet import Fleet, FleetError, passphrase
from provisioning.fleet_writes import FleetWrites

DEFAULT_TIMEOUT = 3.0
DEFAULT_RETRIES = 4
KEEPALIVE_EVERY = 2.0  # the agent ends a session after 10 s of silence; ping while the technician reads


class ToolSession:
    """Requests and their answers over one link: retries with the same seq (the device answers a retry
    with its first answer, so nothing is done twice), frames of other sessions ignored."""

    def __init__(self, link: SerialLink, timeout: float, retries: int, say: Callable[[str], None]) -> None:
        self.link = link
        self.timeout = timeout
        self.retries = retries
        self.say = say
        self.session = secrets.randbelow(0xFFFFFFFF) + 1
        self.seq = 0

    def request(self, mtype: MsgType, body: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """(decoded reply, reply body bytes); raises what the device answered, or ProvisionTimeoutError."""
        self.seq = self.seq % MAX_SEQ + 1
        encoded = encode_frame(Frame(mtype, self.session, self.seq, encode_body(mtype, body)))
        wait = self.timeout + self.link.transfer_time(len(encoded) + 4096)
        naks = 0
        for attempt in range(1, self.retries + 1):
            if attempt > 1:
                self.say(f"  resending {mtype.name} (try {attempt} of {self.retries})")
            self.link.write_raw(encoded)
            reply = self._await(mtype, wait)
            if isinstance(reply, str):
                naks += 1
            elif reply is not None:
                return reply
        if naks == self.retries:
            raise LineNoiseError(f"{mtype.name} arrived damaged at the device on each of {self.retries} tries "
                                 f"({reply}): a bad cable, a loose contact or a wrong baud rate")
        raise ProvisionTimeoutError(
            f"no answer from the device to {mtype.name} after {self.retries} tries of {wait:.1f} s: is the agent "
            "running (edge-node provision-agent, or edge-node-provision.service) and the cable connected?")

    def _await(self, mtype: MsgType, wait: float) -> tuple[dict[str, Any], bytes] | str | None:
        """The reply; or the device's error code for a frame it could not read; or None (no answer)."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            for item, _ in self.link.poll(left):
                if isinstance(item, FrameError):
                    self.say(f"  dropped a damaged frame from the device ({type(item).__name__}: {item})")
                    continue
                if item.session == 0 and item.type == MsgType.ERROR:  # the device could not read a frame
                    err = decode_message(item)
                    self.say(f"  the device dropped a damaged frame ({err['code']}: {err['message']})")
                    return str(err["code"])
                if item.session != self.session or item.seq != self.seq:
                    continue  # another tool's traffic, or a late answer to an earlier try
                body = decode_message(item)
                if item.type == MsgType.ERROR:
                    if body["code"] == LineBusyError.__name__:
                        raise LineBusyError(body["message"])
                    raise DeviceRefusedError(body["code"], body["message"])
                if item.type != REPLY_TO[mtype]:
                    raise MessageFieldError(f"{mtype.name} answered with {item.type.name}, expected "
                                            f"{REPLY_TO[mtype].name}")
                return body, item.body
        self.say(f"  no answer to {mtype.name} within {wait:.1f} s")
        return None

    def close(self, reason: str) -> None:
        """End the session (the device throws away anything not confirmed); best effort."""
        try:
            self.request(MsgType.CLOSE, {"reason": reason[:300]})
        except ProvisionError as exc:
            self.say(f"  (closing the session: {type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class Hello:
    """The device's HELLO as the tool received it (`body`: the exact bytes, for the transcript)."""

    device_id: str
    state: str
    ed25519: bytes
    x25519: bytes
    csr: bytes
    nonce: bytes
    fleet: str | None
    root_version: int | None
    root_sha256: bytes | None
    state_dir: str
    body: bytes

    @classmethod
    def from_reply(cls, d: Mapping[str, Any], body: bytes) -> Hello:
        """The HELLO as decoded (its fields' types and sizes are checked by the decoder), its device id
        checked as an id: a bad one is a MessageFieldError, never a crash further on."""
        try:
            check_device_id(d["device_id"])
        except IdentityError as exc:
            raise MessageFieldError(f"HELLO.device_id: {exc}") from None
        if not Path(d["state_dir"]).is_absolute():  # it goes into node.toml, which resolves from its own folder
            raise MessageFieldError(f"HELLO.state_dir: {d['state_dir']!r} is not an absolute path (an agent older "
                                    "than this tool: start it with an absolute --state-dir)")
        return cls(d["device_id"], d["state"], d["ed25519"], d["x25519"], d["csr"], d["nonce"], d["fleet"],
                   d["root_version"], d["root_sha256"], d["state_dir"], body)

    def public(self) -> dict[str, str]:
        """The public identity as `edge-fleet device add` registers it."""
        return {"device_id": self.device_id, "x25519": self.x25519.hex(), "ed25519": self.ed25519.hex()}


def _tool_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"edge-fleet provision ({user}@{socket.gethostname()})"[:80]


def check_fleet_root(fleet: Fleet, hello: Hello) -> None:
    """The device must trust a root of this fleet, byte for byte: otherwise it would refuse the bundle."""
    if hello.fleet is None or hello.root_version is None or hello.root_sha256 is None:
        raise NoFleetRootError(f"device {hello.device_id} trusts no fleet root: its image must carry "
                               f"{fleet.root_path(1)} (docs/serial-protocol.md, Trust)")
    try:
        ours = fleet.root_bytes(hello.root_version)
    except FleetError:
        ours = b""
    if hello.fleet != fleet.name or hashlib.sha256(ours).digest() != hello.root_sha256:
        raise WrongFleetRootError(
            f"device {hello.device_id} trusts fleet {hello.fleet!r} root v{hello.root_version} (sha256 "
            f"{hello.root_sha256.hex()[:16]}...), which is not fleet {fleet.name!r}'s in {fleet.dir}: a board "
            "flashed for another fleet, or the wrong --fleet-dir")


def _device_folder(fleet: Fleet, device_id: str) -> Path:
    return fleet.dir / "provisioning" / device_id


def check_device(hello: Hello, asked: str | None) -> None:
    """The device is the one the technician named: a provisioned board keeps its id, so it must be that id."""
    if asked is not None and hello.device_id != asked:
        raise DeviceIdMismatchError(f"the device reports id {hello.device_id!r}, not --device-id {asked!r} (a "
                                    "provisioned board keeps its id; is this the board you meant?)")


def check_registration(fleet: Fleet, hello: Hello) -> bool:
    """Whether the device is registered already (with exactly these keys); refuses a name taken by other
    keys, a revoked device, or a provisioned one the fleet does not know. Changes nothing."""
    if fleet.device_path(hello.device_id).exists():
        d = fleet.device(hello.device_id)
        if d.status != "active":
            raise FleetError(f"device {d.device_id!r} is {d.status}")
        if (d.x25519, d.ed25519) != (hello.x25519.hex(), hello.ed25519.hex()):
            raise DeviceIdMismatchError(
                f"device {d.device_id!r} is registered with other keys ({fleet.device_path(d.device_id)}): another "
                "board with that name, or this one was re-flashed; revoke it (edge-fleet device revoke) or choose "
                "another --device-id")
        return True
    if hello.state != "unprovisioned":
        raise FleetError(f"device {hello.device_id!r} is provisioned but not registered in {fleet.dir}")
    return False


def register(fleet: Fleet, hello: Hello, port: str, say: Callable[[str], None]) -> None:
    """Register the device, or accept that it is registered already with exactly these keys. Called only
    after the technician confirmed the code."""
    if check_registration(fleet, hello):
        say(f"device {hello.device_id} is registered already with these keys")
        return
    fleet.add_device(hello.device_id, hello.public(), Path(f"serial:{port}"))
    say(f"registered device {hello.device_id} ({fleet.device_path(hello.device_id)})")


def command_keys(fleet: Fleet) -> list[Ed25519PrivateKey]:
    keys = [fleet.read_key(p) for p in fleet.key_files("command")]
    root = fleet.root()
    if len(keys) < root.roles["command"].threshold:
        raise FleetError(f"{len(keys)} command key(s) at hand, root v{root.version} needs "
                         f"{root.roles['command'].threshold}")
    return keys


def operator_key(fleet: Fleet, name: str | None) -> OperatorKey:
    files = sorted((fleet.dir / "operators").glob("*.json"))
    if name is None:
        if not files:
            raise FleetError(f"no operator in {fleet.dir / 'operators'}: the device seals evidence to an operator's "
                             f"key, so add one first: edge-fleet operator add NAME --fleet-dir {fleet.dir}")
        if len(files) > 1:
            raise FleetError(f"{len(files)} operators in {fleet.dir / 'operators'} "
                             f"({', '.join(f.stem for f in files)}); say which with --operator NAME")
        path = files[0]
    else:
        path = fleet.dir / "operators" / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path}: no operator key ({exc}); add one with `edge-fleet operator add {name} "
                         f"--fleet-dir {fleet.dir}`") from None
    return OperatorKey.from_json(doc, str(path))


NODE_HEADER = re.compile(r"^[ \t]*\[[ \t]*node[ \t]*\][ \t]*(#.*)?$", re.MULTILINE)


def node_config(template: str | None, source: str, state_dir: str, broker: str) -> str:
    """The node.toml the device installs: the technician's template (camera, vision, a [node] profile, ...)
    with the device's own state directory (from its HELLO) in [node], and the [mqtt] section provisioning
    owns. A template may leave out [node] state_dir or give the device's; another one is refused."""
    try:
        doc = tomllib.loads(template or "")
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{source}: not valid TOML ({exc})") from None
    if "mqtt" in doc:
        raise FleetError(f"{source}: leave out [mqtt]: provisioning writes it (broker, operator key)")
    line = f"state_dir = {json.dumps(state_dir)}"
    text = (template or "").rstrip("\n")
    node = doc.get("node")
    if node is None:
        text += f"\n\n[node]\n{line}\n"
    elif not isinstance(node, dict):
        raise FleetError(f"{source}: node must be a table ([node])")
    elif "state_dir" in node:
        if node["state_dir"] != state_dir:
            raise FleetError(f"{source}: [node] state_dir {node['state_dir']!r} is not the device's state directory "
                             f"{state_dir!r} (from its HELLO): leave it out, provisioning writes the device's own")
    elif (header := NODE_HEADER.search(text)) is not None:
        text = f"{text[:header.end()]}\n{line}{text[header.end():]}"
    else:  # [node] given as dotted keys (node.profile = ...) before any table
        text = f"node.{line}\n{text}"
    text = text.lstrip("\n") + f"\n[mqtt]\nbroker = {json.dumps(broker)}\noperator_key = \"operator.json\"\n"
    try:
        merged = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        merged = {"error": str(exc)}
    want = {**doc, "node": {**(node or {}), "state_dir": state_dir},
            "mqtt": {"broker": broker, "operator_key": "operator.json"}}
    if merged != want:  # e.g. an inline node = {...}, which cannot take another key
        raise FleetError(f"{source}: cannot add the device's state_dir to its [node] (write [node] as a table, "
                         "or leave it out)")
    return text


@dataclass(frozen=True)
class ConfirmWindow:
    """How long the device waits for CONFIRM (PENDING.confirm_within), counted from just before the tool sent
    PROVISION. The device starts counting later (once it has the bundle staged), so this window closes no
    later than the device's, and a CONFIRM the device would refuse for lateness is not sent."""

    opened: float  # time.monotonic() before PROVISION's first try
    seconds: int

    def left(self) -> float:
        return self.opened + self.seconds - time.monotonic()

    def check(self, when: str) -> None:
        """ConfirmTimeoutError if the window has closed."""
        if self.left() <= 0:
            raise ConfirmTimeoutError(
                f"the device's confirm window of {self.seconds} s (PENDING.confirm_within) closed {when}: CONFIRM was "
                "not sent and the device throws the bundle away; run again")


def confirmed(answer: str, code: str) -> bool:
    """The technician's answer commits only as `yes` (any letter case) or the code typed back (spaces
    ignored); anything else, `y` included, cancels: a single key pressed without comparing must not commit."""
    answer = answer.strip()
    return answer.lower() == "yes" or (answer.replace(" ", "") == code.replace(" ", "") != "")


def ask(question: str, inp: TextIO, out: TextIO, keepalive: Callable[[], None], window: ConfirmWindow) -> str:
    """A line from the technician; the session is kept alive while they read and compare. ConfirmTimeoutError
    when the device's confirm window closes first."""
    out.write(question)
    out.flush()
    while (left := window.left()) > 0:
        ready, _, _ = select.select([inp], [], [], min(KEEPALIVE_EVERY, left))
        if ready:
            line = inp.readline()
            if not inp.isatty():
                out.write("\n")  # the answer came from a pipe: end the prompt's line
            return line.strip()
        if window.left() > 0:
            keepalive()
    out.write("\n")
    window.check("before the technician answered")
    return ""  # pragma: no cover - check() raises once the window is closed


@dataclass(frozen=True)
class Target:
    port: str
    timeout: float
    retries: int
    baudrate: int


def provision(fleet: Fleet, target: Target, device_id: str | None, broker: str, operator: str | None,
              template: Path | None, inp: TextIO, out: TextIO) -> int:
    """One provisioning run. Nothing the fleet grants (registration, certificate) exists before the
    technician confirms the code: a declined or failed run leaves the fleet and the device as they were."""
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    BrokerSettings.parse_url(broker)
    op = operator_key(fleet, operator)
    template_text = template.read_text() if template else None
    keys = command_keys(fleet)  # passphrases are asked before the line is touched
    ca = FleetCA(fleet.dir, passphrase("the fleet CA key"))
    ca.certificate()
    link = SerialLink.open(target.port, target.baudrate)
    session = ToolSession(link, target.timeout, target.retries, say)
    phase = "open"
    writes = FleetWrites(fleet.dir)
    transcript = b""
    try:
        reply, body = session.request(MsgType.OPEN, {"tool": _tool_name(), "device_id": device_id})
        hello = Hello.from_reply(reply, body)
        say(f"device {hello.device_id}: {hello.state}; Ed25519 {hello.ed25519.hex()[:16]}...; trusts fleet "
            f"{hello.fleet!r} root v{hello.root_version}")
        check_device(hello, device_id)
        if hello.state == "provisioned":
            raise NotInProvisioningModeError(
                f"device {hello.device_id} is provisioned already; `--check` reads it back; re-provisioning needs a "
                "token on the device (edge-fleet provision --issue-token)")
        check_fleet_root(fleet, hello)
        check_registration(fleet, hello)
        version = fleet.root().version
        roots = [fleet.root_bytes(v) for v in range(hello.root_version or 1, version + 1)]
        config = node_config(template_text, str(template or "--node-config"), hello.state_dir, broker)
        bundle = new_bundle(fleet.name, hello.device_id, hello.nonce, hello.body, now(), roots,
                            ca.cert_path.read_bytes(), broker, op, config)
        data = sign_bundle(bundle, keys)
        phase = "provision"
        opened = time.monotonic()
        pending, _ = session.request(MsgType.PROVISION, {"bundle": data})
        window = ConfirmWindow(opened, pending["confirm_within"])
        transcript = transcript_hash(hello.body, data)
        if pending["transcript"] != transcript:
            raise TranscriptMismatchError("the device's transcript hash differs from this tool's: a message was "
                                          "changed on the line; nothing is committed")
        code = show_code(confirmation_code(transcript))
        say(f"\nCONFIRMATION CODE  {code}\n")

        def keepalive() -> None:
            session.request(MsgType.PING, {})

        answer = ask(f"Does device {hello.device_id} show {code}? Type yes (or the code) to commit, anything else "
                     f"cancels ({window.seconds} s): ", inp, out, keepalive, window)
        if not confirmed(answer, code):
            session.close("the technician did not confirm the code")
            raise TechnicianAbortError(f"not confirmed ({answer or 'no answer'}): the device threw the bundle away "
                                       "and is as it was; nothing was registered or certified")
        window.check("before the answer came")  # a yes read just as the window closed
        # the technician vouched for this HELLO: only now does the fleet register and certify the device
        folder = _device_folder(fleet, hello.device_id)
        writes.expect(fleet.device_path(hello.device_id), folder / "tls.csr", folder / "tls.crt",
                      ca.record_path(client_cn("device", hello.device_id)))
        register(fleet, hello, target.port, say)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.csr").write_bytes(hello.csr)
        issued = ca.sign_csr("device", hello.device_id, folder / "tls.csr", folder / "tls.crt")
        say(f"issued certificate {issued.common_name} (serial {issued.serial:x}, until {issued.not_after})")
        window.check("while the fleet registered and certified the device")
        phase = "confirm"
        done, _ = session.request(MsgType.CONFIRM, {"transcript": transcript,
                                                    "certificate": (folder / "tls.crt").read_bytes()})
        phase = "done"
        record = {"device_id": done["device_id"], "committed": done["committed"], "bundle_id": bundle.bundle_id,
                  "transcript": transcript.hex(), "code": code.replace(" ", ""), "cert_serial": f"{issued.serial:x}",
                  "cert_not_after": issued.not_after, "fleet": fleet.name, "root_version": version,
                  "broker": broker, "operator": op.name, "audit_seq": done["audit_seq"], "port": target.port}
        (folder / "provisioned.json").write_text(json.dumps(record, indent=1) + "\n")
        session.close("done")
        say(f"PROVISIONED {done['device_id']} at {done['committed']}: fleet {fleet.name!r} root v{version}, "
            f"certificate serial {issued.serial:x} until {issued.not_after}, broker {broker}, operator {op.name}, "
            f"device audit record {done['audit_seq']}; record {folder / 'provisioned.json'}")
        return 0
    except (ProvisionError, FleetError, CertificateError, IdentityError, OSError) as exc:
        if phase in ("open", "provision") and not isinstance(
                exc, (LinkLostError, LineBusyError, ProvisionTimeoutError, DeviceRefusedError, TechnicianAbortError)):
            session.close(f"{type(exc).__name__}")  # the device throws away what it staged
        if phase == "confirm" and isinstance(exc, DeviceRefusedError):
            phase = _after_refused_confirm(exc, link, target, say, transcript)
        if phase in ("open", "provision"):
            undo_fleet_writes(writes, say)
        raise ToolError(exc, _device_state(phase, target.port)) from None
    finally:
        link.close()


def _after_refused_confirm(exc: DeviceRefusedError, link: SerialLink, target: Target, say: Callable[[str], None],
                           transcript: bytes) -> str:
    """The phase a refused CONFIRM leaves: "commit-failed" (the device journalled its commit and finishes it at
    its restart), "provision" (it committed nothing), or "confirm" (unknown: it may have committed)."""
    if exc.code == CommitError.__name__:
        return "commit-failed"
    if exc.code != NoSessionError.__name__:
        return "provision"  # refused inside the session that held the stage: nothing was committed
    # no session: the window closed on the device, or it committed, its DONE was lost and the session ended
    # (silence, or the agent restarted): read back what it holds
    committed = device_holds(link, target, say, transcript)
    return "provision" if committed is False else "confirm"


def device_holds(link: SerialLink, target: Target, say: Callable[[str], None], transcript: bytes) -> bool | None:
    """Whether the device's committed state is this transcript's, read back in a session of its own; None if
    it cannot be read."""
    probe = ToolSession(link, target.timeout, target.retries, say)
    try:
        probe.request(MsgType.OPEN, {"tool": _tool_name(), "device_id": None})
        status, _ = probe.request(MsgType.QUERY, {})
    except ProvisionError as exc:
        say(f"  could not read back whether the device committed ({type(exc).__name__}: {exc})")
        return None
    probe.close("read back after a refused CONFIRM")
    return bool(status["transcript"] == transcript)


def undo_fleet_writes(writes: FleetWrites, say: Callable[[str], None]) -> None:
    """Put the fleet directory back as it was before this run (the device committed nothing)."""
    try:
        changed = writes.undo()
    except OSError as exc:
        say(f"could not undo this run's fleet records ({exc}): check {', '.join(str(p.path) for p in writes.noted)}")
        return
    if changed:
        say(f"undid this run's fleet records ({', '.join(str(p.relative_to(writes.top)) for p in changed)}): the "
            "fleet is as it was before")


def _device_state(phase: str, port: str) -> str:
    if phase == "confirm":
        return (f"CONFIRM was sent but its answer did not arrive: the device may have committed. Read it back with "
                f"`edge-fleet provision --check --port {port} --fleet-dir F`")
    if phase == "commit-failed":
        return (f"the device could not finish its commit; its agent restarts and finishes it. Read it back with "
                f"`edge-fleet provision --check --port {port} --fleet-dir F`")
    if phase == "done":
        return "the device is provisioned"
    return "nothing was committed: the device is as it was before"


def check(fleet: Fleet, target: Target, device_id: str | None, out: TextIO, as_json: bool) -> int:
    """Read back identity and state; compare with the fleet's records."""
    link = SerialLink.open(target.port, target.baudrate)
    session = ToolSession(link, target.timeout, target.retries, lambda m: print(m, file=sys.stderr, flush=True))
    try:
        reply, body = session.request(MsgType.OPEN, {"tool": _tool_name(), "device_id": device_id})
        hello = Hello.from_reply(reply, body)
        status, _ = session.request(MsgType.QUERY, {})
        session.close("check done")
    except ProvisionError as exc:
        raise ToolError(exc, "nothing was changed (a check only reads)") from None
    finally:
        link.close()
    findings: list[str] = []
    registered = fleet.device_path(hello.device_id).exists()
    if registered:
        d = fleet.device(hello.device_id)
        if (d.ed25519, d.x25519) != (hello.ed25519.hex(), hello.x25519.hex()):
            findings.append("keys differ from the fleet's registration")
        if d.status != "active":
            findings.append(f"registered as {d.status}")
    elif status["state"] != "unprovisioned":
        findings.append(f"not registered in {fleet.dir}")
    if status["fleet"] is not None and status["fleet"] != fleet.name:
        findings.append(f"trusts fleet {status['fleet']!r}, not {fleet.name!r}")
    doc = {"device_id": status["device_id"], "state": status["state"], "registered": registered,
           "ed25519": status["ed25519"].hex(), "x25519": hello.x25519.hex(), "fleet": status["fleet"],
           "root_version": status["root_version"], "cert_serial": status["cert_serial"],
           "cert_not_after": status["cert_not_after"], "broker": status["broker"],
           "provisioned_at": status["provisioned_at"],
           "transcript": status["transcript"].hex() if status["transcript"] else None,
           "config_sha256": status["config_sha256"].hex() if status["config_sha256"] else None,
           "token": status["token"], "findings": findings}
    if as_json:
        print(json.dumps(doc), file=out, flush=True)
    else:
        for k, v in doc.items():
            print(f"{k:>15}: {v}", file=out)
    return 1 if findings else 0


def issue_token(fleet: Fleet, device_id: str, out: Path, hours: float) -> Path:
    """A re-provisioning token: the device's agent runs again and accepts a new bundle while it is valid."""
    d = fleet.device(device_id)
    if d.status != "active":
        raise FleetError(f"device {device_id!r} is {d.status}")
    body = token_body(fleet.name, device_id, now(), timedelta(hours=hours))
    out.write_bytes(sign_document(body, command_keys(fleet)))
    return out


def cmd_provision(args: argparse.Namespace) -> int:
    """Provision a device over a serial cable: identity, certificate, trust root, configuration, in one checked
    step confirmed by a 6-digit code shown on both ends (docs/serial-protocol.md). The fleet needs an operator
    first (edge-fleet operator add NAME --fleet-dir F): the device seals evidence to that operator's key. Answer
    the code's question with `yes` (any letter case) or the code typed back; anything else, `y` included,
    cancels. The answer must come within the device's confirm window (--confirm-timeout of the agent, 600 s by
    default); later, nothing is sent or registered. --check reads a device's identity and state back;
    --issue-token writes a signed re-provisioning token for a provisioned device. Exit 0: done; 1: not
    confirmed by the technician, or --check found a mismatch; 2: failed (the message says why and what state
    the device is in; a failed run leaves the fleet directory as it was unless the device may have committed)."""
    fleet = Fleet(args.fleet_dir)
    try:
        if args.issue_token:
            if not args.device_id:
                raise FleetError("--issue-token needs --device-id")
            path = issue_token(fleet, args.device_id, Path(args.issue_token), args.token_hours)
            print(f"wrote {path}: valid {args.token_hours:g} h for device {args.device_id}; put it on the device as "
                  f"{Paths(DEFAULT_STATE_DIR, DEFAULT_CONFIG).token} and start edge-node-provision.service")
            return 0
        if not args.port:
            raise FleetError("--port is needed (the serial port of the cable, e.g. /dev/ttyUSB0)")
        target = Target(args.port, args.timeout, args.retries, args.baud)
        if args.check:
            return check(fleet, target, args.device_id, sys.stdout, args.json)
        if not args.broker:
            raise FleetError("--broker mqtts://HOST[:PORT] is needed: the device's configuration names it")
        return provision(fleet, target, args.device_id, args.broker, args.operator,
                         Path(args.node_config) if args.node_config else None, sys.stdin, sys.stdout)
    except ToolError as exc:
        print(f"edge-fleet provision: {exc}\nedge-fleet provision: {exc.device_state}", file=sys.stderr)
        return 1 if isinstance(exc.cause, TechnicianAbortError) else 2
    except (ProvisionError, FleetError, CertificateError, BrokerURLError, TrustError, OSError) as exc:
        print(f"edge-fleet provision: {type(exc).__name__}: {exc}\nedge-fleet provision: nothing was sent to the "
              "device", file=sys.stderr)
        return 2


def add_parser(sub: Any) -> None:
    """The `provision` subcommand of edge-fleet."""
    p: argparse.ArgumentParser = sub.add_parser(
        "provision", help="provision a device over a serial cable (or --check it, or --issue-token)",
        description=cmd_provision.__doc__)
    p.add_argument("--port", help="the serial port of the cable, e.g. /dev/ttyUSB0")
    p.add_argument("--fleet-dir", type=Path, required=True, help="the fleet directory")
    p.add_argument("--device-id", help="name a fresh board (its keys stay the ones born on it); for a provisioned "
                   "board, the id it must have")
    p.add_argument("--broker", metavar="mqtts://HOST[:PORT]", help="the broker the device will use")
    p.add_argument("--operator", help="whose evidence key the device seals crops to (default: the only operator)")
    p.add_argument("--node-config", metavar="NODE.toml", help="node configuration template (camera, vision, [node] "
                   "profile, ...; no [mqtt]: provisioning writes it; [node] state_dir is set to the device's own)")
    p.add_argument("--check", action="store_true", help="read the device's identity and state back; change nothing")
    p.add_argument("--json", action="store_true", help="--check: one JSON object")
    p.add_argument("--issue-token", metavar="FILE", help="write a signed re-provisioning token for --device-id")
    p.add_argument("--token-hours", type=float, default=24.0, help="how long the token is valid (default 24)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for each answer, plus the line's transfer time (default {DEFAULT_TIMEOUT})")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"tries per request before giving up (default {DEFAULT_RETRIES})")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="line speed for a UART (a USB gadget ignores it)")
    p.set_defaults(func=cmd_provision)
