"""The worker image's HEALTHCHECK: exit 0 when ``gpu-worker serve`` answers ``/healthz`` with 200, else 1.

Standard library only (the image has no curl). It reads the settings the container runs with: ``GPUW_SERVE_PORT``
(default 8700), and ``GPUW_TLS_CERT_PEM``, in which case the worker serves HTTPS with that self-signed certificate
and this check pins it, as the orchestrator does (the loopback address carries no name to check).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8700"
TIMEOUT_S = 5.0


def healthz_url(env: dict[str, str]) -> str:
    """The loopback URL of ``/healthz`` for the container's settings."""
    scheme = "https" if env.get("GPUW_TLS_CERT_PEM") else "http"
    return f"{scheme}://127.0.0.1:{env.get('GPUW_SERVE_PORT') or DEFAULT_PORT}/healthz"


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A client context that accepts only the worker's own certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


def main() -> int:
    """Probe ``/healthz`` once; 0 when ready, 1 while loading, failed or unreachable (the reason on stderr)."""
    env = dict(os.environ)
    cert_pem = env.get("GPUW_TLS_CERT_PEM")
    url = healthz_url(env)
    try:
        with urllib.request.urlopen(  # noqa: S310 - a fixed loopback http(s) URL
            url, timeout=TIMEOUT_S, context=pinned_context(cert_pem) if cert_pem else None
        ) as answer:
            return 0 if answer.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 while loading or after a failed warm-up
        print(f"{url}: {exc.code} {exc.read(2000).decode('utf-8', 'replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
