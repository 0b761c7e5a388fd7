"""pytest plugin (entry point `pytest11`): a kie-mock fake for your tests, or the real service.

Fixtures
- `kie`             the target for this test: `.url`, `.api_key`, `.headers`, `.is_fake`, `.control`,
                    and helpers `.upload_cover(body)`, `.record_info(task_id)`, `.credit()`;
                    on the fake, state is fresh (POST /_mock/reset before the test)
- `kie_session`     the same, session-scoped and never reset (for hypothesis `@given` tests)
- `kie_control`     a ControlClient for the fake (the test is skipped against the real service)
- `kie_callbacks`   a CallbackReceiver: `.url(token)`, `.wait_for_stage(token, "complete")`, ...
- `kie_server`      session-scoped: the fake served on 127.0.0.1 in a thread (its base URL)
- `kie_fake_config` session-scoped Config of that fake; override it in your conftest.py

Options: `--kie-base-url URL --kie-api-key KEY` run the same tests against a running fake or
the real service (env: KIE_BASE_URL, KIE_API_KEY); `--kie-admin-token T` for a running fake
started with an admin token (env: KIE_MOCK_ADMIN_TOKEN); `--kie-callback-url URL` is the public
address (a tunnel) of the callback receiver, whose port `--kie-callback-port` fixes (with
pytest-xdist, worker gwN listens on that port + N). `kie.upload_cover` returns a 429 as it comes
(no retry). The session's own fake calls back loopback addresses only.
Marker: `@pytest.mark.kie_fake_only` skips a test when the target is not a fake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from .control_client import ControlClient
from .receiver import CallbackReceiver
from .target import Exchange, HttpTransport, Target

UPLOAD_COVER = "/api/v1/generate/upload-cover"
RECORD_INFO = "/api/v1/generate/record-info"
CREDIT = "/api/v1/chat/credit"


def pytest_addoption(parser):
    group = parser.getgroup("kie-mock", "kie-mock: the fake kie.ai upload-cover API, or the real one")
    group.addoption("--kie-base-url", default=os.environ.get("KIE_BASE_URL"),
                    help="run kie fixtures against this target instead of a fake started for the session")
    group.addoption("--kie-api-key", default=os.environ.get("KIE_API_KEY"), help="API key for --kie-base-url")
    group.addoption("--kie-admin-token", default=os.environ.get("KIE_MOCK_ADMIN_TOKEN"),
                    help="the admin token of a --kie-base-url fake started with one (its control API)")
    group.addoption("--kie-callback-url", default=os.environ.get("KIE_CALLBACK_URL"),
                    help="public URL forwarding to the callback receiver (a remote target needs it)")
    group.addoption("--kie-callback-port", type=int, default=int(os.environ.get("KIE_CALLBACK_PORT") or 0),
                    help="port of the callback receiver (default: any free one)")


def pytest_configure(config):
    config.addinivalue_line("markers", "kie_fake_only: needs the kie-mock fake (skipped against the real service)")


@dataclass
class KieTarget:
    """What a test needs to talk to the target, and a few one-liners."""

    url: str
    api_key: str
    is_fake: bool
    control: ControlClient | None
    client: Target

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def upload_cover(self, body: dict, **kw) -> Exchange:
        return self.client.call("POST", UPLOAD_COVER, json=body, **kw)

    def record_info(self, task_id: str, **kw) -> Exchange:
        return self.client.call("GET", RECORD_INFO, params={"taskId": task_id}, **kw)

    def credit(self) -> int | None:
        return self.client.call("GET", CREDIT).reply.data


@pytest.fixture(scope="session")
def kie_fake_config():
    """The session fake's Config (instant stages, no rate limit): override to change it."""
    from .servers import fake_config

    return fake_config()


@pytest.fixture(scope="session")
def kie_server(request, kie_fake_config):
    """Base URL of the target: --kie-base-url, or a fake served in a thread for the session."""
    url = request.config.getoption("--kie-base-url")
    if url:
        yield url.rstrip("/")
        return
    from .servers import ServerThread, make_fake

    server = ServerThread(make_fake(kie_fake_config)).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _kie_session_target(request, kie_server, kie_fake_config):
    remote = bool(request.config.getoption("--kie-base-url"))
    key = request.config.getoption("--kie-api-key") if remote else None
    key = key or next(iter(kie_fake_config.api_keys))
    control = ControlClient.for_url(kie_server, request.config.getoption("--kie-admin-token"))
    client = Target(HttpTransport(kie_server), key, retry_429=0)  # a test sees the 429 it rehearses
    try:
        client.call("GET", CREDIT)
    except Exception as exc:  # not up (yet): not "the real service", whose control tests would be skipped
        pytest.fail(f"cannot reach {kie_server}: {exc}", pytrace=False)
    is_fake = control.available()
    if not is_fake and control.token_refused():  # a fake after all: its tests must not be skipped in silence
        pytest.fail(f"{kie_server} is a kie-mock fake whose control API needs its admin token: pass "
                    f"--kie-admin-token (or set KIE_MOCK_ADMIN_TOKEN)", pytrace=False)
    if is_fake and remote and os.environ.get("PYTEST_XDIST_WORKER"):
        import warnings

        warnings.warn(pytest.PytestWarning(
            f"pytest-xdist workers share the fake at {kie_server}: each test's reset wipes the tasks of "
            f"the tests running in the other workers (without --kie-base-url each worker has a fake of its own)"))
    return KieTarget(kie_server, key, is_fake, control if is_fake else None, client)


@pytest.fixture(scope="session")
def kie_session(_kie_session_target) -> KieTarget:
    """The target without a reset per test: for hypothesis @given tests (state accumulates)."""
    return _kie_session_target


@pytest.fixture
def kie(_kie_session_target, request):
    """The target for this test; on a fake, with fresh state (reset before the test, and after
    it: a `kie_session` test that comes next does not inherit a zero balance or maintenance)."""
    t = _kie_session_target
    if request.node.get_closest_marker("kie_fake_only") and not t.is_fake:
        pytest.skip(f"needs the kie-mock fake; {t.url} has no control API")
    if t.is_fake:
        t.control.reset()
    yield t
    if t.is_fake:
        t.control.reset()


@pytest.fixture
def kie_control(kie) -> ControlClient:
    """The fake's control API (skips the test when the target is not a fake)."""
    if not kie.is_fake:
        pytest.skip(f"needs the kie-mock control API; {kie.url} has none")
    return kie.control


@pytest.fixture(scope="session")
def _kie_receiver(request):
    port = request.config.getoption("--kie-callback-port")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if port and worker.startswith("gw") and worker[2:].isdigit():
        port += int(worker[2:])  # one receiver per xdist worker: gw0 on PORT, gw1 on PORT + 1, ...
    rx = CallbackReceiver(port=port, public_url=request.config.getoption("--kie-callback-url")).start()
    yield rx
    rx.stop()


@pytest.fixture
def kie_callbacks(_kie_receiver, request) -> CallbackReceiver:
    """The callback receiver, emptied for this test; errors in its thread fail the test."""
    remote = request.config.getoption("--kie-base-url")
    from .target import is_loopback_url

    if remote and not is_loopback_url(remote) and not _kie_receiver.public_url:
        pytest.skip("the target cannot reach the local callback receiver: pass --kie-callback-url")
    _kie_receiver.clear()
    yield _kie_receiver
    _kie_receiver.check()
