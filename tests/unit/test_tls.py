"""Per-instance TLS: the pinned context accepts exactly the instance's certificate and nothing else (handshakes run
in memory, no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from orchestrator.cloud.tls import (
    WORKER_CERT_NAME,
    InstanceIdentity,
    cert_fingerprint,
    new_instance_identity,
    pinned_ssl_context,
)


def _server_context(identity: InstanceIdentity, folder: Path) -> ssl.SSLContext:
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_text(identity.cert_pem)
    key.write_text(identity.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """Run a TLS handshake between the two contexts through memory BIOs; raises ssl.SSLError on refusal."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out, server_side=False, server_hostname="198.51.100.7")
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_the_pinned_context_accepts_the_instance_certificate_at_any_address(tmp_path: Path) -> None:
    identity = new_instance_identity()
    _handshake(pinned_ssl_context(identity.cert_pem), _server_context(identity, tmp_path))


def test_the_pinned_context_refuses_any_other_certificate_even_one_with_the_same_name(tmp_path: Path) -> None:
    pinned, impostor = new_instance_identity(), new_instance_identity()
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pinned_ssl_context(pinned.cert_pem), _server_context(impostor, tmp_path))


def test_each_instance_gets_a_fresh_identity_and_the_key_stays_out_of_reprs() -> None:
    first, second = new_instance_identity(), new_instance_identity()
    assert cert_fingerprint(first.cert_pem) != cert_fingerprint(second.cert_pem)
    assert first.key_pem != second.key_pem and "PRIVATE KEY" not in repr(first)
    from cryptography import x509

    names = x509.load_pem_x509_certificate(first.cert_pem.encode()).subject.rfc4514_string()
    assert names == f"CN={WORKER_CERT_NAME}"


def test_the_pinned_context_requires_a_certificate_and_modern_tls() -> None:
    context = pinned_ssl_context(new_instance_identity().cert_pem)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
