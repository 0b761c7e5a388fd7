"""Optional source check (off by default, so the fake needs no network): fetch uploadUrl
the way the real service must, and answer as it documents.

- cannot be fetched (refused, timeout, HTTP error, not http(s)) -> 451, the page's
  "Failed to fetch ..." code;
- larger than the size cap, not audio, or longer than the limit (8 minutes by default:
  "ensure the uploaded audio does not exceed 8 minutes") -> 422 naming uploadUrl.
Loopback URLs are fetched like any other, so a test can serve its own file.
"""

from __future__ import annotations

import io
import time

import urllib3

from .config import Config
from .delivery import split_target, resolve_allowed
from .netpolicy import Blocked, Policy
from .rules import Rejection

FETCH_FAILED = "Failed to fetch the audio file at uploadUrl"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def audio_length(data: bytes) -> float | None:
    """Seconds of audio in `data`, or None when it is not an audio file mutagen knows."""
    import mutagen

    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises many types on garbage
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    return float(length) if length else None


class SourceChecker:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.policy = Policy(cfg.outbound_allow)
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=cfg.source_timeout))

    def fetch(self, url: str) -> bytes | Rejection:
        cap = self.cfg.source_max_bytes
        blocked = Rejection(451, f"{FETCH_FAILED}: its host is not in the fake's outbound allowlist", "uploadUrl",
                            "allowlist")
        try:
            if self.policy.open:
                resp = self.pool.request("GET", url, preload_content=False)
            else:  # the addresses checked are the ones connected to, and a redirect is not followed
                resp = self._pinned(url)
        except Blocked:
            return blocked
        except (urllib3.exceptions.HTTPError, ValueError, OSError) as exc:
            return Rejection(451, f"{FETCH_FAILED}: {type(exc).__name__}", "uploadUrl", "fetch")
        try:
            if not 200 <= resp.status < 300:
                return Rejection(451, f"{FETCH_FAILED}: HTTP {resp.status}", "uploadUrl", "fetch")
            data = resp.read(cap + 1)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Rejection(451, f"{FETCH_FAILED}: {type(exc).__name__}", "uploadUrl", "fetch")
        finally:
            resp.release_conn()
        if len(data) > cap:
            return Rejection(422, f"uploadUrl: the file is larger than {cap} bytes", "uploadUrl", "size")
        return data

    def _pinned(self, url: str):
        """GET `url` under the allowlist (Blocked when it allows no address of its host): the name
        resolved once (within the timeout) and the first allowed address that answers connected
        to, the Host header and TLS name still the URL's."""
        (scheme, host, port), path, host_header = split_target(url)
        timeout = self.cfg.source_timeout
        error: Exception = OSError(f"{host} has no address")
        for info in resolve_allowed(self.policy, host, port, time.monotonic() + timeout, "uploadUrl"):
            address = info[4][0]
            kind = urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
            tls = {"server_hostname": host, "assert_hostname": host} if scheme == "https" else {}
            pool = kind(address, port, retries=False, timeout=urllib3.Timeout(total=timeout), maxsize=1, **tls)
            try:
                return pool.urlopen("GET", path, headers={"Host": host_header}, preload_content=False,
                                    redirect=False, assert_same_host=False)
            except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
                error = exc  # the next allowed address
        raise error

    def __call__(self, url: str) -> Rejection | None:
        data = self.fetch(url)
        if isinstance(data, Rejection):
            return data
        length = audio_length(data)
        if length is None:
            return Rejection(422, "uploadUrl: the file is not audio a decoder recognises (mp3, wav, flac, ogg, m4a)",
                             "uploadUrl", "audio")
        limit = self.cfg.max_audio_seconds
        if length > limit:
            return Rejection(422, f"uploadUrl: the audio is {_minutes(length)} long; at most {_minutes(limit)} "
                                  f"({limit:g} s) is accepted", "uploadUrl", "duration")
        return None
