"""The device's TLS identity for the broker: a P-256 key born on the device, its certificate from the
fleet CA (CN = device id), and the CA the broker's certificate must chain to.

    STATE/identity/tls.key   0600, never leaves the device      STATE/identity/tls.csr  what the fleet certifies
    STATE/identity/tls.crt   issued by `edge-fleet cert issue device`   STATE/identity/broker-ca.crt
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.fsutil import write_atomic


class TLSIdentityError(Exception):
    """The device's TLS files are missing or do not belong together (names the file)."""


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


class DeviceTLS:
    """The TLS files in a node's state dir."""

    def __init__(self, state_dir: Path):
        d = state_dir / "identity"
        self.key = d / "tls.key"
        self.csr = d / "tls.csr"
        self.cert = d / "tls.crt"
        self.ca = d / "broker-ca.crt"

    def request(self, device_id: str) -> Path:
        """Create the key (once) and a CSR for it; the key is never overwritten."""
        if self.key.exists():
            key = serialization.load_pem_private_key(self.key.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise TLSIdentityError(f"{self.key}: not an EC key")
        else:
            key = new_tls_key()
            self.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem(key))
        write_atomic(self.csr, make_csr(key, device_id), 0o644)
        return self.csr

    def install(self, device_id: str, cert_data: bytes, ca_data: bytes) -> x509.Certificate:
        """Check the certificate is for this key and device and chains to the CA, then store both."""
        try:
            cert = x509.load_pem_x509_certificate(cert_data)
            ca = x509.load_pem_x509_certificate(ca_data)
        except ValueError as exc:
            raise TLSIdentityError(f"not a PEM certificate ({exc})") from None
        if not self.key.exists():
            raise TLSIdentityError(f"{self.key}: no TLS key; run `edge-node cert request` first")
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        if cert.public_key() != key.public_key():
            raise TLSIdentityError(f"the certificate is not for the key in {self.key}")
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [device_id]:
            raise TLSIdentityError(f"certificate CN {cns} is not this device ({device_id!r})")
        try:
            cert.verify_directly_issued_by(ca)
        except InvalidSignature:
            raise TLSIdentityError("the certificate was not issued by that CA (its signature does not verify with "
                                   "the CA's key)") from None
        except (ValueError, TypeError) as exc:
            raise TLSIdentityError(f"the certificate was not issued by that CA ({exc})") from None
        write_atomic(self.ca, ca_data, 0o644)
        write_atomic(self.cert, cert_data, 0o644)
        return cert
