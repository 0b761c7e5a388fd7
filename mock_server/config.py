"""Settings of one fake: defaults that just work, overridable by CLI flags, env and scenario files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from urllib.parse import urlsplit

DEFAULT_API_KEY = "kie-mock-key"
DEFAULT_PORT = 8787


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # API keys and their starting balances. The default key makes the quickstart work.
    api_keys: dict[str, int] = field(default_factory=lambda: {DEFAULT_API_KEY: 1000})
    # Per-key HMAC keys for signed callbacks (opt-in, like the real account setting).
    webhook_hmac_keys: dict[str, str] = field(default_factory=dict)
    cover_cost: int = 12  # credits per accepted cover (one client's changelog: 12)
    # "real": HTTP 200 with the code in the envelope (429 rides as HTTP 429);
    # "status": the HTTP status mirrors the envelope's code.
    transport: str = "real"
    # Seconds after submission at which each stage fires (text, first, complete).
    stage_delays: tuple[float, float, float] = (2.0, 5.0, 8.0)
    time_scale: float = 1.0  # multiplies every delay (0.01 = a hundred times faster)
    instant: bool = False  # every stage due at once (tests)
    clock: str = "real"  # "real" or "virtual" (advanced through the control API / tests)
    callback_timeout: float = 15.0  # the receiver must answer within 15 s
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)  # backoff; its length = max retries (3)
    retention_days: float = 15.0  # generated files and records are deleted after 15 days
    public_url: str | None = None  # base of the file URLs; default: the request's own host
    create_time: str = "datetime"  # "datetime" ("2025-01-01 00:00:00") or "epoch_ms"
    rate_limit: int = 20  # new tasks per window per account; 0 = unlimited
    rate_window: float = 10.0
    record_info_per_second: int = 3  # per task; 0 = unlimited
    admin_token: str | None = None
    store: str = "memory"  # "memory", "sqlite:PATH", "sqlite::memory:", "redis://..."
    delivery_workers: int = 8  # callback threads per process (more only adds GIL switching)
    max_body_bytes: int = 1 << 20
    journal_limit: int = 10_000  # callback attempts and requests kept (oldest dropped)
    source_check: bool = False  # fetch uploadUrl before accepting (off: works with no network)
    source_timeout: float = 10.0
    source_max_bytes: int = 50 << 20
    max_audio_seconds: float = 480.0
    # Hosts/networks the fake may call (callbacks, uploadUrl); None = anywhere.
    outbound_allow: tuple[str, ...] | None = None

    def check(self) -> "Config":
        """Refuse settings that are unsafe or meaningless, with a sentence saying why."""
        from .netpolicy import is_loopback_host

        if self.admin_token and self.admin_token != self.admin_token.strip():
            # an HTTP header's value arrives without its surrounding spaces: such a token never matches
            raise ValueError("the admin token must not start or end with a space (none: no token)")
        if self.admin_token and not (self.admin_token.isascii() and self.admin_token.isprintable()):
            # a header carries bytes: a client's UTF-8 and the server's reading of them may differ
            raise ValueError("the admin token must be printable ASCII (letters, digits, punctuation, spaces)")
        if not is_loopback_host(self.host) and not self.admin_token:
            raise ValueError(f"binding to {self.host} exposes the control API beyond this machine: "
                             "set --admin-token (KIE_MOCK_ADMIN_TOKEN) too")
        if self.transport not in ("real", "status"):
            raise ValueError(f"transport must be real or status, got {self.transport!r}")
        if len(self.stage_delays) != 3 or any(d < 0 for d in self.stage_delays):
            raise ValueError("stage delays: three non-negative numbers (text, first, complete)")
        if self.time_scale < 0:
            raise ValueError("time scale must not be negative")
        if self.cover_cost < 0:
            raise ValueError("cover cost must not be negative (credits are only ever taken)")
        for p in self.outbound_allow or ():
            if p != "*" and "*" in p and all(c in "0123456789.*:" for c in p):
                # a wildcard is matched as text: it would also allow 10.20.attacker.example
                raise ValueError(f"outbound allowlist: write a network as an address and prefix, e.g. "
                                 f"10.20.0.0/16, not {p!r} (wildcards are for names: *.ci.internal)")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"the public URL must be an absolute http(s) URL such as "
                                 f"http://mock.example:8787 (got {self.public_url!r})")
        return self

    def self_url(self) -> str:
        """http://host:port/ of this fake, for a request that names no usable Host: the bind
        address (loopback for a wildcard one, which no client can reach)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://{url_host(host)}:{self.port}/"

    def delay(self, seconds: float) -> float:
        return 0.0 if self.instant else seconds * self.time_scale

    def with_overrides(self, **changes) -> "Config":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def mask_key(key: str | None) -> str | None:
    """Keys never appear in full in logs, journals or error messages."""
    if not key:
        return key
    return key[:3] + "…" + key[-2:] if len(key) > 8 else key[:1] + "…"


def mask_url(url: str) -> str:
    """A store URL as it may be shown: its password (redis://:PASSWORD@host) masked."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL: anything before an @ may be a secret
        return "…@" + url.rpartition("@")[2] if "@" in url else url
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()


def _parse_keys(text: str) -> dict[str, int]:
    """'key1,key2:500' -> {key1: 1000, key2: 500}. An error names a key masked, never in full."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, credits = part.partition(":")
        try:
            out[key] = int(credits) if credits else 1000
        except ValueError:
            raise ValueError(f"API key {mask_key(key)}: credits must be a whole number, "
                             f"as in KEY:500 (got {credits!r})") from None
    return out


def _parse_allowlist(text: str) -> tuple[str, ...] | None:
    """'a,b' -> (a, b); no pattern at all (empty, ',') -> None: no allowlist."""
    return tuple(p.strip() for p in text.split(",") if p.strip()) or None


SECRETS = ("api_keys", "admin_token", "webhook_hmac_keys", "store")  # never echoed back in full


_ENV_PARSERS = {
    "api_keys": _parse_keys,
    "stage_delays": lambda s: tuple(float(x) for x in s.split(",")),
    "retry_delays": lambda s: tuple(float(x) for x in s.split(",") if x.strip()),
    "instant": lambda s: s.lower() in ("1", "true", "yes", "on"),
    "source_check": lambda s: s.lower() in ("1", "true", "yes", "on"),
    "outbound_allow": _parse_allowlist,
}


def from_env(env: dict | None = None, base: Config | None = None) -> Config:
    """KIE_MOCK_<FIELD> variables (e.g. KIE_MOCK_TRANSPORT=status, KIE_MOCK_API_KEYS=a,b:50)."""
    env = os.environ if env is None else env
    cfg = base or Config()
    changes = {}
    for f in fields(Config):
        raw = env.get("KIE_MOCK_" + f.name.upper())
        if raw is None or f.name == "webhook_hmac_keys":
            continue
        parse = _ENV_PARSERS.get(f.name)
        if parse is None:
            kind = type(getattr(cfg, f.name))
            parse = (lambda s: s) if kind in (str, type(None)) else kind
        try:
            changes[f.name] = parse(raw)
        except ValueError as exc:
            shown = "" if f.name in SECRETS else f"={raw!r}"
            raise ValueError(f"KIE_MOCK_{f.name.upper()}{shown}: {exc}") from None
    if "KIE_MOCK_CREDITS" in env:  # every configured key starts with this balance
        try:
            credits = int(env["KIE_MOCK_CREDITS"])
        except ValueError:
            raise ValueError(f"KIE_MOCK_CREDITS={env['KIE_MOCK_CREDITS']!r}: a whole number of credits") from None
        changes["api_keys"] = {k: credits for k in changes.get("api_keys", cfg.api_keys)}
    return replace(cfg, **changes)
