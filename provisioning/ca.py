"""The fleet's certificate authority for MQTT TLS: broker, device, admin and operator certificates.

    F/ca/ca.key        CA private key (P-256, encrypted PKCS#8, passphrase as for fleet keys)
    F/ca/ca.crt        CA certificate: the broker and every client trust this one
    F/clients/N.json   every client certificate issued: kind (device/admin/operator), CN, serial, expiry

The certificate CN is the MQTT identity (the broker runs use_identity_as_username and
use_username_as_clientid): a device's CN is its device id; people get "admin.NAME" / "operator.NAME",
which can never collide with a device id (no dots there).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.fsutil import write_atomic
from edge.identity import check_device_id
from edge.tls import cert_pem, key_pem, new_tls_key
from edge.trust.times import format_time, now

CA_LIFETIME = timedelta(days=3650)
CLIENT_LIFETIME = timedelta(days=397)
KINDS = ("device", "admin", "operator")
PERSON = re.compile(r"[a-z0-9][a-z0-9-]{0,40}\Z")


class CertificateError(Exception):
    """A certificate cannot be issued (names the CSR, name or file at fault)."""


@dataclass(frozen=True)
class Issued:
    kind: str
    common_name: str
    serial: int
    not_after: str
    cert_path: Path


def client_cn(kind: str, name: str) -> str:
    """The certificate CN, which is also the MQTT username and client id."""
    if kind == "device":
        return check_device_id(name)
    if kind not in KINDS:
        raise CertificateError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not PERSON.match(name):
        raise CertificateError(f"{kind} name {name!r}: 1-41 of a-z, 0-9 and '-'")
    return f"{kind}.{name}"


class FleetCA:
    """Issues certificates; holds nothing in memory between calls but the passphrase callback's result."""

    def __init__(self, fleet_dir: Path, passphrase: bytes):
        self.dir = fleet_dir
        self.key_path = fleet_dir / "ca" / "ca.key"
        self.cert_path = fleet_dir / "ca" / "ca.crt"
        self._passphrase = passphrase

    def exists(self) -> bool:
        return self.cert_path.exists()

    def init(self, fleet: str) -> x509.Certificate:
        if self.key_path.exists() or self.cert_path.exists():
            raise CertificateError(f"{self.key_path.parent}: a CA exists here already")
        key = new_tls_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{fleet} fleet CA")])
        t = now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(t - timedelta(minutes=5)).not_valid_after(t + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        write_atomic(self.key_path, key_pem(key, self._passphrase), 0o600)
        write_atomic(self.cert_path, cert_pem(cert), 0o644)
        return cert

    def certificate(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except FileNotFoundError:
            raise CertificateError(f"{self.cert_path}: no fleet CA (run `edge-fleet ca init`)") from None

    def _key(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), self._passphrase)
        except FileNotFoundError:
            raise CertificateError(f"{self.key_path}: no fleet CA key") from None
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"{self.key_path}: cannot open ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{self.key_path}: not an EC key")
        return key

    def _issue(self, cn: str, public_key: ec.EllipticCurvePublicKey, server: bool,
               names: Sequence[str] = (), lifetime: timedelta = CLIENT_LIFETIME) -> x509.Certificate:
        ca = self.certificate()
        t = now()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(t - timedelta(minutes=5)).not_valid_after(t + lifetime)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca.public_key()), critical=False))  # type: ignore[arg-type]
        if names:
            alt: list[x509.GeneralName] = []
            for n in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self._key(), hashes.SHA256())

    def issue_broker(self, names: Sequence[str], out_dir: Path) -> tuple[Path, Path]:
        """A server certificate for the broker (SAN = its host names / IPs) with a new key."""
        if not names:
            raise CertificateError("a broker certificate needs at least one host name or IP address")
        key = new_tls_key()
        cert = self._issue(names[0], key.public_key(), server=True, names=names)
        key_path, crt_path = out_dir / "broker.key", out_dir / "broker.crt"
        write_atomic(key_path, key_pem(key), 0o600)
        write_atomic(crt_path, cert_pem(cert), 0o644)
        return key_path, crt_path

    def issue_client(self, kind: str, name: str, public_key: ec.EllipticCurvePublicKey,
                     out: Path) -> Issued:
        cn = client_cn(kind, name)
        cert = self._issue(cn, public_key, server=False)
        write_atomic(out, cert_pem(cert), 0o644)
        issued = Issued(kind, cn, cert.serial_number, format_time(cert.not_valid_after_utc), out)
        record = {"kind": kind, "common_name": cn, "serial": str(cert.serial_number),
                  "not_after": issued.not_after}
        write_atomic(self.record_path(cn), json.dumps(record, indent=1).encode() + b"\n", 0o644)
        return issued

    def record_path(self, common_name: str) -> Path:
        """Where the record of the client certificate last issued to `common_name` is kept."""
        return self.dir / "clients" / f"{common_name}.json"

    def sign_csr(self, kind: str, name: str, csr_path: Path, out: Path) -> Issued:
        """Certify a key that was born elsewhere (a device's): the CSR's CN must be the expected one."""
        try:
            csr = x509.load_pem_x509_csr(csr_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CertificateError(f"{csr_path}: not a PEM certificate request ({exc})") from None
        if not csr.is_signature_valid:
            raise CertificateError(f"{csr_path}: the request's self-signature does not verify")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        want = client_cn(kind, name)
        if len(cns) != 1 or cns[0].value != want:
            raise CertificateError(f"{csr_path}: CN {[c.value for c in cns]} is not {want!r}")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise CertificateError(f"{csr_path}: expected a P-256 key")
        return self.issue_client(kind, name, pub, out)

    def clients(self, kind: str) -> list[str]:
        """CNs of the clients of one kind issued so far (for the broker's ACL)."""
        out = []
        for p in sorted((self.dir / "clients").glob("*.json")):
            doc = json.loads(p.read_text())
            if doc.get("kind") == kind:
                out.append(str(doc["common_name"]))
        return out
