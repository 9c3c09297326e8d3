"""The device side of serial provisioning: `edge-node provision-agent --port /dev/ttyGS0`.

It answers one technician tool at a time (a session, bound to the tool's random session id):
    OPEN -> HELLO (device id, nonce, public keys, CSR for the broker certificate, the fleet root it trusts)
    PROVISION -> every check of the signed bundle, contents staged beside their targets -> PENDING (transcript)
    CONFIRM (with the certificate the fleet issues only after the technician's yes; checked here) -> commit:
               a journal, then each file renamed into place, an audit record, the provisioned marker last,
               then the used token removed -> DONE; the device then leaves provisioning mode (status only)
A crash at any point leaves the device either as it was (nothing journalled: the stage is thrown away at the
next start) or finishes the commit at the next start (journalled: rolled forward). Keys are made once, on
the device, before any session (`ensure_keys`), and never leave it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.audit import AuditError, AuditLog
from edge.config import ConfigError, load_config
from edge.events.link import BrokerSettings, BrokerURLError
from edge.fsutil import fsync_dir, write_atomic
from edge.identity import DeviceIdentity, IdentityError, check_device_id, create_identity, load_identity
from edge.provision.bundle import (
    ReprovisionToken,
    VerifiedBundle,
    verify_bundle,
    verify_token,
)
from edge.provision.errors import (
    BundleContentError,
    CommitError,
    DeviceIdMismatchError,
    DeviceStateError,
    FrameError,
    LineBusyError,
    LinkLostError,
    MessageFieldError,
    NoFleetRootError,
    NoSessionError,
    NotInProvisioningModeError,
    ProvisionError,
    ReprovisionTokenError,
    SequenceError,
    SessionStateError,
    TranscriptMismatchError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)
from edge.provision.link import DEFAULT_BAUD, SerialLink
from edge.provision.protocol import (
    MAX_SEQ,
    REQUESTS,
    SEQ_WINDOW,
    Frame,
    MsgType,
    confirmation_code,
    decode_message,
    encode_body,
    encode_frame,
    frame_header,
    show_code,
    transcript_hash,
)
from edge.tls import DeviceTLS, TLSIdentityError, make_csr
from edge.trust.keys import raw_public
from edge.trust.root import TrustedRoot, TrustError
from edge.trust.times import format_time, now
from edge.watchlist.store import ShardStore

AGENT = "edge-node provision-agent 1"
DEFAULT_FLEET_ROOT = Path("/usr/share/edge-node/fleet-root.json")
FAILPOINT_ENV = "EDGE_PROVISION_FAILPOINT"  # crash injection for the atomicity tests (docs/serial-protocol.md)
EXIT_COULD_NOT_START = 2
EXIT_LINK_LOST = 3
EXIT_COMMIT_FAILED = 4  # systemd restarts the agent, whose start finishes the journalled commit
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_CONFIRM_TIMEOUT = 600.0
DEFAULT_LINGER = 600.0
STAGED_SUFFIX = ".provision-staged"


def failpoint(name: str) -> None:
    """Die on the spot, like a power cut, when the environment names this point (tests only)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os._exit(70)


@dataclass(frozen=True)
class AgentSettings:
    port: str
    state_dir: Path
    config: Path
    fleet_root: Path = DEFAULT_FLEET_ROOT
    device_id: str | None = None  # name for keys made on first start (default: the host name)
    session_timeout: float = DEFAULT_SESSION_TIMEOUT  # a session ends after this long without a frame from its tool
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT  # PENDING waits this long at most for the technician's CONFIRM
    linger: float = DEFAULT_LINGER  # after provisioning, answer status queries this long, then exit
    baudrate: int = DEFAULT_BAUD

    def absolute(self) -> AgentSettings:
        """The same settings with absolute paths. The state directory is sent in HELLO and written into the node
        configuration, where a relative path would resolve from the configuration's folder; the commit journal
        names every path and is read again at a later start, perhaps from another working directory."""
        return replace(self, state_dir=_absolute(self.state_dir), config=_absolute(self.config),
                       fleet_root=_absolute(self.fleet_root))


def _absolute(path: Path) -> Path:
    """`path` from the working directory, '..' folded (symlinks are kept, as the operator named them)."""
    return Path(os.path.abspath(path))


@dataclass(frozen=True)
class Paths:
    """Where provisioning keeps its own files; the files it installs are named by their owners' modules."""

    state_dir: Path
    config: Path

    @property
    def dir(self) -> Path:
        return self.state_dir / "provision"

    @property
    def marker(self) -> Path:
        return self.dir / "state.json"

    @property
    def journal(self) -> Path:
        return self.dir / "commit.json"

    @property
    def stage(self) -> Path:
        return self.dir / "stage"

    @property
    def token(self) -> Path:
        return self.dir / "reprovision.token"

    @property
    def root(self) -> Path:
        return ShardStore(self.state_dir).root_path

    @property
    def operator(self) -> Path:
        return self.config.with_name("operator.json")

    def staged(self, target: Path) -> Path:
        return target.with_name(f".{target.name}{STAGED_SUFFIX}")


def read_marker(paths: Paths) -> dict[str, Any] | None:
    try:
        doc = json.loads(paths.marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CommitError(f"{paths.marker}: unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise CommitError(f"{paths.marker}: expected a JSON object")
    return doc


# --- commit: journal, renames, audit, marker ---------------------------------------------------------------
def apply_journal(paths: Paths) -> int:
    """Carry out a journalled commit (again, after a crash: every step is idempotent); the audit seq."""
    try:
        doc = json.loads(paths.journal.read_text())
        moves = [(Path(a), Path(b)) for a, b in doc["moves"]]
        remove = [Path(p) for p in doc["remove"]]
        audit: dict[str, Any] = doc["audit"]
        marker = (Path(doc["marker"][0]), Path(doc["marker"][1]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommitError(f"{paths.journal}: unreadable commit journal ({exc})") from None
    try:
        for i, (staged, target) in enumerate(moves):
            if staged.exists():
                if not target.parent.is_dir():  # e.g. STATE/trust on a fresh board
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    fsync_dir(target.parent.parent)
                os.replace(staged, target)
                fsync_dir(target.parent)
            if i == 0:
                failpoint("mid-commit")
        log = AuditLog.in_state_dir(paths.state_dir, now)
        done = [e.seq for e in log.entries()
                if e.kind == "provisioning" and e.data.get("transcript") == audit["transcript"]]
        seq = done[0] if done else log.append("provisioning", audit).seq  # once, even when finished twice
        failpoint("before-marker")
        if marker[0].exists():
            os.replace(marker[0], marker[1])
            fsync_dir(marker[1].parent)
        for p in remove:  # the token goes only once the marker that records its id as used is in place
            p.unlink(missing_ok=True)
        shutil.rmtree(paths.stage, ignore_errors=True)
        paths.journal.unlink()
        fsync_dir(paths.dir)
    except (OSError, AuditError) as exc:
        raise CommitError(f"commit interrupted ({exc}); the next start of the agent finishes it") from None
    return seq


def discard_stage(paths: Paths) -> bool:
    """Throw away anything staged but not journalled; True if there was something. A journalled commit is
    never thrown away: the next start finishes it."""
    if paths.journal.exists():
        return False
    found = False
    if paths.stage.exists():
        shutil.rmtree(paths.stage)
        found = True
    for target in (paths.config, paths.operator):
        staged = paths.staged(target)
        if staged.exists():
            staged.unlink()
            found = True
    return found


def recover(paths: Paths, log: Callable[[str], None]) -> None:
    """At start: finish a journalled commit, or throw away a stage that never reached CONFIRM."""
    if paths.journal.exists():
        seq = apply_journal(paths)
        log(f"finished a commit that was interrupted (audit record {seq}); the device is provisioned")
    elif discard_stage(paths):
        log("threw away a provisioning stage that was never confirmed; the device is as it was before")


# --- keys -----------------------------------------------------------------------------------------------
def ensure_keys(state_dir: Path, device_id: str | None) -> DeviceIdentity:
    """The device's keys, made here on first start if there are none (as `edge-node keygen` and
    `edge-node cert request` would); existing keys are never replaced."""
    try:
        ident = load_identity(state_dir)
    except IdentityError as missing:
        name = device_id or os.uname().nodename.split(".")[0].lower()
        try:
            ident = create_identity(state_dir, name)
        except IdentityError:
            raise missing from None
    tls = DeviceTLS(state_dir)
    if not tls.key.exists():
        tls.request(ident.device_id)
    return ident


def _tls_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    tls = DeviceTLS(state_dir)
    try:
        key = serialization.load_pem_private_key(tls.key.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceStateError(f"{tls.key}: unusable TLS key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeviceStateError(f"{tls.key}: not an EC key")
    return key


# --- the session ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Staged:
    """A verified bundle laid out beside its targets, waiting for CONFIRM."""

    verified: VerifiedBundle
    transcript: bytes
    moves: tuple[tuple[Path, Path], ...]
    marker: tuple[Path, Path]


@dataclass
class Session:
    """One tool's conversation with the device (runtime state, owned by the agent loop)."""

    id: int
    tool: str
    device_id: str
    nonce: bytes
    hello_body: bytes
    csr: bytes
    last_seq: int
    last_reply: bytes
    last_seen: float
    state: str = "open"  # open -> pending -> committed
    staged: Staged | None = None
    pending_until: float = 0.0


class Agent:
    """Serves sessions on one serial link until stopped, the link is lost, or the linger time after a commit
    runs out."""

    def __init__(self, settings: AgentSettings, link: SerialLink, log: Callable[[str], None]) -> None:
        self.s = settings
        self.link = link
        self.log = log
        self.paths = Paths(settings.state_dir, settings.config)
        self.identity = ensure_keys(settings.state_dir, settings.device_id)
        self.session: Session | None = None
        self.ended: tuple[int, int, bytes] | None = None  # (session, seq, reply) of the last ended session
        self.mode, self.token = self._mode()
        self.committed_at: float | None = None
        self.idle_since = time.monotonic()
        self.commit_failed: CommitError | None = None  # the agent exits so that its next start finishes it

    # -- state of the device --
    def _mode(self) -> tuple[str, ReprovisionToken | None]:
        marker = read_marker(self.paths)
        if marker is None:
            return "unprovisioned", None
        if not self.paths.token.exists():
            return "provisioned", None
        try:
            root = TrustedRoot.bootstrap(self.paths.root.read_bytes()).root
            token = verify_token(self.paths.token.read_bytes(), root, self.identity.device_id, now())
        except (OSError, TrustError, ReprovisionTokenError) as exc:
            self.log(f"re-provisioning token {self.paths.token} refused: {type(exc).__name__}: {exc}; "
                     "answering status queries only")
            return "provisioned", None
        if token.token_id in marker.get("used_tokens", []):
            self.log(f"re-provisioning token {token.token_id} refused: ReprovisionTokenError: used already; "
                     "answering status queries only")
            return "provisioned", None
        self.log(f"re-provisioning token {token.token_id} accepted (valid until {format_time(token.expires)})")
        return "reprovision", token

    def _recheck_token(self) -> None:
        """A re-provisioning session needs the token it started with to be still there and valid (signature,
        expiry by the device's clock, not used) at PROVISION and at CONFIRM, not just at the agent's start."""
        if self.token is None:
            return
        was = self.token
        self.mode, self.token = self._mode()
        if self.token is None or self.token.token_id != was.token_id:
            raise ReprovisionTokenError(
                f"re-provisioning token {was.token_id} is no longer valid here ({self.paths.token} removed, "
                f"replaced or expired): nothing is changed; put a valid token in place and start again")

    def anchor(self) -> bytes | None:
        """The fleet root this device trusts: its own, else the one its image carries."""
        for p in (self.paths.root, self.s.fleet_root):
            try:
                return p.read_bytes()
            except FileNotFoundError:
                continue
        return None

    # -- the loop --
    def serve(self, should_stop: Callable[[], bool]) -> int:
        self.log(f"listening on {self.s.port} (device {self.identity.device_id}, {self.mode})")
        while not should_stop():
            try:
                for item, encoded in self.link.poll(0.2):
                    self._handle(item, encoded)
            except LinkLostError as exc:
                self._end_session(f"the serial line is gone ({exc})")
                return EXIT_LINK_LOST
            if self.commit_failed is not None:
                self.log(f"leaving after a failed commit ({self.commit_failed}); the next start finishes or "
                         "discards it")
                return EXIT_COMMIT_FAILED
            self._tick()
            if (self.committed_at is not None and self.session is None
                    and time.monotonic() - self.idle_since > self.s.linger):
                self.log(f"provisioned; no session for {self.s.linger:g} s: leaving")
                return 0
        self._end_session("stopped")
        return 0

    def _tick(self) -> None:
        s = self.session
        if s is None:
            return
        t = time.monotonic()
        if s.state == "pending" and t > s.pending_until:
            self._end_session(f"not confirmed within {self.s.confirm_timeout:g} s")
        elif t - s.last_seen > self.s.session_timeout:
            self._end_session(f"no frame for {self.s.session_timeout:g} s (cable pulled, or the tool stopped)")

    def _end_session(self, why: str) -> None:
        s = self.session
        if s is None:
            return
        self.session = None
        self.idle_since = time.monotonic()
        if s.state != "committed" and self.paths.journal.exists():
            self.log(f"session {s.id:08x} ended: {why}; a commit is journalled and the next start finishes it")
        elif s.state != "committed":
            discard_stage(self.paths)
            self.log(f"session {s.id:08x} ended: {why}; nothing was changed on the device")
        else:
            self.log(f"session {s.id:08x} ended: {why}")

    def _send(self, mtype: MsgType, session: int, seq: int, body: Mapping[str, Any]) -> bytes:
        """Encode and write one answer (LinkLostError if the line is gone: `serve` then leaves)."""
        encoded = encode_frame(Frame(mtype, session, seq, encode_body(mtype, body)))
        self.link.write_raw(encoded)
        return encoded

    def _error(self, session: int, seq: int, exc: Exception) -> bytes:
        return self._send(MsgType.ERROR, session, seq, {"code": type(exc).__name__, "message": str(exc)[:1000]})

    def _handle(self, item: Frame | FrameError, encoded: bytes) -> None:
        if isinstance(item, FrameError):
            addr = frame_header(encoded) if isinstance(item, (UnsupportedVersionError, UnknownMessageTypeError)) \
                else None
            self.log(f"dropped a frame: {type(item).__name__}: {item}")
            self._error(*(addr or (0, 0)), item)
            return
        frame = item
        s = self.session
        if s is None or frame.session != s.id:
            if self.ended is not None and self.ended[:2] == (frame.session, frame.seq):
                self.link.write_raw(self.ended[2])  # the answer that ended that session, lost on the way
                return
            if s is not None:
                self.log(f"refused session {frame.session:08x} ({frame.type.name}): the device is in session "
                         f"{s.id:08x} with another tool")
                self._error(frame.session, frame.seq, _busy(s))
                return
            if frame.type != MsgType.OPEN:
                self._error(frame.session, frame.seq, NoSessionError(
                    f"{frame.type.name}: no open session {frame.session:08x} (it ended or expired); start again"))
                return
            if frame.session == 0:
                self._error(0, frame.seq, SessionStateError(
                    "OPEN on session 0: that id is reserved for the device's answers to frames it could not read"))
                return
            self._open(frame)
            return
        if frame.seq == s.last_seq:
            s.last_seen = time.monotonic()
            self.link.write_raw(s.last_reply)  # a retry: the same answer, nothing done twice
            return
        if not 0 < (frame.seq - s.last_seq) & MAX_SEQ < SEQ_WINDOW:  # a request's seq only goes up (mod 2^16)
            self._error(s.id, frame.seq, SequenceError(f"{frame.type.name} seq {frame.seq} is older than the last "
                                                       f"request {s.last_seq}: a stale frame"))
            return
        s.last_seen = time.monotonic()
        end = False
        try:
            if frame.type not in REQUESTS:
                raise UnknownMessageTypeError(f"{frame.type.name} is a device message, not a request")
            body = decode_message(frame)
            reply, answer, end = self._dispatch(s, frame.type, body)
            s.last_reply = self._send(reply, s.id, frame.seq, answer)
        except LinkLostError:
            raise
        except ProvisionError as exc:
            self.log(f"session {s.id:08x}: {frame.type.name} refused: {type(exc).__name__}: {exc}")
            end = s.state != "committed" and frame.type in (MsgType.PROVISION, MsgType.CONFIRM)
            if isinstance(exc, CommitError):
                self.commit_failed = exc
            s.last_reply = self._error(s.id, frame.seq, exc)
        s.last_seq = frame.seq
        if end:
            self.ended = (s.id, frame.seq, s.last_reply)
            self._end_session("closed" if frame.type == MsgType.CLOSE else "refused")

    def _open(self, frame: Frame) -> None:
        try:
            body = decode_message(frame)
            device_id = self._session_device_id(body["device_id"])
            nonce = secrets.token_bytes(32)
            hello = self._hello(device_id, nonce)
            hello_body = encode_body(MsgType.HELLO, hello)  # a field of ours out of bounds refuses the OPEN
            encoded = self._send(MsgType.HELLO, frame.session, frame.seq, hello)
        except LinkLostError:
            raise
        except ProvisionError as exc:
            self.log(f"OPEN from session {frame.session:08x} refused: {type(exc).__name__}: {exc}")
            self.ended = (frame.session, frame.seq, self._error(frame.session, frame.seq, exc))
            return
        self.session = Session(frame.session, body["tool"], device_id, nonce, hello_body, hello["csr"], frame.seq,
                               encoded, time.monotonic())
        self.log(f"session {frame.session:08x} opened by {body['tool']!r} for device {device_id}")

    def _session_device_id(self, asked: str | None) -> str:
        if asked is None or asked == self.identity.device_id:
            return self.identity.device_id
        if self.mode != "unprovisioned":
            raise DeviceIdMismatchError(f"this device is {self.identity.device_id!r}, not {asked!r} (a provisioned "
                                        "device keeps its id)")
        try:
            return check_device_id(asked)
        except IdentityError as exc:
            raise MessageFieldError(f"OPEN.device_id: {exc}") from None

    def _hello(self, device_id: str, nonce: bytes) -> dict[str, Any]:
        anchor = self.anchor()
        root = None
        if anchor is not None:
            try:
                root = TrustedRoot.bootstrap(anchor).root
            except TrustError as exc:  # reported as no root; PROVISION then says why
                self.log(f"the fleet root this device holds is unusable: {exc}")
                anchor = None
        csr = make_csr(_tls_key(self.s.state_dir), device_id)
        ident = self.identity
        return {"device_id": device_id, "nonce": nonce, "ed25519": raw_public(ident.signing_key.public_key()),
                "x25519": raw_public(ident.encryption_key.public_key()), "csr": csr, "state": self.mode,
                "fleet": root.fleet if root else None, "root_version": root.version if root else None,
                "root_sha256": hashlib.sha256(anchor).digest() if anchor else None,
                "state_dir": str(self.s.state_dir), "config": str(self.s.config), "agent": AGENT}

    def _dispatch(self, s: Session, mtype: MsgType, body: dict[str, Any]) -> tuple[MsgType, dict[str, Any], bool]:
        if mtype == MsgType.OPEN:
            raise SessionStateError(f"session {s.id:08x} is open already")
        if mtype == MsgType.PING:
            return MsgType.PONG, {}, False
        if mtype == MsgType.QUERY:
            return MsgType.STATUS, self.status(), False
        if mtype == MsgType.CLOSE:
            return MsgType.CLOSED, {}, True
        if mtype == MsgType.PROVISION:
            return MsgType.PENDING, self._provision(s, body["bundle"]), False
        return MsgType.DONE, self._confirm(s, body["transcript"], body["certificate"]), False

    def _provision(self, s: Session, bundle: bytes) -> dict[str, Any]:
        if s.state != "open":
            raise SessionStateError(f"session {s.id:08x} has a bundle already ({s.state})")
        if self.mode == "provisioned":
            raise NotInProvisioningModeError(
                f"device {self.identity.device_id} is provisioned and holds no valid re-provisioning token "
                f"({self.paths.token}); it answers status queries only")
        self._recheck_token()
        anchor = self.anchor()
        if anchor is None:
            raise NoFleetRootError(f"no fleet root at {self.paths.root} or {self.s.fleet_root}: the image must "
                                   "carry the fleet root (docs/serial-protocol.md, Trust)")
        verified = verify_bundle(bundle, anchor, s.device_id, s.nonce, s.hello_body, now())
        transcript = transcript_hash(s.hello_body, bundle)
        try:
            s.staged = self._stage(verified, s, transcript)
        except OSError as exc:
            discard_stage(self.paths)
            raise DeviceStateError(f"cannot stage the bundle: {exc}") from None
        failpoint("after-stage")
        s.state = "pending"
        s.pending_until = time.monotonic() + self.s.confirm_timeout
        code = show_code(confirmation_code(transcript))
        self.log(f"PENDING: bundle {verified.bundle.bundle_id} from fleet {verified.root.fleet!r} verified and "
                 f"staged for device {s.device_id}")
        self.log(f"CONFIRMATION CODE {code}  (the technician's screen must show the same)")
        return {"transcript": transcript, "confirm_within": int(self.s.confirm_timeout)}

    def _stage(self, vb: VerifiedBundle, s: Session, transcript: bytes) -> Staged:
        """Write everything beside its target and check it there: broker CA (a certificate), configuration
        (parses, points at this state dir, the bundle's broker and the operator key), broker URL, operator
        key. The device certificate comes with CONFIRM and is checked then (`_confirm`)."""
        b, p = vb.bundle, self.paths
        discard_stage(p)
        stage = p.stage
        (stage / "identity").mkdir(parents=True, mode=0o700)
        os.link(DeviceTLS(p.state_dir).key, DeviceTLS(stage).key)  # the key is checked, never copied
        try:
            x509.load_pem_x509_certificate(b.broker_ca)
        except ValueError as exc:
            raise BundleContentError(f"bundle.broker_ca: not a PEM certificate ({exc})") from None
        write_atomic(DeviceTLS(stage).csr, s.csr, 0o644)  # the request the certificate will answer
        moves: list[tuple[Path, Path]] = [(DeviceTLS(stage).csr, DeviceTLS(p.state_dir).csr)]
        staged_root = stage / "trust" / "root.json"
        write_atomic(staged_root, vb.root_bytes, 0o644)
        moves.append((staged_root, p.root))
        if s.device_id != self.identity.device_id:  # a fresh board named by the technician: same keys, new id
            staged_meta = stage / "identity" / "device.json"
            public = {**self.identity.public(), "device_id": s.device_id}
            write_atomic(staged_meta, json.dumps(public, indent=1).encode() + b"\n", 0o600)
            moves.append((staged_meta, p.state_dir / "identity" / "device.json"))
        write_atomic(p.staged(p.operator), json.dumps(b.operator.to_json(), indent=1).encode() + b"\n", 0o644)
        moves.append((p.staged(p.operator), p.operator))
        staged_config = p.staged(p.config)
        write_atomic(staged_config, b.config.encode(), 0o640)
        self._check_config(staged_config, b.broker)
        moves.append((staged_config, p.config))
        old = read_marker(p) or {}
        used = [*old.get("used_tokens", []), *([self.token.token_id] if self.token else [])]
        marker = {"state": "provisioned", "device_id": s.device_id, "fleet": vb.root.fleet,
                  "root_version": vb.root.version, "bundle_id": b.bundle_id, "transcript": transcript.hex(),
                  "provisioned_at": None, "broker": b.broker, "cert_serial": None,
                  "operator": b.operator.name, "used_tokens": used,
                  "config_sha256": hashlib.sha256(b.config.encode()).hexdigest()}
        staged_marker = stage / "provision" / "state.json"
        write_atomic(staged_marker, json.dumps(marker, indent=1).encode() + b"\n", 0o600)
        return Staged(vb, transcript, tuple(moves), (staged_marker, p.marker))

    def _check_config(self, staged: Path, broker: str) -> None:
        where = f"config ({self.s.config})"
        try:
            BrokerSettings.parse_url(broker)
            cfg = load_config(staged)
        except (ConfigError, BrokerURLError) as exc:
            raise BundleContentError(f"{where}: {str(exc).replace(str(staged), str(self.s.config))}") from None
        if cfg.mqtt is None:
            raise BundleContentError(f"{where}: [mqtt] is missing")
        if cfg.mqtt.broker != broker:
            raise BundleContentError(f"{where}: [mqtt] broker {cfg.mqtt.broker!r} is not the bundle's {broker!r}")
        if cfg.mqtt.operator_key != self.paths.operator:
            raise BundleContentError(f"{where}: [mqtt] operator_key must be {self.paths.operator.name!r} (installed "
                                     "beside the configuration)")
        if cfg.state_dir.resolve() != self.s.state_dir.resolve():
            raise BundleContentError(f"{where}: [node] state_dir {cfg.state_dir} is not this device's state "
                                     f"directory {self.s.state_dir}")

    def _confirm(self, s: Session, transcript: bytes, certificate: bytes) -> dict[str, Any]:
        """The technician said yes: check the certificate the fleet issued only now (for this device's TLS
        key and id, issued by the bundle's broker CA), then commit."""
        if s.state != "pending" or s.staged is None:
            raise SessionStateError(f"session {s.id:08x}: nothing to confirm ({s.state})")
        if transcript != s.staged.transcript:
            raise TranscriptMismatchError("CONFIRM names another transcript than the one this device staged: "
                                          "the two ends saw different messages")
        self._recheck_token()
        st = s.staged
        stage_tls, live = DeviceTLS(self.paths.stage), DeviceTLS(self.s.state_dir)
        try:
            cert = stage_tls.install(s.device_id, certificate, st.verified.bundle.broker_ca)
        except TLSIdentityError as exc:
            raise BundleContentError(f"CONFIRM.certificate: {exc}") from None
        except OSError as exc:
            raise DeviceStateError(f"cannot stage the certificate: {exc}") from None
        st = replace(st, moves=((stage_tls.cert, live.cert), (stage_tls.ca, live.ca), *st.moves))
        try:
            return self._commit(s, st, transcript, cert)
        except OSError as exc:
            raise CommitError(f"cannot commit: {exc}") from None

    def _commit(self, s: Session, st: Staged, transcript: bytes, cert: x509.Certificate) -> dict[str, Any]:
        b = st.verified.bundle
        committed = now()
        marker_doc = json.loads(st.marker[0].read_text())
        marker_doc["provisioned_at"] = format_time(committed)
        marker_doc["cert_serial"] = f"{cert.serial_number:x}"
        write_atomic(st.marker[0], json.dumps(marker_doc, indent=1).encode() + b"\n", 0o600)
        audit = {"event": "reprovisioned" if self.mode == "reprovision" else "provisioned",
                 "device_id": s.device_id, "fleet": st.verified.root.fleet,
                 "root_version": st.verified.root.version, "bundle_id": b.bundle_id, "transcript": transcript.hex(),
                 "cert_serial": marker_doc["cert_serial"], "broker": b.broker, "operator": b.operator.name,
                 "tool": s.tool, "token_id": self.token.token_id if self.token else None}
        journal = {"transcript": transcript.hex(), "moves": [[str(a), str(t)] for a, t in st.moves],
                   "remove": [str(self.paths.token)] if self.token else [], "audit": audit,
                   "marker": [str(st.marker[0]), str(st.marker[1])]}
        write_atomic(self.paths.journal, json.dumps(journal, indent=1).encode() + b"\n", 0o600)
        failpoint("after-journal")
        seq = apply_journal(self.paths)
        if s.device_id != self.identity.device_id:
            try:
                self.identity = load_identity(self.s.state_dir)
            except IdentityError as exc:
                raise CommitError(f"committed, but the renamed identity does not load: {exc}") from None
        s.state, s.staged = "committed", None
        self.mode, self.token = "provisioned", None
        self.committed_at = time.monotonic()
        self.log(f"COMMITTED: device {s.device_id} provisioned for fleet {st.verified.root.fleet!r} "
                 f"(audit record {seq}); provisioning mode is off")
        return {"device_id": s.device_id, "committed": format_time(committed), "audit_seq": seq}

    def status(self) -> dict[str, Any]:
        """Identity and state, read back from what is on disk."""
        marker = read_marker(self.paths) or {}
        tls = DeviceTLS(self.s.state_dir)
        serial = not_after = None
        try:
            cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
            serial, not_after = f"{cert.serial_number:x}", format_time(cert.not_valid_after_utc)
        except (OSError, ValueError):
            pass  # no certificate (yet): reported as null
        fleet = version = None
        anchor = self.anchor()
        if anchor is not None:
            try:
                root = TrustedRoot.bootstrap(anchor).root
                fleet, version = root.fleet, root.version
            except TrustError:
                pass  # an unusable root is reported as none
        try:
            config_sha = hashlib.sha256(self.s.config.read_bytes()).digest()
        except OSError:
            config_sha = None
        transcript = marker.get("transcript")
        return {"device_id": self.identity.device_id, "state": self.mode,
                "ed25519": raw_public(self.identity.signing_key.public_key()), "fleet": fleet,
                "root_version": version, "cert_serial": serial, "cert_not_after": not_after,
                "broker": marker.get("broker"), "provisioned_at": marker.get("provisioned_at"),
                "transcript": bytes.fromhex(transcript) if isinstance(transcript, str) else None,
                "config_sha256": config_sha,
                "token": f"{self.token.token_id} until {format_time(self.token.expires)}" if self.token else None}


def _busy(s: Session) -> ProvisionError:
    idle = time.monotonic() - s.last_seen
    return LineBusyError(f"the device is in a provisioning session with another tool ({s.tool!r}, {s.state}, "
                         f"last heard {idle:.0f} s ago); it ends after silence, or when that tool closes it")


def run_agent(settings: AgentSettings, should_stop: Callable[[], bool]) -> int:
    """Recover, open the port, serve. Messages go to stderr (the journal under systemd)."""

    def log(msg: str) -> None:
        print(f"provision-agent: {msg}", file=sys.stderr, flush=True)

    settings = settings.absolute()
    paths = Paths(settings.state_dir, settings.config)
    if not paths.dir.is_dir():
        paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fsync_dir(paths.dir.parent)
    recover(paths, log)
    link = SerialLink.open(settings.port, settings.baudrate)
    try:
        return Agent(settings, link, log).serve(should_stop)
    finally:
        link.close()


def cmd_provision_agent(args: Any) -> int:
    """The device's serial provisioning agent: answers a technician's `edge-fleet provision` on the serial
    port; verifies what it is sent against the fleet root this device trusts, shows the confirmation code,
    commits atomically on CONFIRM and records it in the audit log, then leaves provisioning mode. On a
    provisioned device it answers status queries only, unless a valid signed re-provisioning token is in
    STATE/provision/. Relative --state-dir, --config and --fleet-root are taken from the working directory and
    sent and written as absolute paths. Exit 0: stopped, or provisioned and idle for --linger; 2: could not
    start; 3: the serial port went away (at once: a session ends and its stage is thrown away; systemd restarts
    the agent); 4: a commit failed (the next start finishes it)."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = AgentSettings(port=args.port, state_dir=args.state_dir, config=args.config,
                             fleet_root=args.fleet_root, device_id=args.device_id,
                             session_timeout=args.session_timeout, confirm_timeout=args.confirm_timeout,
                             linger=args.linger, baudrate=args.baud)
    try:
        return run_agent(settings, stop.is_set)
    except (ProvisionError, IdentityError, TLSIdentityError, OSError) as exc:
        print(f"edge-node provision-agent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_START


def add_parser(sub: Any, state_arg: Callable[[Any], None]) -> None:
    """The `provision-agent` subcommand of edge-node."""
    from edge.config import DEFAULT_CONFIG

    p = sub.add_parser("provision-agent", help="answer serial provisioning on a port (docs/serial-protocol.md)",
                       description=cmd_provision_agent.__doc__)
    p.add_argument("--port", required=True, help="the serial port, e.g. /dev/ttyGS0 (USB gadget) or /dev/ttyAMA0")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help=f"where the node configuration is installed (default {DEFAULT_CONFIG})")
    p.add_argument("--fleet-root", type=Path, default=DEFAULT_FLEET_ROOT,
                   help=f"the fleet root the image carries, used until the device has its own (default "
                        f"{DEFAULT_FLEET_ROOT})")
    p.add_argument("--device-id", help="the id for keys made on first start (default: the host name)")
    p.add_argument("--session-timeout", type=float, default=DEFAULT_SESSION_TIMEOUT,
                   help=f"seconds of silence after which a session ends (default {DEFAULT_SESSION_TIMEOUT:g})")
    p.add_argument("--confirm-timeout", type=float, default=DEFAULT_CONFIRM_TIMEOUT,
                   help=f"seconds PENDING waits for the technician's CONFIRM (default {DEFAULT_CONFIRM_TIMEOUT:g})")
    p.add_argument("--linger", type=float, default=DEFAULT_LINGER,
                   help=f"after provisioning, answer status queries this many idle seconds, then exit (default "
                        f"{DEFAULT_LINGER:g})")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="line speed for a UART (a USB gadget ignores it)")
    state_arg(p)
    p.set_defaults(func=cmd_provision_agent)
