"""Callback delivery over HTTP, and the opt-in HMAC signature.

Injected into the scheduler, so tests can observe or replace it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

import urllib3


@dataclass(frozen=True)
class Attempt:
    status: int | None  # HTTP status, None when no answer came
    error: str | None  # "connection refused", "timeout after 15s", ...
    duration: float  # seconds

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def sign(hmac_key: str, task_id: str, timestamp: int) -> str:
    """X-Webhook-Signature: base64(HMAC-SHA256(key, taskId + "." + timestamp))."""
    mac = hmac.new(hmac_key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def signed_headers(hmac_key: str | None, task_id: str, now: float) -> dict:
    if not hmac_key:
        return {}
    ts = int(now)
    return {"X-Webhook-Timestamp": str(ts), "X-Webhook-Signature": sign(hmac_key, task_id, ts)}


class HttpDelivery:
    """POST a JSON body; any answer that is not 2xx within the timeout is a failure."""

    def __init__(self, timeout: float = 15.0, maxsize: int = 8):
        self.timeout = timeout
        self.pool = urllib3.PoolManager(num_pools=256, maxsize=maxsize, retries=False,
                                        timeout=urllib3.Timeout(total=timeout))

    def __call__(self, url: str, body: bytes, headers: dict) -> Attempt:
        started = time.monotonic()
        try:
            resp = self.pool.request("POST", url, body=body, preload_content=True,
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "kie-mock-callback/1", **headers})
            return Attempt(resp.status, None, time.monotonic() - started)
        # NewConnectionError is a subclass of ConnectTimeoutError in urllib3 2: test it first.
        except urllib3.exceptions.NewConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else f"cannot connect: {exc}"
            return Attempt(None, reason, time.monotonic() - started)
        except urllib3.exceptions.TimeoutError:
            return Attempt(None, f"timeout after {self.timeout:g}s", time.monotonic() - started)
        except (urllib3.exceptions.HTTPError, ValueError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
