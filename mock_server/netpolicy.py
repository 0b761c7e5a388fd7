"""Where the fake may send requests (callbacks, uploadUrl fetches): an optional allowlist,
so a shared fake cannot be used to reach into a private network by surprise.

Patterns: "*" (anything), a host name ("hooks.example.com"), a wildcard ("*.example.com"),
an address or network ("127.0.0.1", "10.1.0.0/16", "::1"). A name matched by a name pattern
is trusted as it resolves. Any other name is resolved once, and the request goes only to
those of its addresses that lie in an allowed network (none: blocked): a name with several
addresses cannot lead to one outside the list, nor can a second lookup that answers
otherwise (DNS rebinding), since no second lookup is made. Ports are not part of the list.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from urllib.parse import urlsplit

BLOCKED = "blocked: {what} host is not in the fake's outbound allowlist"


class Blocked(OSError):
    """The request's host (or every address it resolves to) is outside the allowlist."""


class Policy:
    """An allowlist, parsed once. `patterns` None: anywhere."""

    def __init__(self, patterns: tuple[str, ...] | None):
        self.patterns = patterns
        self.nets, self.names = [], []
        for p in patterns or ():
            try:
                self.nets.append(ipaddress.ip_network(p, strict=False))
            except ValueError:
                self.names.append(p.lower())

    @property
    def open(self) -> bool:
        return self.patterns is None

    def verdict(self, host: str) -> bool | None:
        """Without a lookup: True (anywhere, a name pattern matches, or an address inside an
        allowed network), False (no host, an address outside every network, a name when the
        list has no networks), None (a name to resolve: its addresses go through `pick`)."""
        if self.patterns is None:
            return True
        host = host.lower().rstrip(".") if host not in (".", "") else ""
        if not host:
            return False
        if any(p == "*" or fnmatch.fnmatchcase(host, p) for p in self.names):
            return True
        address = _literal(host)
        if address is not None:
            return self._inside(address)
        return None if self.nets else False

    def pick(self, infos: list) -> list:
        """The getaddrinfo entries whose address lies in an allowed network."""
        out = []
        for info in infos:
            address = _literal(str(info[4][0]).split("%")[0])
            if address is not None and self._inside(address):
                out.append(info)
        return out

    def allows(self, url: str, resolve=None) -> bool:
        """True when a request to `url` may be made: its host passes without a lookup, or (a
        name) one of its addresses, as `resolve(host, port)` gives them (getaddrinfo), is allowed.
        For a caller that does not connect through `pick`'s addresses itself."""
        host = host_of(url)
        ok = self.verdict(host)
        if ok is not None:
            return ok
        if resolve is None:
            import socket

            def resolve(name, port):
                return socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
        try:
            return bool(self.pick(resolve(host, 80)))
        except (OSError, UnicodeError):
            return False

    def _inside(self, address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
        return any(address in net or (mapped is not None and mapped in net) for net in self.nets)


def host_of(url: str) -> str:
    """The URL's host ("" when it has none or cannot be parsed)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _literal(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def allowed(url: str, patterns: tuple[str, ...] | None, resolve=None) -> bool:
    """`Policy(patterns).allows(url, resolve)`."""
    return Policy(patterns).allows(url, resolve)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
