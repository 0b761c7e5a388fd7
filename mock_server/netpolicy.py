"""Where the fake may send requests (callbacks, uploadUrl fetches): an optional allowlist,
so a shared fake cannot be used to reach into a private network by surprise.

Patterns: "*" (anything), a host name ("hooks.example.com"), a wildcard ("*.example.com"),
an address or network ("127.0.0.1", "10.1.0.0/16", "::1"). A host name is also resolved
and its addresses matched against the networks.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from urllib.parse import urlsplit


def _networks(patterns):
    nets = []
    for p in patterns:
        try:
            nets.append(ipaddress.ip_network(p, strict=False))
        except ValueError:
            pass
    return nets


def _addresses(host: str) -> list:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def allowed(url: str, patterns: tuple[str, ...] | None) -> bool:
    """True when `url`'s host matches the allowlist (or no allowlist is set)."""
    if patterns is None:
        return True
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return False
    names = [p.lower() for p in patterns if not _networks([p])]
    if any(p == "*" or fnmatch.fnmatchcase(host, p) for p in names):
        return True
    nets = _networks(patterns)
    return bool(nets) and any(addr in net for addr in _addresses(host) for net in nets)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
