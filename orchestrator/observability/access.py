"""Who may read ``GET /metrics`` (pure).

With ``ORCH_METRICS_TOKEN`` set, only a request carrying ``Authorization: Bearer <token>`` (compared in constant
time); a tenant's API key or the admin token is not it. Without a token, only a direct peer on a loopback or
private address (Prometheus on the same host or compose network) and never a request relayed by a proxy: one that
carries ``X-Forwarded-For``, ``X-Real-IP`` or ``Forwarded`` came through nginx from somewhere else.
"""

from __future__ import annotations

import hmac
import ipaddress
from enum import StrEnum

PROXY_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")
# Loopback, RFC 1918 and IPv6 unique-local networks: where Prometheus runs beside the API (same host, compose
# network, LAN). Spelled out because ipaddress's is_private also counts documentation and other reserved ranges.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
)


class MetricsRefusal(StrEnum):
    """Why a metrics request was refused."""

    TOKEN = "token"  # noqa: S105 - a token is configured and this request did not present it
    NOT_PRIVATE = "not_private"  # no token is configured and the peer is not loopback/private, or came via a proxy


def is_private_peer(host: str | None) -> bool:
    """Whether ``host`` is a loopback or private IP address (IPv4-mapped IPv6 included); names are not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in PRIVATE_NETWORKS)


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or ``""``."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return ""


def metrics_refusal(
    *, token: str, authorization: str | None, peer_host: str | None, proxied: bool
) -> MetricsRefusal | None:
    """None when the request may read the metrics, otherwise the reason it may not."""
    if token:
        presented = bearer(authorization)
        if presented and hmac.compare_digest(presented.encode(), token.encode()):
            return None
        return MetricsRefusal.TOKEN
    if proxied or not is_private_peer(peer_host):
        return MetricsRefusal.NOT_PRIVATE
    return None
