"""The worker client's default TLS context is httpx's own for ``verify=True``, made once per process."""

from __future__ import annotations

import ssl

import httpx

from orchestrator.backends import remote


def test_the_default_context_is_made_once_and_verifies_like_httpx_default() -> None:
    context = remote._system_ssl_context()

    assert remote._system_ssl_context() is context, "a batch must not load the CA bundle again"
    reference = httpx.create_ssl_context()
    assert context.verify_mode == reference.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is reference.check_hostname is True
    assert context.minimum_version == reference.minimum_version
    assert len(context.get_ca_certs()) == len(reference.get_ca_certs()) > 0
