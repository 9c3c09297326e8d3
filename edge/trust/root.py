"""The fleet root: who may sign what, with how many signatures, and how that changes.

Mirrors python-tuf's rules for root metadata (see docs/trust.md): the root names keys and, per role,
the key ids and a signature threshold. A new root is trusted only if it is version N+1 of the trusted one
and is signed by a threshold of the *old* root's root keys and of its *own* root keys. Removing a key
from a role in a new root revokes it. Every signature present must be valid and from a key of the role:
an extra bad signature is a rejection, not ignored, so no byte of a signed document can change unnoticed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.trust.canonical import CanonicalFormError, canonical, parse_canonical
from edge.trust.keys import ed25519_public, key_id, raw_public
from edge.trust.times import TimeFormatError, format_time, parse_time

ROOT_TYPE = "edge-root"
ROOT_SCHEMA = 1
ROLES = ("root", "shard", "command", "review")
# A root made before the review role existed names only these; it still parses (docs/trust.md, "The review role")
REQUIRED_ROLES = ("root", "shard", "command")
_HEX64 = frozenset("0123456789abcdef")


class TrustError(Exception):
    """Base of every refusal to trust a signed document."""


class DocumentFormatError(TrustError):
    """Not a well-formed signed document of the expected type (names the field)."""


class UnknownSignerError(TrustError):
    """A signature's key is not one of the role's keys in the trusted root (revoked or never trusted)."""


class BadSignatureError(TrustError):
    """A signature does not verify over the document."""


class SignatureThresholdError(TrustError):
    """Fewer valid signatures from the role's keys than its threshold."""


class RootRollbackError(TrustError):
    """A root that is not the next version of the trusted one (older, same, or skipping)."""


class RootExpiredError(TrustError):
    """The trusted root has expired: nothing signed under it is accepted until a new root arrives."""


@dataclass(frozen=True)
class Signed:
    """A parsed envelope: the signed body, its canonical bytes, and (keyid, signature) pairs."""

    body: Mapping[str, Any]
    body_bytes: bytes
    signatures: tuple[tuple[str, bytes], ...]


def sign_document(body: Mapping[str, Any], keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """Canonical envelope {"signatures": [...], "signed": body}, signed by each key."""
    payload = canonical(body)
    sigs = sorted(({"keyid": key_id(k.public_key()), "sig": k.sign(payload).hex()} for k in keys),
                  key=lambda s: s["keyid"])
    return canonical({"signatures": sigs, "signed": body})


def parse_envelope(data: bytes, expected_type: str) -> Signed:
    """Strictly parse an envelope (canonical JSON, exact fields); signatures are not checked here."""
    try:
        doc = parse_canonical(data)
    except CanonicalFormError as exc:
        raise DocumentFormatError(str(exc)) from None
    if not isinstance(doc, dict) or set(doc) != {"signatures", "signed"}:
        raise DocumentFormatError("envelope must be exactly {signatures, signed}")
    body, sigs = doc["signed"], doc["signatures"]
    if not isinstance(body, dict) or body.get("type") != expected_type:
        raise DocumentFormatError(f"signed.type: expected {expected_type!r}")
    if not isinstance(sigs, list) or not sigs:
        raise DocumentFormatError("signatures: expected a non-empty list")
    pairs = []
    for i, s in enumerate(sigs):
        if (not isinstance(s, dict) or set(s) != {"keyid", "sig"} or not is_hex(s["keyid"], 64)
                or not is_hex(s["sig"], 128)):
            raise DocumentFormatError(f"signatures[{i}]: expected {{keyid: 64 hex, sig: 128 hex}}")
        pairs.append((s["keyid"], bytes.fromhex(s["sig"])))
    ids = [p[0] for p in pairs]
    if ids != sorted(set(ids)):
        raise DocumentFormatError("signatures: key ids must be unique and sorted")
    return Signed(body, canonical(body), tuple(pairs))


def is_hex(v: object, n: int) -> bool:
    """`v` is a string of exactly `n` lowercase hex digits (key ids, signatures, raw public keys)."""
    return isinstance(v, str) and len(v) == n and set(v) <= _HEX64


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Root:
    """A root document's content."""

    fleet: str
    version: int
    expires: datetime
    keys: Mapping[str, Ed25519PublicKey]
    roles: Mapping[str, Role]

    def has_role(self, role: str) -> bool:
        """Whether this root names the role (a root made before the review role has no `review`)."""
        return role in self.roles

    def role_of(self, kid: str) -> str | None:
        """The role (other than root) whose keys include `kid`, if any."""
        return next((name for name, r in self.roles.items() if name != "root" and kid in r.keyids), None)

    def to_body(self) -> dict[str, Any]:
        return {
            "type": ROOT_TYPE, "schema": ROOT_SCHEMA, "fleet": self.fleet, "version": self.version,
            "expires": format_time(self.expires),
            "keys": {kid: {"type": "ed25519", "public": raw_public(k).hex()} for kid, k in self.keys.items()},
            "roles": {name: {"keyids": list(r.keyids), "threshold": r.threshold}
                      for name, r in self.roles.items()},
        }

    def verify(self, signed: Signed, role: str) -> None:
        """Every signature valid and from the role's keys, and at least its threshold of them."""
        r = self.roles[role]
        for kid, sig in signed.signatures:
            if kid not in r.keyids:
                raise UnknownSignerError(f"key {kid[:16]}... is not a {role} key of root v{self.version} "
                                         "(revoked or never trusted)")
            try:
                self.keys[kid].verify(sig, signed.body_bytes)
            except InvalidSignature:
                raise BadSignatureError(f"signature by {role} key {kid[:16]}... does not verify") from None
        if len(signed.signatures) < r.threshold:
            raise SignatureThresholdError(f"{len(signed.signatures)} valid {role} signature(s), "
                                          f"root v{self.version} requires {r.threshold}")


def parse_root(signed: Signed) -> Root:
    b = signed.body
    fields = {"type", "schema", "fleet", "version", "expires", "keys", "roles"}
    if set(b) != fields:
        raise DocumentFormatError(f"root: fields must be exactly {sorted(fields)}")
    if b["schema"] != ROOT_SCHEMA:
        raise DocumentFormatError(f"root.schema: {b['schema']!r} is not {ROOT_SCHEMA}")
    if not isinstance(b["fleet"], str) or not b["fleet"]:
        raise DocumentFormatError("root.fleet: expected a non-empty string")
    if not isinstance(b["version"], int) or isinstance(b["version"], bool) or b["version"] < 1:
        raise DocumentFormatError("root.version: expected an integer >= 1")
    try:
        expires = parse_time(b["expires"])
    except TimeFormatError as exc:
        raise DocumentFormatError(f"root.expires: {exc}") from None
    keys: dict[str, Ed25519PublicKey] = {}
    if not isinstance(b["keys"], dict):
        raise DocumentFormatError("root.keys: expected an object")
    for kid, k in b["keys"].items():
        if not isinstance(k, dict) or set(k) != {"type", "public"} or k["type"] != "ed25519" \
                or not is_hex(k["public"], 64):
            raise DocumentFormatError(f"root.keys.{kid}: expected {{type: ed25519, public: 64 hex}}")
        pub = ed25519_public(k["public"])
        if key_id(pub) != kid:
            raise DocumentFormatError(f"root.keys.{kid}: key id is not the sha256 of the key")
        keys[kid] = pub
    roles: dict[str, Role] = {}
    if not isinstance(b["roles"], dict) or set(b["roles"]) not in (set(ROLES), set(REQUIRED_ROLES)):
        raise DocumentFormatError(f"root.roles: expected exactly {list(ROLES)} (or {list(REQUIRED_ROLES)}, a root "
                                  "made before the review role)")
    for name, r in b["roles"].items():
        ok = (isinstance(r, dict) and set(r) == {"keyids", "threshold"} and isinstance(r["keyids"], list)
              and isinstance(r["threshold"], int) and not isinstance(r["threshold"], bool)
              and 1 <= r["threshold"] <= len(r["keyids"]) and all(kid in keys for kid in r["keyids"])
              and len(set(r["keyids"])) == len(r["keyids"]))
        if not ok:
            raise DocumentFormatError(
                f"root.roles.{name}: expected {{keyids: known unique ids, threshold: 1..len(keyids)}}")
        roles[name] = Role(tuple(r["keyids"]), r["threshold"])
    _one_role_per_key(roles)
    return Root(b["fleet"], b["version"], expires, keys, roles)


def _one_role_per_key(roles: Mapping[str, Role]) -> None:
    """Each key serves one role: a key listed under review and command would let the review key sign a config
    (and a root key that is also an online key would be online). Refused, naming the key and its roles."""
    held: dict[str, list[str]] = {}
    for name, r in roles.items():
        for kid in r.keyids:
            held.setdefault(kid, []).append(name)
    for kid, names in held.items():
        if len(names) > 1:
            raise DocumentFormatError(f"root.roles: key {kid[:16]}... is listed under {' and '.join(names)}; "
                                      "a key may serve one role only")


def load_root_bytes(data: bytes) -> tuple[Root, Signed]:
    signed = parse_envelope(data, ROOT_TYPE)
    return parse_root(signed), signed


def _only(signed: Signed, keyids: set[str]) -> Signed:
    return Signed(signed.body, signed.body_bytes, tuple(s for s in signed.signatures if s[0] in keyids))


class TrustedRoot:
    """The root a node (or tool) trusts now; it changes only through properly signed rotations."""

    def __init__(self, root: Root):
        self.root = root

    @classmethod
    def bootstrap(cls, data: bytes) -> TrustedRoot:
        """First trust, given out of band (provisioning): the root must at least sign itself."""
        root, signed = load_root_bytes(data)
        own = set(root.roles["root"].keyids)
        # a rotated root also carries its predecessor's signatures, checked when it was accepted
        root.verify(_only(signed, own), "root")
        return cls(root)

    def update(self, data: bytes) -> Root:
        """Accept root version N+1: signed by the old and by its own root threshold (TUF 5.3.4-5.3.5)."""
        new, signed = load_root_bytes(data)
        if new.fleet != self.root.fleet:
            raise DocumentFormatError(f"root.fleet: {new.fleet!r} is not this fleet ({self.root.fleet!r})")
        if new.version != self.root.version + 1:
            raise RootRollbackError(
                f"root v{new.version} is not the next version after trusted v{self.root.version}")
        for role in ROLES:
            if self.root.has_role(role) and not new.has_role(role):
                # dropping the review role would hand reviews back to the command keys
                raise DocumentFormatError(f"root.roles: v{new.version} drops the {role} role that trusted "
                                          f"v{self.root.version} has")
        old_ids = set(self.root.roles["root"].keyids)
        new_ids = set(new.roles["root"].keyids)
        for kid, _ in signed.signatures:
            if kid not in old_ids | new_ids:
                raise UnknownSignerError(f"key {kid[:16]}... is a root key of neither v{self.root.version} "
                                         f"nor v{new.version}")
        self.root.verify(_only(signed, old_ids), "root")
        new.verify(_only(signed, new_ids), "root")
        self.root = new
        return new

    def check_unexpired(self, at: datetime) -> None:
        if at >= self.root.expires:
            raise RootExpiredError(
                f"trusted root v{self.root.version} expired at {format_time(self.root.expires)}")
