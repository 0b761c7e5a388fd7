"""The control-API client the kit uses: mock_server.control_client.ControlClient (issue 4's
client for /_mock, see control-openapi.yaml) plus what the suites and the pytest plugin need.

    ctl = ControlClient.for_url("http://127.0.0.1:8787")    # or ControlClient.for_app(any_wsgi_app)
    ctl.available()                                          # is the target a kie-mock fake?
    ctl.arm_code(402, key="kie-mock-key")                    # the next request of that key answers 402
    ctl.arm_scenario("fail-501")                             # the next task fails late with 501
    with ctl.settings_changed(maintenance=True): ...         # put back on exit
"""

from __future__ import annotations

from contextlib import contextmanager

from mock_server.control_client import ControlClient as _Base
from mock_server.control_client import ControlError

__all__ = ["ControlClient", "ControlError"]


class ControlClient(_Base):
    @classmethod
    def for_url(cls, base_url: str, admin_token: str | None = None, timeout: float = 30.0) -> "ControlClient":
        return cls(base_url, admin_token=admin_token, timeout=timeout)

    @classmethod
    def for_app(cls, app, admin_token: str | None = None) -> "ControlClient":
        """In-process, over any WSGI app (a kie-mock app, or one wrapped in middleware)."""
        from werkzeug.test import Client

        return cls.in_process(app if hasattr(app, "test_client") else Client(app), admin_token=admin_token)

    def available(self) -> bool:
        """True when the target answers /_mock/health as a kie-mock fake does."""
        try:
            return (self.health() or {}).get("status") == "ok"
        except Exception:
            return False

    def token_refused(self) -> bool:
        """True when the target is a kie-mock fake whose control API refuses this client's admin
        token (none, or another one than it was started with)."""
        try:
            self.health()
        except ControlError as exc:
            return exc.status == 401 and "X-Admin-Token" in str(exc.msg)
        except Exception:  # not a fake at all
            return False
        return False

    def patch_settings(self, **changes) -> dict:
        return self.update_settings(**changes)

    @contextmanager
    def settings_changed(self, **changes):
        """Apply settings for the block, then put back the values they had."""
        before = self.settings()
        self.update_settings(**changes)
        try:
            yield
        finally:
            self.update_settings(**{k: before.get(k) for k in changes})

    def arm_code(self, code: int, *, count: int = 1, key: str = "*") -> dict:
        """The next `count` API requests of `key` answer `code`."""
        return self.arm(code=code, count=count, key=key)

    def arm_scenario(self, scenario: str, *, count: int = 1, key: str = "*", params: dict | None = None) -> dict:
        """The next `count` tasks of `key` play `scenario` (fail-501, complete-only, ...)."""
        return self.arm(scenario=scenario, count=count, key=key, params=params)
