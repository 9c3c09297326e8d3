"""The node's shard loader: every check, in a fixed order, each failure its own error.

Like python-tuf's TrustedMetadataSet, one small class owns the order; nothing reaches the gallery unless
all of it passed. Order: size cap, framing, signatures against the trusted root (threshold), schema,
version above the floor, validity period, this device a recipient, payload length and sha256, unwrap
the content key, decrypt into a buffer the node owns, payload structure, model, threshold floor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.identity import DeviceIdentity
from edge.trust.keys import key_id
from edge.trust.root import DocumentFormatError, TrustedRoot, parse_envelope
from edge.trust.times import format_time
from edge.vision.manifest import ModelSpec
from edge.watchlist.gallery import Gallery, GalleryError
from edge.watchlist.shard import (
    HPKE_SUITE,
    SHARD_TYPE,
    Recipient,
    ShardDecryptError,
    ShardExpiredError,
    ShardFormatError,
    ShardManifest,
    ShardModelMismatchError,
    ShardNotForThisDeviceError,
    ShardNotYetValidError,
    ShardPayloadError,
    ShardReplayError,
    ShardRollbackError,
    ShardThresholdError,
    ShardTooLargeError,
    decode_payload,
    parse_manifest,
    split_shard,
    wrap_info,
)

DEFAULT_MAX_SHARD_BYTES = 768 << 20  # ~1.5M entries of 128 floats
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class AcceptedShard:
    """A shard that passed every check, with its gallery decrypted into memory the node owns."""

    manifest: ShardManifest
    gallery: Gallery
    manifest_sha256: str  # identifies the shard: the manifest covers the ciphertext's sha256


class ShardVerifier:
    """Checks one shard file against what this node trusts and runs."""

    def __init__(self, root: TrustedRoot, identity: DeviceIdentity, model: ModelSpec, version_floor: int,
                 max_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.root = root
        self.identity = identity
        self.model = model
        self.version_floor = version_floor
        self.max_bytes = max_bytes

    def verify(self, data: bytes, now: datetime, reload_current: bool = False) -> AcceptedShard:
        """Run every check in order. `reload_current` admits the version equal to the floor, for
        re-loading the node's own stored copy after a restart; everything else still applies."""
        self._size(len(data))
        envelope, ciphertext = split_shard(data)
        try:
            signed = parse_envelope(envelope, SHARD_TYPE)
        except DocumentFormatError as exc:
            raise ShardFormatError(f"manifest: {exc}") from None
        self.root.check_unexpired(now)
        self.root.root.verify(signed, "shard")
        manifest = parse_manifest(signed)
        if manifest.fleet != self.root.root.fleet:
            raise ShardFormatError(f"manifest fleet {manifest.fleet!r} is not this node's fleet")
        self._version(manifest, reload_current)
        self._validity(manifest, now)
        recipient = self._recipient(manifest)
        self._payload(manifest, ciphertext)
        key = self._unwrap(manifest, recipient.wrapped_key)
        # Decrypted straight into the buffer the gallery then owns: no second copy of the watch list.
        plaintext = bytearray(len(ciphertext) - 16)
        try:
            try:
                AESGCM(key).decrypt_into(manifest.nonce, ciphertext, manifest.associated_data(), plaintext)
            except InvalidTag:
                raise ShardDecryptError("payload does not decrypt (AES-GCM tag mismatch)") from None
            ids, matrix = decode_payload(memoryview(plaintext), manifest.entries, manifest.dim)
            gallery = Gallery(matrix, ids, adopt=True)
        except (ShardFormatError, ShardDecryptError, GalleryError) as exc:
            np.frombuffer(plaintext, np.uint8).fill(0)
            if isinstance(exc, GalleryError):
                raise ShardFormatError(f"payload: {exc}") from None
            raise
        # the ids region of the buffer is no longer needed; the matrix region is the gallery
        np.frombuffer(plaintext, np.uint8, count=len(plaintext) - matrix.nbytes).fill(0)
        del matrix
        self._model(manifest, gallery)
        return AcceptedShard(manifest, gallery, hashlib.sha256(envelope).hexdigest())

    def _size(self, n: int) -> None:
        if n > self.max_bytes:
            raise ShardTooLargeError(f"{n} bytes exceeds the cap of {self.max_bytes}")

    def _version(self, m: ShardManifest, reload_current: bool) -> None:
        if m.version < self.version_floor or (m.version == self.version_floor and not reload_current):
            kind = ShardReplayError if m.version == self.version_floor else ShardRollbackError
            raise kind(f"version {m.version} is not above the accepted version {self.version_floor}")

    def _validity(self, m: ShardManifest, now: datetime) -> None:
        if now >= m.expires:
            raise ShardExpiredError(f"expired at {format_time(m.expires)}")
        if m.issued > now + CLOCK_SKEW:
            raise ShardNotYetValidError(
                f"issued {format_time(m.issued)}, in the future (now {format_time(now)})")

    def _recipient(self, m: ShardManifest) -> Recipient:
        r = m.recipients.get(self.identity.device_id)
        if r is None:
            raise ShardNotForThisDeviceError(f"device {self.identity.device_id!r} is not a recipient")
        if r.kid != key_id(self.identity.encryption_key.public_key()):
            raise ShardNotForThisDeviceError(
                f"wrapped for another key of {self.identity.device_id!r} (re-registered device?)")
        return r

    def _payload(self, m: ShardManifest, ciphertext: memoryview) -> None:
        if len(ciphertext) != m.payload_length:
            raise ShardPayloadError(f"ciphertext is {len(ciphertext)} bytes, manifest says "
                                    f"{m.payload_length} (truncated or trailing data)")
        if hashlib.sha256(ciphertext).hexdigest() != m.payload_sha256:
            raise ShardPayloadError("ciphertext sha256 differs from the signed manifest")

    def _unwrap(self, m: ShardManifest, wrapped: bytes) -> bytes:
        try:
            return HPKE_SUITE.decrypt(wrapped, self.identity.encryption_key,
                                      info=wrap_info(self.identity.device_id, m.associated_data()))
        except InvalidTag:
            raise ShardDecryptError("content key does not unwrap with this device's key") from None

    def _model(self, m: ShardManifest, gallery: Gallery) -> None:
        spec = self.model
        if m.model_id != spec.id or m.model_sha256 != spec.sha256 or m.dim != spec.embedding_size:
            gallery.wipe()
            raise ShardModelMismatchError(f"embeddings are for {m.model_id} ({m.model_sha256[:12]}), "
                                          f"this node runs {spec.id} ({spec.sha256[:12]})")
        floor = spec.threshold_floor or 0.0
        if m.deployment.threshold < floor:
            gallery.wipe()
            raise ShardThresholdError(f"deployment threshold {m.deployment.threshold} is below the floor "
                                      f"{floor} of {spec.id}")
