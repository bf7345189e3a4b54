"""A fresh TLS identity per rented instance, and a client context that trusts exactly that one certificate.

At creation the orchestrator makes a key and a self-signed certificate, hands both to the instance in its env (they
open only that instance, like its bearer token), stores the certificate, and later talks to the worker through
:func:`pinned_ssl_context`. Hostname checks are off on purpose: the instance's address is whatever the provider
maps, and the pinned certificate itself is the identity; no certificate authority can vouch for anyone else.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.clock import utcnow

WORKER_CERT_NAME = "mam-worker"
# Instances live hours, not weeks; a week covers any rental while keeping a leaked pair short-lived.
CERT_VALIDITY = timedelta(days=7)
# Tolerates a host clock that runs a little behind ours.
CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class InstanceIdentity:
    """One instance's certificate (public, pinned) and private key (given only to the instance)."""

    cert_pem: str
    key_pem: str = field(repr=False)


def new_instance_identity(now: datetime | None = None) -> InstanceIdentity:
    """A fresh P-256 key and a self-signed certificate for ``mam-worker``, valid from a little before ``now``."""
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, WORKER_CERT_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(WORKER_CERT_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return InstanceIdentity(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii"),
    )


def cert_fingerprint(cert_pem: str) -> str:
    """SHA-256 fingerprint of a PEM certificate, hex, for logs and ``instances list``."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    return cert.fingerprint(hashes.SHA256()).hex()


def pinned_ssl_context(cert_pem: str) -> ssl.SSLContext:
    """A client context that accepts only a server presenting exactly ``cert_pem`` (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pinned certificate is the identity; the provider's address carries no name to check.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context
