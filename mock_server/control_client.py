"""A small client for the fake's control API (/_mock, documented in control-openapi.yaml).

Over HTTP against a running fake (urllib3), or in-process against a Flask app or its test
client: the same calls either way, so a test helper does not care where the fake runs.

    ctl = ControlClient("http://127.0.0.1:8787", admin_token="t")   # a running fake
    ctl = ControlClient.in_process(app)                             # create_app(...) / app.test_client()
    ctl.reset()
    ctl.put_account("team-key", credits=11)          # 402 on the next cover (12 credits)
    ctl.arm(code=409, count=2, key="team-key")        # the next 2 requests of team-key answer 409
    ctl.arm(scenario="delayed-callbacks", params={"delay": 5})
    ctl.update_settings(maintenance=True)             # 455 until set back to False
    ctl.advance(30)                                   # virtual clock: what falls due fires first
    ctl.callbacks(task_id=task_id)                    # callback attempts, newest first

Every method returns the envelope's `data`; an answer that is not code 200 raises
ControlError (with the HTTP status and the fake's reason).
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

PREFIX = "/_mock"
_UNSET = object()


class ControlError(Exception):
    """The control API said no: `status` (HTTP), `code` and `msg` from the envelope."""

    def __init__(self, method: str, path: str, status: int, code, msg: str):
        self.method, self.path, self.status, self.code, self.msg = method, path, status, code, msg
        super().__init__(f"{method} {path}: HTTP {status}, code {code}: {msg}")


class _Urllib3Transport:
    def __init__(self, base_url: str, timeout: float):
        import urllib3

        self.base_url = base_url.rstrip("/")
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=timeout))

    def __call__(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        resp = self.pool.request(method, self.base_url + path, body=body, headers=headers)
        return resp.status, resp.data

    def close(self) -> None:
        self.pool.clear()


class _FlaskTransport:
    def __init__(self, client):
        self.client = client

    def __call__(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        resp = self.client.open(path, method=method, data=body, headers=headers)
        return resp.status_code, resp.get_data()

    def close(self) -> None:
        pass


class ControlClient:
    def __init__(self, base_url: str | None = None, *, admin_token: str | None = None, timeout: float = 10.0,
                 transport=None):
        if (base_url is None) == (transport is None):
            raise ValueError("give a base_url (a running fake) or use ControlClient.in_process(app)")
        self.admin_token = admin_token
        self._transport = transport or _Urllib3Transport(base_url, timeout)
        self.base_url = base_url

    @classmethod
    def in_process(cls, app_or_client, *, admin_token: str | None = None) -> "ControlClient":
        """Talk to a Flask app (or its test client) without a socket."""
        client = app_or_client.test_client() if hasattr(app_or_client, "test_client") else app_or_client
        return cls(admin_token=admin_token, transport=_FlaskTransport(client))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the one call ---------------------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None):
        """`method` PREFIX+`path` with a JSON body and query parameters (None values left out): data."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        full = PREFIX + path + (("?" + urlencode(query)) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.admin_token is not None:
            headers["X-Admin-Token"] = self.admin_token
        status, raw = self._transport(method, full, data, headers)
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise ControlError(method, full, status, None,
                               f"not a JSON answer (is this a kie-mock?): {raw[:200]!r}") from None
        if not isinstance(envelope, dict) or envelope.get("code") != 200 or status != 200:
            code = envelope.get("code") if isinstance(envelope, dict) else None
            msg = envelope.get("msg") if isinstance(envelope, dict) else repr(envelope)
            raise ControlError(method, full, status, code, msg)
        return envelope.get("data")

    # -- state -----------------------------------------------------------------------------------
    def health(self) -> dict:
        return self.call("GET", "/health")

    def reset(self) -> None:
        """Forget all state; configured keys get their starting balances back."""
        self.call("POST", "/reset")

    def settings(self) -> dict:
        return self.call("GET", "/settings")

    def update_settings(self, **changes) -> dict:
        """rate_limit, rate_window, cover_cost, record_info_per_second, maintenance,
        maintenance_window, latency, default_scenario; the settings in force afterwards."""
        return self.call("PATCH", "/settings", changes)

    def maintenance(self, on: bool = True) -> dict:
        return self.update_settings(maintenance=on)

    def maintenance_window(self, start_in: float, duration: float) -> dict:
        """455 from `start_in` seconds from now (the fake's clock) for `duration` seconds."""
        return self.update_settings(maintenance_window={"start_in": start_in, "duration": duration})

    def latency(self, min: float | None, max: float | None = None) -> dict:
        """Every API answer waits min (or a random time from min to max) seconds; None: no latency."""
        if min is None:
            return self.update_settings(latency=None)
        return self.update_settings(latency={"min": min, "max": min if max is None else max})

    # -- accounts ---------------------------------------------------------------------------------
    def accounts(self) -> list[dict]:
        return self.call("GET", "/accounts")

    def put_account(self, key: str, credits: int | None = None, webhook_hmac_key=_UNSET) -> dict:
        """Create or change an account (unset fields keep their value)."""
        body: dict = {}
        if credits is not None:
            body["credits"] = credits
        if webhook_hmac_key is not _UNSET:
            body["webhookHmacKey"] = webhook_hmac_key
        return self.call("PUT", "/accounts/" + quote(key, safe=""), body)

    def set_credits(self, key: str, credits: int) -> dict:
        return self.put_account(key, credits=credits)

    def delete_account(self, key: str) -> None:
        """The key's requests answer 401 afterwards."""
        self.call("DELETE", "/accounts/" + quote(key, safe=""))

    # -- faults and scenarios ---------------------------------------------------------------------
    def scenarios(self) -> dict:
        """{"scenarios": [...names], "codes": [...forcible codes]}."""
        return self.call("GET", "/scenarios")

    def arm(self, code: int | None = None, scenario: str | None = None, *, count: int = 1, key: str = "*",
            params: dict | None = None, msg: str | None = None, transport: str | None = None,
            path: str | None = None) -> dict:
        """The next `count` requests of `key` (to `path` only, e.g. "/api/v1/generate/upload-cover")
        answer `code` (with `msg`; as HTTP status = code with transport="status"), or its next
        `count` tasks play `scenario`."""
        body: dict = {"count": count, "key": key}
        if code is not None:
            body["code"] = code
        if msg is not None:
            body["msg"] = msg
        if transport is not None:
            body["transport"] = transport
        if path is not None:
            body["path"] = path
        if scenario is not None:
            body["scenario"] = scenario
        if params is not None:
            body["params"] = params
        return self.call("POST", "/faults", body)

    def faults(self) -> list[dict]:
        return self.call("GET", "/faults")

    def clear_faults(self) -> None:
        self.call("DELETE", "/faults")

    # -- the clock --------------------------------------------------------------------------------
    def clock(self) -> dict:
        return self.call("GET", "/clock")

    def now(self) -> float:
        return self.clock()["now"]

    def advance(self, seconds: float) -> float:
        """Move a virtual clock forward; what falls due fires before this returns. The new time."""
        return self.call("POST", "/clock/advance", {"seconds": seconds})["now"]

    def fire(self, task_id: str) -> int:
        """Make the task's pending stages and retries due now; how many jobs."""
        return self.call("POST", f"/tasks/{quote(task_id, safe='')}/fire")["jobs"]

    # -- what happened ----------------------------------------------------------------------------
    def tasks(self, key: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict]:
        return self.call("GET", "/tasks", params={"key": key, "status": status, "limit": limit})

    def task(self, task_id: str) -> dict:
        """The task, its record-info view (`recordInfo`) and its pending jobs."""
        return self.call("GET", "/tasks/" + quote(task_id, safe=""))

    def requests(self, path: str | None = None, code: int | None = None, limit: int | None = None) -> list[dict]:
        """Received API requests, newest first."""
        return self.call("GET", "/requests", params={"path": path, "code": code, "limit": limit})

    def callbacks(self, task_id: str | None = None, stage: str | None = None,
                  limit: int | None = None) -> list[dict]:
        """Callback delivery attempts, newest first."""
        return self.call("GET", "/callbacks", params={"task_id": task_id, "stage": stage, "limit": limit})
