"""A tiny Python client for the fake's control API (/_mock; see control-openapi.yaml).

Works over HTTP or in-process (any transport of `contract.target`):

    ctl = ControlClient.for_url("http://127.0.0.1:8787")
    ctl.reset()
    ctl.arm_code(402, key="kie-mock-key")          # the next request of that key answers 402
    ctl.arm_scenario("fail-501")                    # the next task fails late with 501
    with ctl.settings_changed(maintenance=True):    # restored on exit
        ...

Every method returns the envelope's `data`; a non-200 answer raises ControlError.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from urllib.parse import quote

from .target import HttpTransport, WsgiTransport

PREFIX = "/_mock"


class ControlError(RuntimeError):
    def __init__(self, status: int, code, msg: str):
        super().__init__(f"control API answered HTTP {status} (code {code}): {msg}")
        self.status, self.code, self.msg = status, code, msg


class ControlClient:
    def __init__(self, transport, admin_token: str | None = None):
        self.transport = transport
        self.admin_token = admin_token

    @classmethod
    def for_url(cls, base_url: str, admin_token: str | None = None) -> "ControlClient":
        return cls(HttpTransport(base_url, timeout=30), admin_token)

    @classmethod
    def for_app(cls, app, admin_token: str | None = None) -> "ControlClient":
        return cls(WsgiTransport(app), admin_token)

    # -- plumbing ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, params: dict | None = None):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.admin_token:
            headers["X-Admin-Token"] = self.admin_token
        reply = self.transport.send(method, PREFIX + path, {k: v for k, v in (params or {}).items() if v is not None},
                                    headers, data)
        env = reply.json()
        if not isinstance(env, dict) or env.get("code") != 200:
            msg = env.get("msg") if isinstance(env, dict) else reply.content[:200].decode("utf-8", "replace")
            raise ControlError(reply.status, env.get("code") if isinstance(env, dict) else None, msg)
        return env.get("data")

    def available(self) -> bool:
        """True when the target answers /_mock/health (it is a kie-mock fake)."""
        try:
            return (self.health() or {}).get("status") == "ok"
        except Exception:
            return False

    # -- state -------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self.request("GET", "/health")

    def reset(self) -> None:
        self.request("POST", "/reset")

    def accounts(self) -> list[dict]:
        return self.request("GET", "/accounts")

    def put_account(self, key: str, credits: int | None = None, webhook_hmac_key: str | None | type(...) = ...) -> dict:
        body: dict = {}
        if credits is not None:
            body["credits"] = credits
        if webhook_hmac_key is not ...:
            body["webhookHmacKey"] = webhook_hmac_key
        return self.request("PUT", f"/accounts/{quote(key, safe='')}", body)

    def delete_account(self, key: str) -> None:
        self.request("DELETE", f"/accounts/{quote(key, safe='')}")

    def settings(self) -> dict:
        return self.request("GET", "/settings")

    def patch_settings(self, **changes) -> dict:
        return self.request("PATCH", "/settings", changes)

    @contextmanager
    def settings_changed(self, **changes):
        """Apply settings for the block, then put back the values they had."""
        before = self.settings()
        self.patch_settings(**changes)
        try:
            yield
        finally:
            self.patch_settings(**{k: before.get(k) for k in changes})

    # -- faults -------------------------------------------------------------------------------------------
    def scenarios(self) -> dict:
        return self.request("GET", "/scenarios")

    def arm(self, **fault) -> dict:
        return self.request("POST", "/faults", fault)

    def arm_code(self, code: int, *, count: int = 1, key: str = "*") -> dict:
        """The next `count` API requests of `key` answer `code`."""
        return self.arm(code=code, count=count, key=key)

    def arm_scenario(self, scenario: str, *, count: int = 1, key: str = "*", params: dict | None = None) -> dict:
        """The next `count` tasks of `key` play `scenario` (fail-501, complete-only, ...)."""
        fault = {"scenario": scenario, "count": count, "key": key}
        if params:
            fault["params"] = params
        return self.arm(**fault)

    def faults(self) -> list[dict]:
        return self.request("GET", "/faults")

    def clear_faults(self) -> None:
        self.request("DELETE", "/faults")

    # -- clock ----------------------------------------------------------------------------------------------
    def clock(self) -> dict:
        return self.request("GET", "/clock")

    def advance(self, seconds: float) -> dict:
        return self.request("POST", "/clock/advance", {"seconds": seconds})

    # -- what happened ---------------------------------------------------------------------------------------
    def tasks(self, key: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict]:
        return self.request("GET", "/tasks", params={"key": key, "status": status, "limit": limit})

    def task(self, task_id: str) -> dict:
        return self.request("GET", f"/tasks/{quote(task_id, safe='')}")

    def fire(self, task_id: str) -> dict:
        return self.request("POST", f"/tasks/{quote(task_id, safe='')}/fire")

    def requests(self, path: str | None = None, code: int | None = None, limit: int | None = None) -> list[dict]:
        return self.request("GET", "/requests", params={"path": path, "code": code, "limit": limit})

    def callbacks(self, task_id: str | None = None, stage: str | None = None, limit: int | None = None) -> list[dict]:
        return self.request("GET", "/callbacks", params={"task_id": task_id, "stage": stage, "limit": limit})
