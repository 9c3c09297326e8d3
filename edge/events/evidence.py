"""Face-crop and context-crop evidence sealed to the operator's X25519 key (HPKE base mode), so the broker
and every other subscriber learn nothing from it. The HPKE info binds the ciphertext to one device, one
event id and its part (face or context): a crop cannot be moved to another event or part and still open."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge.events.messages import SealedEvidence
from edge.trust.keys import key_id
from edge.watchlist.shard import HPKE_SUITE

MAX_EVIDENCE_BYTES = 512 << 10


class EvidenceError(Exception):
    """Evidence cannot be sealed or opened (names the event)."""


PARTS = ("face", "context")  # the face crop (`evidence`) and the wider context crop (`context`)


def _info(device_id: str, event_id: str, part: str) -> bytes:
    if part not in PARTS:
        raise EvidenceError(f"event {event_id}: evidence part {part!r}: expected one of {', '.join(PARTS)}")
    suffix = b"" if part == "face" else b"|" + part.encode()
    return b"edge-evidence/v1|" + device_id.encode() + b"|" + event_id.encode() + suffix


def seal_evidence(crop: bytes, media_type: str, operator: X25519PublicKey, device_id: str,
                  event_id: str, part: str = "face") -> SealedEvidence:
    if len(crop) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(f"event {event_id}: evidence of {len(crop)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    return SealedEvidence(key_id(operator), media_type,
                          HPKE_SUITE.encrypt(crop, operator, info=_info(device_id, event_id, part)))


def open_evidence(sealed: SealedEvidence, operator: X25519PrivateKey, device_id: str, event_id: str,
                  part: str = "face") -> bytes:
    if sealed.recipient != key_id(operator.public_key()):
        raise EvidenceError(f"event {event_id}: evidence is sealed to key {sealed.recipient[:16]}..., "
                            "not this operator key")
    try:
        return HPKE_SUITE.decrypt(sealed.ciphertext, operator, info=_info(device_id, event_id, part))
    except InvalidTag:
        raise EvidenceError(f"event {event_id}: evidence does not decrypt (altered or moved)") from None
