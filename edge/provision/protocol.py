"""The serial provisioning wire format, defined once (the device agent and `edge-fleet provision` import it).

A frame on the line is `0x00 COBS(raw) 0x00`, with
    raw = version:u8 | type:u8 | session:u32 | seq:u16 | length:u16 | body[length] | crc32:u32   (big-endian)
The CRC-32 (zlib) covers everything before it; it catches line noise only, security comes from the
signed bundle and the confirmation code. The body is one CBOR map per message type (`SPECS`). The
leading 0x00 ends any partial frame a receiver still holds (a cable pulled mid-frame), so the first frame
after a reconnect is never glued to garbage. Full description: docs/serial-protocol.md.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

import cbor2
from cobs import cobs

from edge.provision.errors import (
    FrameCOBSError,
    FrameCRCError,
    FrameError,
    FrameLengthError,
    FrameTooLargeError,
    MessageFieldError,
    UnknownMessageTypeError,
    UnsupportedVersionError,
)

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
DELIMITER = b"\x00"
HEADER = struct.Struct(">BBIHH")  # version, type, session, seq, body length
CRC = struct.Struct(">I")
MAX_BODY = 60 * 1024  # the largest body (a PROVISION with its bundle); the bundle itself is capped below it
MAX_FRAME = HEADER.size + MAX_BODY + CRC.size  # decoded
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1  # COBS adds at most one byte per 254
MAX_SEQ = 0xFFFF
SEQ_WINDOW = 0x8000  # a request is new if its seq is 1..0x7FFF ahead of the last one (mod 2^16), a retry if equal
MAX_DEPTH = 4  # CBOR nesting: a message is a flat map (with at most a list of strings)
CODE_DIGITS = 6
MAX_CERTIFICATE = 8192  # the device's PEM certificate in CONFIRM (issued only after the technician said yes)


class MsgType(IntEnum):
    """Requests go from the tool to the device; each is answered by exactly one reply with the same seq."""

    OPEN = 0x01  # tool: start a session           -> HELLO
    HELLO = 0x02  # device: id, nonce, keys, CSR, trust
    PROVISION = 0x03  # tool: the signed bundle     -> PENDING
    PENDING = 0x04  # device: verified and staged; transcript hash
    CONFIRM = 0x05  # tool: the technician said yes  -> DONE
    DONE = 0x06  # device: committed
    QUERY = 0x07  # tool: read identity and state  -> STATUS
    STATUS = 0x08  # device: identity and state
    PING = 0x09  # tool: keep the session alive while the technician reads  -> PONG
    PONG = 0x0A
    CLOSE = 0x0B  # tool: end the session (anything staged is discarded) -> CLOSED
    CLOSED = 0x0C
    ERROR = 0x7F  # device: the request failed; code = error class name


REQUESTS = frozenset({MsgType.OPEN, MsgType.PROVISION, MsgType.CONFIRM, MsgType.QUERY, MsgType.PING,
                      MsgType.CLOSE})
REPLY_TO: Mapping[MsgType, MsgType] = MappingProxyType({
    MsgType.OPEN: MsgType.HELLO, MsgType.PROVISION: MsgType.PENDING, MsgType.CONFIRM: MsgType.DONE,
    MsgType.QUERY: MsgType.STATUS, MsgType.PING: MsgType.PONG, MsgType.CLOSE: MsgType.CLOSED})


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its message type, the tool's session id, the request's seq (a reply carries the
    request's), the body as raw CBOR bytes (`decode_message` parses it) and the protocol version."""

    type: MsgType
    session: int
    seq: int
    body: bytes
    version: int = PROTOCOL_VERSION


def encode_frame(frame: Frame) -> bytes:
    """The bytes to write: delimiter, COBS-encoded frame, delimiter."""
    if len(frame.body) > MAX_BODY:
        raise FrameTooLargeError(f"{frame.type.name} body of {len(frame.body)} bytes exceeds the cap of {MAX_BODY}")
    if not (0 <= frame.session <= 0xFFFFFFFF and 0 <= frame.seq <= MAX_SEQ):
        raise FrameLengthError(f"{frame.type.name}: session or seq out of range")
    raw = HEADER.pack(frame.version, int(frame.type), frame.session, frame.seq, len(frame.body)) + frame.body
    raw += CRC.pack(zlib.crc32(raw))
    return DELIMITER + bytes(cobs.encode(raw)) + DELIMITER


def decode_frame(encoded: bytes) -> Frame:
    """One frame from the bytes between two delimiters. Checks, in order: size, COBS, length, CRC,
    version, type, length field."""
    if len(encoded) > MAX_ENCODED:
        raise FrameTooLargeError(f"frame of {len(encoded)} encoded bytes exceeds the maximum of {MAX_ENCODED}")
    try:
        raw = bytes(cobs.decode(encoded))
    except cobs.DecodeError as exc:
        raise FrameCOBSError(f"frame of {len(encoded)} bytes is not valid COBS ({exc})") from None
    if len(raw) < HEADER.size + CRC.size:
        raise FrameLengthError(f"frame of {len(raw)} bytes is shorter than header and CRC "
                               f"({HEADER.size + CRC.size})")
    (crc,) = CRC.unpack_from(raw, len(raw) - CRC.size)
    if zlib.crc32(raw[:-CRC.size]) != crc:
        raise FrameCRCError(f"frame of {len(raw)} bytes: CRC-32 mismatch (damaged on the line)")
    version, mtype, session, seq, length = HEADER.unpack_from(raw)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(f"frame version {version}: this side speaks version(s) "
                                      f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    try:
        kind = MsgType(mtype)
    except ValueError:
        raise UnknownMessageTypeError(f"frame type 0x{mtype:02x} (seq {seq}) is no message of version "
                                      f"{version}") from None
    if length != len(raw) - HEADER.size - CRC.size:
        raise FrameLengthError(f"{kind.name} frame (seq {seq}): length field {length} but "
                               f"{len(raw) - HEADER.size - CRC.size} body bytes")
    if length > MAX_BODY:
        raise FrameTooLargeError(f"{kind.name} body of {length} bytes exceeds the cap of {MAX_BODY}")
    return Frame(kind, session, seq, raw[HEADER.size:-CRC.size], version)


def frame_header(encoded: bytes) -> tuple[int, int] | None:
    """(session, seq) of a frame whose CRC is good but which was refused for its version or type,
    so the refusal can be addressed to its sender; None if even that cannot be read."""
    try:
        raw = bytes(cobs.decode(encoded))
    except cobs.DecodeError:
        return None
    if len(raw) < HEADER.size + CRC.size or zlib.crc32(raw[:-CRC.size]) != CRC.unpack_from(raw, len(raw) - CRC.size)[0]:
        return None
    _, _, session, seq, _ = HEADER.unpack_from(raw)
    return session, seq


class FrameReader:
    """Splits a byte stream into frames. A damaged frame is reported and dropped whole; the reader
    resynchronises at the next delimiter, so one bad frame never swallows the next."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = 0  # bytes discarded from a frame that grew past the maximum

    def feed(self, data: bytes) -> list[tuple[Frame | FrameError, bytes]]:
        """Frames (or the error that made one unusable) completed by `data`, each with its encoded bytes."""
        out: list[tuple[Frame | FrameError, bytes]] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            chunk = data[start:] if end < 0 else data[start:end]
            if self._overflow:
                self._overflow += len(chunk)
            elif len(self._buf) + len(chunk) > MAX_ENCODED:
                self._overflow = len(self._buf) + len(chunk)
                self._buf.clear()
            else:
                self._buf += chunk
            if end < 0:
                return out
            if self._overflow:
                out.append((FrameTooLargeError(f"{self._overflow} bytes without a frame delimiter exceed the "
                                               f"maximum frame of {MAX_ENCODED}"), b""))
                self._overflow = 0
            elif self._buf:
                encoded = bytes(self._buf)
                self._buf.clear()
                try:
                    out.append((decode_frame(encoded), encoded))
                except FrameError as exc:
                    out.append((exc, encoded))
            start = end + 1

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = 0


# --- message bodies ---------------------------------------------------------------------------------------
# Field kinds: "str" (text, 1..limit characters), "str?" (or null), "bytes" (exactly `limit` bytes when
# limit < 0, else up to limit), "bytes?", "int" (0..limit), "int?", "strs" (list of up to limit texts).
Spec = Mapping[str, tuple[str, int]]
STATES = ("unprovisioned", "provisioned", "reprovision")
SPECS: Mapping[MsgType, Spec] = MappingProxyType({mtype: MappingProxyType(fields) for mtype, fields in {
    MsgType.OPEN: {"tool": ("str", 80), "device_id": ("str?", 63)},
    MsgType.HELLO: {"device_id": ("str", 63), "nonce": ("bytes", -32), "ed25519": ("bytes", -32),
                    "x25519": ("bytes", -32), "csr": ("bytes", 4096), "state": ("str", 16),
                    "fleet": ("str?", 128), "root_version": ("int?", 1 << 31), "root_sha256": ("bytes?", -32),
                    "state_dir": ("str", 1024), "config": ("str", 1024), "agent": ("str", 80)},
    MsgType.PROVISION: {"bundle": ("bytes", MAX_BODY - 64)},
    MsgType.PENDING: {"transcript": ("bytes", -32), "confirm_within": ("int", 86400)},
    MsgType.CONFIRM: {"transcript": ("bytes", -32), "certificate": ("bytes", MAX_CERTIFICATE)},
    MsgType.DONE: {"device_id": ("str", 63), "committed": ("str", 32), "audit_seq": ("int", 1 << 62)},
    MsgType.QUERY: {},
    MsgType.STATUS: {"device_id": ("str", 63), "state": ("str", 16), "ed25519": ("bytes", -32),
                     "fleet": ("str?", 128), "root_version": ("int?", 1 << 31), "cert_serial": ("str?", 64),
                     "cert_not_after": ("str?", 32), "broker": ("str?", 300), "provisioned_at": ("str?", 32),
                     "transcript": ("bytes?", -32), "config_sha256": ("bytes?", -32),
                     "token": ("str?", 300)},
    MsgType.PING: {},
    MsgType.PONG: {},
    MsgType.CLOSE: {"reason": ("str?", 300)},
    MsgType.CLOSED: {},
    MsgType.ERROR: {"code": ("str", 64), "message": ("str", 1000)},
}.items()})


def encode_body(mtype: MsgType, body: Mapping[str, Any]) -> bytes:
    """A message body as canonical CBOR, checked against its type's fields first (both ends check)."""
    check_body(mtype, body)
    return cbor2.dumps(dict(body), canonical=True)


def decode_body(mtype: MsgType, data: bytes) -> dict[str, Any]:
    """Parse a body strictly: one definite-length CBOR map, nothing after it, exactly the type's fields."""
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, max_depth=MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False,
                                  strict_hashable_types=True).decode()
    except (cbor2.CBORDecodeError, RecursionError, OverflowError, MemoryError) as exc:
        raise MessageFieldError(f"{mtype.name}: body is not valid CBOR ({exc})") from None
    if fp.tell() != len(data):
        raise MessageFieldError(f"{mtype.name}: {len(data) - fp.tell()} bytes after the body's CBOR map")
    if not isinstance(value, dict):
        raise MessageFieldError(f"{mtype.name}: body must be a CBOR map, got {type(value).__name__}")
    body = dict(value)
    check_body(mtype, body)
    return body


def check_body(mtype: MsgType, body: Mapping[Any, Any]) -> None:
    """Exactly the fields of `mtype` (SPECS), each of its kind and size; raises MessageFieldError naming the
    message and field at fault."""
    spec = SPECS[mtype]
    keys = set(body)
    if keys != set(spec):
        missing = sorted(str(k) for k in set(spec) - keys)
        extra = sorted(repr(k)[:40] for k in keys - set(spec))
        raise MessageFieldError(f"{mtype.name}: " + "; ".join(
            [*(["missing field(s) " + ", ".join(missing)] if missing else []),
             *(["unexpected field(s) " + ", ".join(extra)] if extra else [])]))
    for name, (kind, limit) in spec.items():
        _check_field(mtype, name, kind, limit, body[name])
    if mtype in (MsgType.HELLO, MsgType.STATUS) and body["state"] not in STATES:
        raise MessageFieldError(f"{mtype.name}: state {body['state']!r} is not one of {', '.join(STATES)}")


def _check_field(mtype: MsgType, name: str, kind: str, limit: int, v: object) -> None:
    where = f"{mtype.name}.{name}"
    if kind.endswith("?"):
        if v is None:
            return
        kind = kind[:-1]
    if kind == "str":
        if not isinstance(v, str) or not 0 < len(v) <= limit:
            raise MessageFieldError(f"{where}: expected text of 1-{limit} characters")
    elif kind == "bytes":
        if not isinstance(v, bytes) or (len(v) != -limit if limit < 0 else len(v) > limit):
            raise MessageFieldError(f"{where}: expected {-limit if limit < 0 else f'at most {limit}'} bytes")
    elif kind == "int":
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
            raise MessageFieldError(f"{where}: expected an integer in [0, {limit}]")
    else:  # pragma: no cover - SPECS only uses the kinds above
        raise MessageFieldError(f"{where}: unknown field kind {kind!r}")


def decode_message(frame: Frame) -> dict[str, Any]:
    """The frame's body, parsed and checked strictly for its type (MessageFieldError otherwise)."""
    return decode_body(frame.type, frame.body)


# --- the confirmation code ------------------------------------------------------------------------------
def transcript_hash(hello_body: bytes, bundle: bytes) -> bytes:
    """sha256 over everything that decides what the device commits: the HELLO exactly as sent (id, nonce,
    keys, CSR, trust) and the signed bundle exactly as received, each length-prefixed."""
    h = hashlib.sha256(b"edge-provision/v1\x00")
    for part in (hello_body, bundle):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def confirmation_code(transcript: bytes) -> str:
    """Six digits from the transcript hash: equal on both ends when both saw the same messages (and, for
    different messages, equal only by a one-in-a-million chance)."""
    n = int.from_bytes(hashlib.sha256(b"edge-provision-code/v1\x00" + transcript).digest()[:8], "big")
    return f"{n % 10 ** CODE_DIGITS:0{CODE_DIGITS}d}"


def show_code(code: str) -> str:
    """How both ends print it: two groups of three, easy to read aloud."""
    return f"{code[:3]} {code[3:]}"
