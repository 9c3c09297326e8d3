"""The watch-list shard: one file, defined here once (docs/shard-format.md has a byte-level example).

    magic "EDGESHD1" (8 bytes) | manifest length (uint32, big-endian) | manifest | ciphertext

The manifest is a canonical-JSON envelope signed by the fleet's shard key(s); it carries the deployment,
the model the embeddings belong to, the ciphertext's sha256 and length, and for each recipient device the
content key wrapped with HPKE (X25519, HKDF-SHA256, AES-256-GCM). The ciphertext is AES-256-GCM over the
gallery payload, bound to (fleet, shard id, version) as associated data. Nothing may follow the ciphertext.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hpke

from edge.trust.canonical import canonical
from edge.trust.root import Signed, TrustError
from edge.trust.times import TimeFormatError, format_time, parse_time

MAGIC = b"EDGESHD1"
HEADER = struct.Struct(">8sI")
SHARD_TYPE = "edge-shard"
SHARD_SCHEMA = 1
MAX_MANIFEST_BYTES = 16 << 20
HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
WRAPPED_KEY_BYTES = 32 + 32 + 16  # HPKE enc (X25519 public) + AES-256 key + tag
NONCE_BYTES = 12
PAYLOAD_MAGIC = b"EDGEGAL1"
PAYLOAD_HEADER = struct.Struct(">8sIHH")  # magic, entries, dim, reserved (0): 16 bytes, keeps rows aligned
ENTRY_ID_BYTES = 16
# how many distinct reviewers a deployment may require before an alert's outcome stands (GOVERNANCE G7); a
# deployment without `reviewers_required` requires one, and its manifest omits the field (docs/shard-format.md)
DEFAULT_REVIEWERS_REQUIRED = 1
MAX_REVIEWERS_REQUIRED = 2
MIN_RETENTION_DAYS, MAX_RETENTION_DAYS = 1, 366  # a deployment keeps evidence at least a day, at most a year


class ShardError(TrustError):
    """Base of every reason a shard is refused."""


class ShardTooLargeError(ShardError):
    """The file exceeds the node's size cap (checked before anything is parsed)."""


class ShardFormatError(ShardError):
    """Not a shard file: bad magic, truncated, trailing bytes, or a malformed manifest or payload."""


class ShardRollbackError(ShardError):
    """The shard's version is below the highest version this node has accepted."""


class ShardReplayError(ShardRollbackError):
    """The shard's version equals the highest accepted: a replay of an old file."""


class ShardExpiredError(ShardError):
    """The shard's expiry has passed."""


class ShardNotYetValidError(ShardError):
    """The shard was issued in the future (beyond the allowed clock skew)."""


class ShardNotForThisDeviceError(ShardError):
    """This device is not among the shard's recipients."""


class ShardPayloadError(ShardError):
    """The ciphertext's length or sha256 differs from the signed manifest."""


class ShardDecryptError(ShardError):
    """The content key does not unwrap with this device's key, or the ciphertext does not decrypt."""


class ShardModelMismatchError(ShardError):
    """The shard's embeddings were made by another model than the one this node runs."""


class ShardThresholdError(ShardError):
    """The deployment's threshold is below the model's calibrated floor."""


@dataclass(frozen=True)
class Deployment:
    """An authorised, time-bounded use of a watch list (GOVERNANCE G3, G5, G6)."""

    id: str
    authorisation: str
    start: datetime
    end: datetime
    cameras: tuple[str, ...]
    threshold: float
    retention_days: int
    reviewers_required: int = DEFAULT_REVIEWERS_REQUIRED

    def to_body(self) -> dict[str, Any]:
        """The manifest's deployment; `reviewers_required` only when it is not the default, so a shard that
        does not ask for more is byte for byte what nodes before the field accept."""
        body: dict[str, Any] = {
            "id": self.id, "authorisation": self.authorisation, "start": format_time(self.start),
            "end": format_time(self.end), "cameras": list(self.cameras), "threshold": self.threshold,
            "retention_days": self.retention_days}
        if self.reviewers_required != DEFAULT_REVIEWERS_REQUIRED:
            body["reviewers_required"] = self.reviewers_required
        return body


@dataclass(frozen=True)
class Recipient:
    kid: str  # sha256 of the device's X25519 public key
    wrapped_key: bytes


@dataclass(frozen=True)
class ShardManifest:
    """The signed facts of a shard."""

    fleet: str
    shard_id: str
    version: int
    issued: datetime
    expires: datetime
    deployment: Deployment
    model_id: str
    model_sha256: str
    payload_sha256: str
    payload_length: int
    nonce: bytes
    entries: int
    dim: int
    recipients: Mapping[str, Recipient]

    def to_body(self) -> dict[str, Any]:
        return {
            "type": SHARD_TYPE, "schema": SHARD_SCHEMA, "fleet": self.fleet, "shard_id": self.shard_id,
            "version": self.version, "issued": format_time(self.issued), "expires": format_time(self.expires),
            "deployment": self.deployment.to_body(),
            "model": {"id": self.model_id, "sha256": self.model_sha256},
            "payload": {"sha256": self.payload_sha256, "length": self.payload_length,
                        "nonce": self.nonce.hex(), "entries": self.entries, "dim": self.dim},
            "recipients": {dev: {"kid": r.kid, "wrapped_key": r.wrapped_key.hex()}
                           for dev, r in self.recipients.items()},
        }

    def associated_data(self) -> bytes:
        """What the payload's AES-GCM tag binds: this fleet, shard and version."""
        return associated_data(self.fleet, self.shard_id, self.version)


def associated_data(fleet: str, shard_id: str, version: int) -> bytes:
    return canonical({"fleet": fleet, "shard_id": shard_id, "version": version})


def wrap_info(device_id: str, aad: bytes) -> bytes:
    """HPKE info: binds a wrapped key to one device and one shard version."""
    return b"edge-shard/v1|" + device_id.encode() + b"|" + aad


def encode_shard(envelope: bytes, ciphertext: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(envelope)) + envelope + ciphertext


def split_shard(data: bytes | memoryview) -> tuple[bytes, memoryview]:
    """Framing only: (manifest envelope bytes, ciphertext view)."""
    view = memoryview(data)
    if len(view) < HEADER.size:
        raise ShardFormatError(f"truncated: {len(view)} bytes is shorter than the header")
    magic, n = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ShardFormatError(f"bad magic {bytes(magic)!r}: not a shard file (expected {MAGIC!r})")
    if n > MAX_MANIFEST_BYTES or HEADER.size + n > len(view):
        raise ShardFormatError(f"manifest length {n} runs past the end of the file ({len(view)} bytes)")
    return bytes(view[HEADER.size:HEADER.size + n]), view[HEADER.size + n:]


# -- manifest schema: every field present, exact, typed; anything else is a ShardFormatError naming it --

def _field(m: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    v = m.get(key) if isinstance(m, Mapping) else None
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ShardFormatError(f"manifest {where}.{key}: missing or not {getattr(kind, '__name__', kind)}")
    return v


def _exact(m: Any, keys: set[str], where: str) -> None:
    if not isinstance(m, Mapping) or set(m) != keys:
        got = sorted(m) if isinstance(m, Mapping) else type(m).__name__
        raise ShardFormatError(f"manifest {where}: fields must be exactly {sorted(keys)}, got {got}")


def _time(m: Mapping[str, Any], key: str, where: str) -> datetime:
    try:
        return parse_time(m.get(key))
    except TimeFormatError as exc:
        raise ShardFormatError(f"manifest {where}.{key}: {exc}") from None


def _hex(m: Mapping[str, Any], key: str, nbytes: int, where: str) -> bytes:
    v = _field(m, key, str, where)
    if len(v) != 2 * nbytes or v != v.lower():
        raise ShardFormatError(f"manifest {where}.{key}: expected {2 * nbytes} lowercase hex digits")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise ShardFormatError(f"manifest {where}.{key}: not hex") from None


def _ident(m: Mapping[str, Any], key: str, where: str) -> str:
    v: str = _field(m, key, str, where)
    if not v or len(v) > 128 or not v.isprintable():
        raise ShardFormatError(f"manifest {where}.{key}: expected 1-128 printable characters")
    return v


def parse_manifest(signed: Signed) -> ShardManifest:
    b = signed.body
    _exact(b, {"type", "schema", "fleet", "shard_id", "version", "issued", "expires", "deployment", "model",
               "payload", "recipients"}, "signed")
    if b["schema"] != SHARD_SCHEMA:
        raise ShardFormatError(f"manifest signed.schema: {b['schema']!r} is not {SHARD_SCHEMA}")
    version = _field(b, "version", int, "signed")
    if version < 1:
        raise ShardFormatError("manifest signed.version: must be >= 1")
    d = b["deployment"]
    base = {"id", "authorisation", "start", "end", "cameras", "threshold", "retention_days"}
    _exact(d, base | {"reviewers_required"} if isinstance(d, Mapping) and "reviewers_required" in d else base,
           "deployment")
    reviewers = d.get("reviewers_required", DEFAULT_REVIEWERS_REQUIRED)
    if "reviewers_required" in d and (  # present only when above the default: one spelling of each deployment
            not isinstance(reviewers, int) or isinstance(reviewers, bool)
            or not DEFAULT_REVIEWERS_REQUIRED < reviewers <= MAX_REVIEWERS_REQUIRED):
        raise ShardFormatError(f"manifest deployment.reviewers_required: expected an integer "
                               f"{DEFAULT_REVIEWERS_REQUIRED + 1}..{MAX_REVIEWERS_REQUIRED} (omitted means "
                               f"{DEFAULT_REVIEWERS_REQUIRED})")
    cameras = _field(d, "cameras", list, "deployment")
    if not cameras or not all(isinstance(c, str) and c for c in cameras) or len(set(cameras)) != len(cameras):
        raise ShardFormatError("manifest deployment.cameras: expected unique non-empty names")
    threshold = _field(d, "threshold", (int, float), "deployment")
    retention = _field(d, "retention_days", int, "deployment")
    if not 0 < threshold <= 1 or not MIN_RETENTION_DAYS <= retention <= MAX_RETENTION_DAYS:
        raise ShardFormatError("manifest deployment: threshold must be in (0, 1], retention_days in "
                               f"{MIN_RETENTION_DAYS}..{MAX_RETENTION_DAYS}")
    deployment = Deployment(_ident(d, "id", "deployment"), _field(d, "authorisation", str, "deployment"),
                            _time(d, "start", "deployment"), _time(d, "end", "deployment"), tuple(cameras),
                            float(threshold), retention, reviewers)
    if deployment.end <= deployment.start:
        raise ShardFormatError("manifest deployment: end must be after start")
    mo = b["model"]
    _exact(mo, {"id", "sha256"}, "model")
    p = b["payload"]
    _exact(p, {"sha256", "length", "nonce", "entries", "dim"}, "payload")
    length, entries, dim = (_field(p, k, int, "payload") for k in ("length", "entries", "dim"))
    if length < 16 or entries < 0 or not 1 <= dim <= 4096:
        raise ShardFormatError("manifest payload: length >= 16, entries >= 0, dim 1..4096 expected")
    recipients_doc = _field(b, "recipients", dict, "signed")
    if not recipients_doc:
        raise ShardFormatError("manifest signed.recipients: no recipient devices")
    recipients = {}
    for dev, r in recipients_doc.items():
        _exact(r, {"kid", "wrapped_key"}, f"recipients.{dev}")
        recipients[dev] = Recipient(_hex(r, "kid", 32, f"recipients.{dev}").hex(),
                                    _hex(r, "wrapped_key", WRAPPED_KEY_BYTES, f"recipients.{dev}"))
    manifest = ShardManifest(
        fleet=_ident(b, "fleet", "signed"), shard_id=_ident(b, "shard_id", "signed"), version=version,
        issued=_time(b, "issued", "signed"), expires=_time(b, "expires", "signed"), deployment=deployment,
        model_id=_ident(mo, "id", "model"), model_sha256=_hex(mo, "sha256", 32, "model").hex(),
        payload_sha256=_hex(p, "sha256", 32, "payload").hex(), payload_length=length,
        nonce=_hex(p, "nonce", NONCE_BYTES, "payload"), entries=entries, dim=dim, recipients=recipients)
    if manifest.expires <= manifest.issued:
        raise ShardFormatError("manifest signed: expires must be after issued")
    return manifest


# -- the gallery payload (plaintext) --

def encode_payload(entry_ids: Sequence[str], matrix: np.ndarray) -> bytes:
    """magic | entries (u32) | dim (u16) | 0 (u16) | ids, 16 bytes each (ASCII, NUL-padded) | float32 LE."""
    n, d = matrix.shape
    if n != len(entry_ids):
        raise ValueError("one entry id per row")
    ids = np.zeros(n, f"S{ENTRY_ID_BYTES}")
    for i, eid in enumerate(entry_ids):
        if not 1 <= len(eid) <= ENTRY_ID_BYTES or not eid.isascii() or not eid.isprintable():
            raise ValueError(f"entry id {eid!r}: 1-{ENTRY_ID_BYTES} printable ASCII characters")
        ids[i] = eid.encode("ascii")
    return PAYLOAD_HEADER.pack(PAYLOAD_MAGIC, n, d, 0) + ids.tobytes() + np.ascontiguousarray(matrix, "<f4").tobytes()


def decode_payload(buf: memoryview, entries: int, dim: int) -> tuple[list[str], np.ndarray]:
    """Strict inverse of encode_payload, vectorised. The matrix is a view into buf (no copy), writable
    if buf is, and 16-byte aligned within it."""
    if len(buf) < PAYLOAD_HEADER.size:
        raise ShardFormatError("payload: truncated header")
    magic, n, d, reserved = PAYLOAD_HEADER.unpack_from(buf)
    if magic != PAYLOAD_MAGIC or n != entries or d != dim or reserved:
        raise ShardFormatError(f"payload: header ({bytes(magic)!r}, {n} x {d}) differs from the manifest "
                               f"({entries} x {dim})")
    ids_end = PAYLOAD_HEADER.size + ENTRY_ID_BYTES * n
    if len(buf) != ids_end + 4 * n * d:
        raise ShardFormatError(f"payload: {len(buf)} bytes, expected {ids_end + 4 * n * d} for {n} x {d}")
    raw = np.frombuffer(buf, np.uint8, count=ENTRY_ID_BYTES * n, offset=PAYLOAD_HEADER.size).reshape(n, -1)
    used = raw != 0
    # printable ASCII, then only NUL padding: no NUL inside an id, at least one character
    if n and (not np.all((raw[used] >= 0x20) & (raw[used] < 0x7F)) or not np.all(used[:, 0])
              or np.any(used[:, 1:] & ~used[:, :-1])):
        raise ShardFormatError("payload: malformed entry id (printable ASCII, NUL-padded to 16 bytes)")
    ids = np.frombuffer(buf, f"S{ENTRY_ID_BYTES}", count=n, offset=PAYLOAD_HEADER.size).astype(
        f"U{ENTRY_ID_BYTES}").tolist()
    if len(set(ids)) != n:
        raise ShardFormatError("payload: duplicate entry ids")
    matrix = np.frombuffer(buf, "<f4", count=n * d, offset=ids_end).reshape(n, d)
    if not np.all(np.isfinite(matrix)):
        raise ShardFormatError("payload: non-finite embedding values")
    return ids, matrix
