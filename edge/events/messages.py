"""What a device sends: match events, state, command results and audit checkpoints.

Each is a canonical JSON object with a `type` and `schema`, signed by the device's Ed25519 key: `sig` is
the signature over the canonical encoding of every other field. Consumers parse strictly (exact fields,
types) after checking the signature against the device the topic names.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.events.ids import is_uuid7
from edge.trust.canonical import CanonicalFormError, canonical, parse_canonical
from edge.trust.times import TimeFormatError, format_time, parse_time
from edge.watchlist.shard import (
    DEFAULT_REVIEWERS_REQUIRED,
    MAX_RETENTION_DAYS,
    MAX_REVIEWERS_REQUIRED,
    MIN_RETENTION_DAYS,
)

SCHEMA = 1
MATCH_EVENT = "edge-match-event"
STATE = "edge-state"
COMMAND_RESULT = "edge-command-result"
AUDIT_CHECKPOINT = "edge-audit-checkpoint"
MESSAGE_TYPES = (MATCH_EVENT, STATE, COMMAND_RESULT, AUDIT_CHECKPOINT)
MAX_MESSAGE_BYTES = 1 << 20  # an event with its encrypted crop is ~10-60 kB
# the only media types a sealed crop may declare: a consumer serves the opened crop with it, so a device must
# not be able to make a console serve text/html or script (the node encodes JPEG)
EVIDENCE_MEDIA_TYPES = ("image/jpeg", "image/png")


class MessageError(Exception):
    """A device message cannot be accepted (the message says which field or check failed)."""


class MessageFormatError(MessageError):
    """Not canonical JSON, or a field missing, extra or of the wrong type."""


class MessageSignatureError(MessageError):
    """The signature does not verify with the key of the device the message claims to come from."""


class MessageOriginError(MessageError):
    """The message names a different device than the topic it arrived on."""


class MessageExpiredError(MessageError):
    """The message arrived after its own `expires` time."""


def sign_message(body: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    if "sig" in body:
        raise MessageFormatError("the body to sign must not carry a sig field")
    return canonical({**body, "sig": key.sign(canonical(body)).hex()})


def open_message(data: bytes, expected_type: str, key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse and verify a signed device message; returns the body without `sig`."""
    body = peek_message(data, expected_type)
    sig = body.pop("sig")
    try:
        key.verify(bytes.fromhex(sig), canonical(body))
    except (InvalidSignature, ValueError):
        raise MessageSignatureError(f"{expected_type} from {body.get('device_id')!r}: signature does not "
                                    "verify with the registered device key (forged or altered)") from None
    return body


def peek_message(data: bytes, expected_type: str) -> dict[str, Any]:
    """Parse without verifying (to learn which device key to verify with). Never trust the result."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageFormatError(f"{len(data)} bytes exceeds the cap of {MAX_MESSAGE_BYTES}")
    try:
        doc = parse_canonical(data)
    except CanonicalFormError as exc:
        raise MessageFormatError(str(exc)) from None
    if not isinstance(doc, dict):
        raise MessageFormatError("expected a JSON object")
    if doc.get("type") != expected_type or doc.get("schema") != SCHEMA:
        raise MessageFormatError(f"type/schema: expected {expected_type!r} schema {SCHEMA}, "
                                 f"got {doc.get('type')!r} schema {doc.get('schema')!r}")
    sig = doc.get("sig")
    if not isinstance(sig, str) or len(sig) != 128:
        raise MessageFormatError("sig: expected 128 hex digits")
    if not isinstance(doc.get("device_id"), str):
        raise MessageFormatError("device_id: expected a string")
    return doc


# -- field checks shared by the parsers below --
def _fields(doc: Mapping[str, Any], required: set[str], what: str) -> None:
    keys = set(doc)
    if keys != required:
        missing, extra = sorted(required - keys), sorted(keys - required)
        raise MessageFormatError(f"{what}: " + "; ".join(
            [*(["missing " + ", ".join(missing)] if missing else []),
             *(["unexpected " + ", ".join(extra)] if extra else [])]))


def _str(doc: Mapping[str, Any], name: str, max_len: int = 128) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or not 0 < len(v) <= max_len:
        raise MessageFormatError(f"{name}: expected a string of 1-{max_len} characters")
    return v


def _int(doc: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    v = doc.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise MessageFormatError(f"{name}: expected an integer >= {minimum}")
    return v


def _float(doc: Mapping[str, Any], name: str) -> float:
    v = doc.get(name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not -1.0 <= v <= 1.0:
        raise MessageFormatError(f"{name}: expected a number in [-1, 1]")
    return float(v)


def _margin(doc: Mapping[str, Any], name: str) -> float | None:
    """The score's margin over the runner-up: a number in [0, 2]; absent (None) when there is no runner-up (a
    one-entry list) or the node predates the field. null is read as absent (nodes of one release sent it)."""
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 2.0:
        raise MessageFormatError(f"{name}: expected a number in [0, 2] or null")
    return float(v)


def _optional_int(doc: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """An optional integer field in [low, high]: None when absent (an event from a node before the field)."""
    if name not in doc:
        return None
    v = doc[name]
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise MessageFormatError(f"{name}: expected an integer in {low}..{high}")
    return v


def _time(doc: Mapping[str, Any], name: str) -> datetime:
    try:
        return parse_time(doc.get(name))
    except TimeFormatError as exc:
        raise MessageFormatError(f"{name}: {exc}") from None


def _hex(doc: Mapping[str, Any], name: str, n: int) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or len(v) != n or any(c not in "0123456789abcdef" for c in v):
        raise MessageFormatError(f"{name}: expected {n} lowercase hex digits")
    return v


@dataclass(frozen=True)
class ModelRef:
    id: str
    sha256: str


@dataclass(frozen=True)
class ShardRef:
    id: str
    version: int


@dataclass(frozen=True)
class SealedEvidence:
    """A face crop encrypted (HPKE) to the operator's X25519 key; see edge.events.evidence."""

    recipient: str  # key id of the operator key
    media_type: str
    ciphertext: bytes  # HPKE enc || AEAD ciphertext

    def to_json(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "media_type": self.media_type,
                "ciphertext": base64.b64encode(self.ciphertext).decode()}

    @classmethod
    def from_json(cls, doc: object) -> SealedEvidence:
        if not isinstance(doc, dict):
            raise MessageFormatError("evidence: expected an object")
        _fields(doc, {"recipient", "media_type", "ciphertext"}, "evidence")
        try:
            ct = base64.b64decode(_str(doc, "ciphertext", MAX_MESSAGE_BYTES), validate=True)
        except binascii.Error:
            raise MessageFormatError("evidence.ciphertext: not base64") from None
        media_type = _str(doc, "media_type", 64)
        if media_type not in EVIDENCE_MEDIA_TYPES:
            raise MessageFormatError(f"evidence.media_type: {media_type[:32]!r} is not one of "
                                     f"{', '.join(EVIDENCE_MEDIA_TYPES)}")
        return cls(_hex(doc, "recipient", 64), media_type, ct)


@dataclass(frozen=True)
class MatchEvent:
    """One alert: a tracked face matched a watch-list entry. No name, no photo, no embedding."""

    event_id: str
    seq: int
    device_id: str
    camera_id: str
    deployment_id: str
    ts: datetime
    expires: datetime
    track_id: str
    entry_id: str
    score: float
    threshold: float
    model: ModelRef
    shard: ShardRef
    frames_agreeing: int
    evidence: SealedEvidence | None  # the face crop
    context: SealedEvidence | None = None  # a wider, smaller crop around it, for the reviewer
    margin: float | None = None  # score minus the runner-up entry's score; None: no runner-up, or an old node
    # from the signed deployment the alert was raised under (None: an event from a node before these fields)
    reviewers_required: int | None = None  # distinct reviewers its outcome needs (GOVERNANCE G7)
    retention_days: int | None = None  # days its evidence is kept (the consumer's copy too)

    FIELDS = frozenset({"type", "schema", "event_id", "seq", "device_id", "camera_id", "deployment_id", "ts",
                        "expires", "track_id", "entry_id", "score", "threshold", "model", "shard",
                        "frames_agreeing", "evidence", "context"})
    # added later: an event from an older node lacks them and is still valid; to_body writes each only when
    # it has a value, so an event read back prints as it was sent (docs/mqtt.md, "Optional fields")
    OPTIONAL = frozenset({"margin", "reviewers_required", "retention_days"})

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": MATCH_EVENT, "schema": SCHEMA, "event_id": self.event_id, "seq": self.seq,
            "device_id": self.device_id, "camera_id": self.camera_id, "deployment_id": self.deployment_id,
            "ts": format_time(self.ts), "expires": format_time(self.expires), "track_id": self.track_id,
            "entry_id": self.entry_id, "score": round(self.score, 4), "threshold": round(self.threshold, 4),
            "model": {"id": self.model.id, "sha256": self.model.sha256},
            "shard": {"id": self.shard.id, "version": self.shard.version},
            "frames_agreeing": self.frames_agreeing,
            "evidence": None if self.evidence is None else self.evidence.to_json(),
            "context": None if self.context is None else self.context.to_json()}
        if self.margin is not None:
            body["margin"] = round(self.margin, 4)
        if self.reviewers_required is not None:
            body["reviewers_required"] = self.reviewers_required
        if self.retention_days is not None:
            body["retention_days"] = self.retention_days
        return body

    @classmethod
    def from_body(cls, doc: Mapping[str, Any]) -> MatchEvent:
        _fields(doc, set(cls.FIELDS) | (set(cls.OPTIONAL) & set(doc)), "match event")
        if not is_uuid7(doc["event_id"]):
            raise MessageFormatError("event_id: expected a UUIDv7")
        model, shard = doc["model"], doc["shard"]
        if not isinstance(model, dict) or set(model) != {"id", "sha256"}:
            raise MessageFormatError("model: expected {id, sha256}")
        if not isinstance(shard, dict) or set(shard) != {"id", "version"}:
            raise MessageFormatError("shard: expected {id, version}")
        return cls(
            event_id=doc["event_id"], seq=_int(doc, "seq", 1), device_id=_str(doc, "device_id", 63),
            camera_id=_str(doc, "camera_id"), deployment_id=_str(doc, "deployment_id"), ts=_time(doc, "ts"),
            expires=_time(doc, "expires"), track_id=_str(doc, "track_id"), entry_id=_str(doc, "entry_id"),
            score=_float(doc, "score"), threshold=_float(doc, "threshold"),
            model=ModelRef(_str(model, "id"), _hex(model, "sha256", 64)),
            shard=ShardRef(_str(shard, "id"), _int(shard, "version", 1)),
            frames_agreeing=_int(doc, "frames_agreeing", 1),
            evidence=None if doc["evidence"] is None else SealedEvidence.from_json(doc["evidence"]),
            context=None if doc["context"] is None else SealedEvidence.from_json(doc["context"]),
            margin=_margin(doc, "margin"),
            reviewers_required=_optional_int(doc, "reviewers_required", DEFAULT_REVIEWERS_REQUIRED,
                                             MAX_REVIEWERS_REQUIRED),
            retention_days=_optional_int(doc, "retention_days", MIN_RETENTION_DAYS, MAX_RETENTION_DAYS))


def open_match_event(data: bytes, key: Ed25519PublicKey, topic_device: str, at: datetime) -> MatchEvent:
    """The consumer's checks, in order: format, signature by the topic's device, origin, schema, expiry."""
    body = open_message(data, MATCH_EVENT, key)
    if body["device_id"] != topic_device:
        raise MessageOriginError(f"event names device {body['device_id']!r} but arrived on {topic_device!r}'s "
                                 "topic")
    event = MatchEvent.from_body(body)
    if at >= event.expires:
        raise MessageExpiredError(f"event {event.event_id} expired at {format_time(event.expires)}")
    return event


@dataclass(frozen=True)
class OutboxStats:
    """What the outbox reports on the state topic."""

    pending: int
    enqueued: int
    published: int
    dropped: int  # pushed out by the bound, never sent
    expired: int  # past their expiry before the broker took them
    unreadable: int  # failed to decrypt at rest (wrong storage key or a damaged row), set aside

    def to_json(self) -> dict[str, int]:
        return {"pending": self.pending, "enqueued": self.enqueued, "published": self.published,
                "dropped": self.dropped, "expired": self.expired, "unreadable": self.unreadable}


def state_body(device_id: str, status: str, ts: datetime, boot_id: str,
               detail: Mapping[str, Any]) -> dict[str, Any]:
    """The retained state message: online/offline plus whatever the node reports (outbox counters, ...)."""
    if status not in ("online", "offline"):
        raise MessageFormatError(f"status: {status!r} is not online/offline")
    return {"type": STATE, "schema": SCHEMA, "device_id": device_id, "status": status, "ts": format_time(ts),
            "boot_id": boot_id, "detail": dict(detail)}


def command_result_body(result_id: str, device_id: str, command_id: str | None, verb: str | None, ok: bool,
                        code: str, reason: str, ts: datetime,
                        detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The reply to a command; `code` is the error class (or "ok"), `reason` says why in words.
    `command_id` is null when the command was too malformed to name one."""
    return {"type": COMMAND_RESULT, "schema": SCHEMA, "result_id": result_id, "device_id": device_id,
            "command_id": command_id,
            "verb": verb, "ok": ok, "code": code, "reason": reason[:500], "ts": format_time(ts),
            "detail": dict(detail or {})}


def audit_checkpoint_body(device_id: str, seq: int, head: str, ts: datetime) -> dict[str, Any]:
    """A signed statement of the audit log's length and last hash (truncation becomes detectable)."""
    return {"type": AUDIT_CHECKPOINT, "schema": SCHEMA, "device_id": device_id, "seq": seq, "head": head,
            "ts": format_time(ts)}
