"""What the fleet gives a device over the cable, as one signed document, and the re-provisioning token.

Both are the fleet's canonical signed envelopes (`edge.trust.root.sign_document`), signed by the fleet's
**command** keys and checked against the fleet root the device already trusts: a freshly flashed image
carries the fleet root (docs/serial-protocol.md, "Trust"), so nothing on the cable is taken on faith.

Bundle body: {type: "edge-provision-bundle", schema: 1, bundle_id, fleet, device_id, nonce (the HELLO's,
hex), hello_sha256 (of the HELLO body as the tool received it), issued, roots (the fleet's root documents
from the device's version on, as text), broker_ca (PEM text), broker (mqtts URL), operator {name, x25519,
key_id}, config (node.toml text)}. The device's certificate is not in it: the fleet issues it only after the
technician has confirmed the code, and sends it with CONFIRM (it proves itself: issued by broker_ca, for the
device's own key and id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.events.ids import uuid7
from edge.provision.errors import (
    BundleFormatError,
    BundleSignatureError,
    DeviceIdMismatchError,
    HelloMismatchError,
    NoFleetRootError,
    NonceMismatchError,
    ReprovisionTokenError,
    WrongFleetRootError,
)
from edge.trust.keys import key_id, x25519_public
from edge.trust.root import (
    BadSignatureError,
    DocumentFormatError,
    Root,
    SignatureThresholdError,
    Signed,
    TrustedRoot,
    TrustError,
    UnknownSignerError,
    is_hex,
    load_root_bytes,
    parse_envelope,
    sign_document,
)
from edge.trust.times import TimeFormatError, format_time, parse_time

BUNDLE_TYPE = "edge-provision-bundle"
TOKEN_TYPE = "edge-reprovision-token"
SCHEMA = 1
MAX_BUNDLE_BYTES = 48 * 1024  # below the frame's body cap; a bundle is ~6 kB plus ~1.5 kB per root version
MAX_TOKEN_BYTES = 4096
MAX_TOKEN_LIFETIME = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)
_BUNDLE_FIELDS = frozenset({"type", "schema", "bundle_id", "fleet", "device_id", "nonce", "hello_sha256", "issued",
                            "roots", "broker_ca", "broker", "operator", "config"})
_TOKEN_FIELDS = frozenset({"type", "schema", "token_id", "fleet", "device_id", "issued", "expires"})


@dataclass(frozen=True)
class OperatorKey:
    """The operator's X25519 public key that the node seals evidence to (`edge-fleet operator add`)."""

    name: str
    x25519: str
    key_id: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "x25519": self.x25519, "key_id": self.key_id}

    @classmethod
    def from_json(cls, doc: object, where: str) -> OperatorKey:
        if not isinstance(doc, dict) or set(doc) != {"name", "x25519", "key_id"} or not all(
                isinstance(v, str) for v in doc.values()):
            raise BundleFormatError(f"{where}: expected {{name, x25519, key_id}} strings")
        try:
            pub = x25519_public(doc["x25519"])
        except ValueError:
            raise BundleFormatError(f"{where}.x25519: not an X25519 public key (64 hex digits)") from None
        if key_id(pub) != doc["key_id"]:
            raise BundleFormatError(f"{where}.key_id: is not the sha256 of the key")
        return cls(doc["name"], doc["x25519"], doc["key_id"])


@dataclass(frozen=True)
class Bundle:
    """What the fleet gives a device (docs/serial-protocol.md, Trust), bound to one session's nonce and HELLO."""

    bundle_id: str
    fleet: str
    device_id: str
    nonce: bytes
    hello_sha256: bytes
    issued: datetime
    roots: tuple[bytes, ...]
    broker_ca: bytes
    broker: str
    operator: OperatorKey
    config: str

    def to_body(self) -> dict[str, Any]:
        return {"type": BUNDLE_TYPE, "schema": SCHEMA, "bundle_id": self.bundle_id, "fleet": self.fleet,
                "device_id": self.device_id, "nonce": self.nonce.hex(), "hello_sha256": self.hello_sha256.hex(),
                "issued": format_time(self.issued), "roots": [r.decode() for r in self.roots],
                "broker_ca": self.broker_ca.decode(),
                "broker": self.broker, "operator": self.operator.to_json(), "config": self.config}


def new_bundle(fleet: str, device_id: str, nonce: bytes, hello_body: bytes, issued: datetime,
               roots: Sequence[bytes], broker_ca: bytes, broker: str, operator: OperatorKey, config: str) -> Bundle:
    return Bundle(uuid7(), fleet, device_id, nonce, hashlib.sha256(hello_body).digest(), issued, tuple(roots),
                  broker_ca, broker, operator, config)


def sign_bundle(bundle: Bundle, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    data = sign_document(bundle.to_body(), keys)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"bundle of {len(data)} bytes exceeds the cap of {MAX_BUNDLE_BYTES}")
    return data


def _text(body: Mapping[str, Any], name: str, limit: int) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise BundleFormatError(f"bundle.{name}: expected text of 1-{limit} characters")
    return v


def _hexbytes(body: Mapping[str, Any], name: str, n: int) -> bytes:
    v = body.get(name)
    if not isinstance(v, str) or not is_hex(v, 2 * n):  # the fleet's one definition of "hex"
        raise BundleFormatError(f"bundle.{name}: expected {2 * n} lowercase hex digits")
    return bytes.fromhex(v)


def parse_bundle(data: bytes) -> tuple[Bundle, Signed]:
    """Size cap, canonical envelope, exact fields and types. Signatures are not checked here."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"bundle of {len(data)} bytes exceeds the cap of {MAX_BUNDLE_BYTES}")
    try:
        signed = parse_envelope(data, BUNDLE_TYPE)
    except DocumentFormatError as exc:
        raise BundleFormatError(f"bundle: {exc}") from None
    b = signed.body
    if set(b) != _BUNDLE_FIELDS:
        missing, extra = sorted(_BUNDLE_FIELDS - set(b)), sorted(set(b) - _BUNDLE_FIELDS)
        raise BundleFormatError(f"bundle: missing {missing}, unexpected {extra}")
    if b["schema"] != SCHEMA:
        raise BundleFormatError(f"bundle.schema: {b['schema']!r} is not {SCHEMA}")
    try:
        issued = parse_time(b["issued"])
    except TimeFormatError as exc:
        raise BundleFormatError(f"bundle.issued: {exc}") from None
    roots = b["roots"]
    if not isinstance(roots, list) or not roots or not all(isinstance(r, str) and r for r in roots):
        raise BundleFormatError("bundle.roots: expected a non-empty list of root documents")
    bundle = Bundle(
        bundle_id=_text(b, "bundle_id", 64), fleet=_text(b, "fleet", 128), device_id=_text(b, "device_id", 63),
        nonce=_hexbytes(b, "nonce", 32), hello_sha256=_hexbytes(b, "hello_sha256", 32), issued=issued,
        roots=tuple(r.encode() for r in roots), broker_ca=_text(b, "broker_ca", 8192).encode(),
        broker=_text(b, "broker", 300), operator=OperatorKey.from_json(b["operator"], "bundle.operator"),
        config=_text(b, "config", 16384))
    return bundle, signed


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check, with the fleet root it brings (the newest of its chain)."""

    bundle: Bundle
    root: Root
    root_bytes: bytes


def _follow_roots(anchor: bytes, roots: Sequence[bytes]) -> tuple[TrustedRoot, bytes]:
    """From the root the device trusts along the bundle's roots: the one at the device's version must be
    byte-identical to it, each later one must be a properly signed next version (TUF rules)."""
    try:
        trusted = TrustedRoot.bootstrap(anchor)
    except TrustError as exc:
        raise NoFleetRootError(f"the fleet root this device holds is unusable: {exc}") from None
    have = trusted.root
    latest = anchor
    seen_anchor = False
    for i, doc in enumerate(roots):
        try:
            root, _ = load_root_bytes(doc)
        except TrustError as exc:
            raise BundleFormatError(f"bundle.roots[{i}]: {exc}") from None
        if root.fleet != have.fleet:
            raise WrongFleetRootError(f"bundle.roots[{i}] is a root of fleet {root.fleet!r}; this device trusts "
                                      f"fleet {have.fleet!r}")
        if root.version < have.version:
            continue
        if root.version == have.version:
            if doc != anchor:
                raise WrongFleetRootError(
                    f"bundle.roots[{i}]: fleet {root.fleet!r} root v{root.version} differs from the one this device "
                    f"trusts (sha256 {hashlib.sha256(anchor).hexdigest()[:16]}...): a tool of another fleet?")
            seen_anchor = True
            continue
        try:
            trusted.update(doc)
        except TrustError as exc:
            raise WrongFleetRootError(f"bundle.roots[{i}] (v{root.version}) does not follow the root this device "
                                      f"trusts: {type(exc).__name__}: {exc}") from None
        latest = doc
    if not seen_anchor and trusted.root.version == have.version:
        raise WrongFleetRootError(f"the bundle's roots do not reach fleet {have.fleet!r} root v{have.version}, "
                                  "which this device trusts")
    return trusted, latest


def verify_bundle(data: bytes, anchor: bytes, device_id: str, nonce: bytes, hello_body: bytes,
                  at: datetime) -> VerifiedBundle:
    """The device's checks, in order: size and form; fleet; root chain from the trusted root; root not
    expired; signatures (command role, threshold); addressed to this device; this session's nonce (no
    replay); made for this HELLO (these keys and CSR). Contents are checked when staged."""
    bundle, signed = parse_bundle(data)
    trusted, latest = _follow_roots(anchor, bundle.roots)
    root = trusted.root
    if bundle.fleet != root.fleet:
        raise WrongFleetRootError(f"bundle is from fleet {bundle.fleet!r}; this device trusts fleet {root.fleet!r}")
    try:
        trusted.check_unexpired(at)
    except TrustError as exc:
        raise WrongFleetRootError(str(exc)) from None
    if not any(kid in root.keys for kid, _ in signed.signatures):
        raise WrongFleetRootError(
            f"bundle signed by key(s) {', '.join(k[:16] + '...' for k, _ in signed.signatures)}, none of which "
            f"fleet {root.fleet!r} root v{root.version} knows: a tool of another fleet?")
    try:
        root.verify(signed, "command")
    except (UnknownSignerError, BadSignatureError, SignatureThresholdError) as exc:
        raise BundleSignatureError(f"bundle: {exc}") from None
    if bundle.device_id != device_id:
        raise DeviceIdMismatchError(f"bundle is for device {bundle.device_id!r}; this session is {device_id!r}")
    if bundle.nonce != nonce:
        raise NonceMismatchError(f"bundle {bundle.bundle_id} answers nonce {bundle.nonce.hex()[:16]}..., this "
                                 f"session's is {nonce.hex()[:16]}...: a replayed or stale bundle")
    if bundle.hello_sha256 != hashlib.sha256(hello_body).digest():
        raise HelloMismatchError("bundle was made for a different HELLO (other keys, CSR or device id)")
    return VerifiedBundle(bundle, root, latest)


# --- re-provisioning token -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReprovisionToken:
    """A verified re-provisioning token: while it is valid and unused, the agent accepts a new bundle."""

    token_id: str
    fleet: str
    device_id: str
    issued: datetime
    expires: datetime


def token_body(fleet: str, device_id: str, issued: datetime, lifetime: timedelta) -> dict[str, Any]:
    """The body of a new re-provisioning token (to be signed with the command keys: `sign_document`)."""
    if not timedelta(0) < lifetime <= MAX_TOKEN_LIFETIME:
        raise ReprovisionTokenError(f"token lifetime {lifetime} must be positive and at most {MAX_TOKEN_LIFETIME}")
    return {"type": TOKEN_TYPE, "schema": SCHEMA, "token_id": uuid7(), "fleet": fleet, "device_id": device_id,
            "issued": format_time(issued), "expires": format_time(issued + lifetime)}


def verify_token(data: bytes, trusted: Root, device_id: str, at: datetime) -> ReprovisionToken:
    """Size; envelope; command-role signatures of the trusted root; fields; fleet; device; validity window.
    (Single use is the agent's part: it remembers the ids it has consumed.)"""
    if len(data) > MAX_TOKEN_BYTES:
        raise ReprovisionTokenError(f"token of {len(data)} bytes exceeds the cap of {MAX_TOKEN_BYTES}")
    try:
        signed = parse_envelope(data, TOKEN_TYPE)
        trusted.verify(signed, "command")
    except TrustError as exc:
        raise ReprovisionTokenError(f"{type(exc).__name__}: {exc}") from None
    b = signed.body
    if set(b) != _TOKEN_FIELDS or b["schema"] != SCHEMA or not all(
            isinstance(b[k], str) for k in ("token_id", "fleet", "device_id")):
        raise ReprovisionTokenError(f"token: fields must be exactly {sorted(_TOKEN_FIELDS)}")
    try:
        token = ReprovisionToken(b["token_id"], b["fleet"], b["device_id"], parse_time(b["issued"]),
                                 parse_time(b["expires"]))
    except TimeFormatError as exc:
        raise ReprovisionTokenError(f"token: {exc}") from None
    if token.fleet != trusted.fleet:
        raise ReprovisionTokenError(f"token is for fleet {token.fleet!r}, this device trusts {trusted.fleet!r}")
    if token.device_id != device_id:
        raise ReprovisionTokenError(f"token is for device {token.device_id!r}, this is {device_id!r}")
    if token.expires - token.issued > MAX_TOKEN_LIFETIME:
        raise ReprovisionTokenError(f"token valid for longer than {MAX_TOKEN_LIFETIME}")
    if at >= token.expires:
        raise ReprovisionTokenError(f"token {token.token_id} expired at {format_time(token.expires)}")
    if token.issued > at + CLOCK_SKEW:
        raise ReprovisionTokenError(f"token {token.token_id} is issued in the future ({format_time(token.issued)})")
    return token
