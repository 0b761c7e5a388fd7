"""`kie-mock verify`: run the contract suites against a target and print where it disagrees.

Exit codes: 0 the target agrees, 1 it does not (or a check could not finish), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from urllib.parse import urlsplit

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE = 0, 1, 2
REMOTE_RATE = (18, 10.0)  # under the real limit of 20 new tasks per 10 s per account


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "verify", help="check a target (the fake, a running fake, the real service) against the contract",
        description="Run the contract suites against a target and print a table of every disagreement. "
                    "Without --base-url the target is an in-process fake. Exit 0: agrees; 1: disagrees; 2: usage.")
    p.add_argument("--base-url", help="the target, e.g. https://api.kie.ai or http://127.0.0.1:8787 "
                                      "(default: an in-process fake)")
    p.add_argument("--app", metavar="MODULE:NAME",
                   help="verify a WSGI app in this process instead (an app, a factory, or a name MODULE.build() "
                        "knows: contract.broken:stage-order-swapped)")
    p.add_argument("--api-key", default=os.environ.get("KIE_API_KEY"),
                   help="the target's API key (default: $KIE_API_KEY, or the fake's kie-mock-key)")
    p.add_argument("--allow-spend", type=int, metavar="CREDITS",
                   help="credits the run may spend creating tasks (12 per cover). Without it a target that is "
                        "not a kie-mock fake gets only the free checks")
    p.add_argument("--callback-url", help="public URL (a tunnel) forwarding to the local callback receiver, "
                                          "needed for callback checks when the target is remote")
    p.add_argument("--callback-port", type=int, default=0, help="port of the local callback receiver (default: any)")
    p.add_argument("--callback-timeout", type=float, help="seconds to wait for a task's callbacks "
                                                          "(default 20 for a fake, 600 otherwise)")
    p.add_argument("--upload-url", help="uploadUrl for the covers that are created (the real service fetches it: "
                                        "give a short public audio file)")
    p.add_argument("--examples", type=int, default=10, help="hypothesis/schemathesis examples per generated suite "
                                                            "(default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of every generated case (default 0)")
    p.add_argument("--junit-xml", metavar="FILE", help="also write the results as JUnit XML")
    p.add_argument("--record", metavar="DIR", help="save the target's answers (API key redacted) for --replay")
    p.add_argument("--replay", metavar="DIR", help="check the fake (or --base-url) against answers saved by --record")
    p.add_argument("--suite", action="append", metavar="NAME",
                   help="run only these suites or checks (auth, rules, spec, lifecycle, failures, or a check name); "
                        "repeatable")
    p.add_argument("--tier", action="append", choices=("free", "spends", "control"), help="run only these tiers")
    p.add_argument("--rate", metavar="N/SECONDS", help="pace requests to the API (default 18/10 for a remote target, "
                                                       "none on loopback); 'off' to disable")
    p.add_argument("--admin-token", default=os.environ.get("KIE_MOCK_ADMIN_TOKEN"),
                   help="X-Admin-Token for a fake's control API")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds the target has to answer one request (default 30)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=verify)
    return p


class UsageError(Exception):
    pass


def _url(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{flag}: an absolute http(s) URL is required (got {value!r})")
    return value.rstrip("/")


def _rate(value: str | None, remote: bool):
    from .target import Pacer

    if value is None:
        return Pacer(*REMOTE_RATE) if remote else None
    if value == "off":
        return None
    try:
        n, _, window = value.partition("/")
        n, window = int(n), float(window or 10)
        if n < 1 or window <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--rate: N/SECONDS like 18/10, or off (got {value!r})") from None
    return Pacer(n, window)


def _check_args(args) -> None:
    if args.allow_spend is not None and args.allow_spend < 0:
        raise UsageError("--allow-spend: a number of credits >= 0")
    if args.examples < 0:
        raise UsageError("--examples: a number >= 0")
    if args.record and args.replay:
        raise UsageError("--record and --replay cannot be combined: record against the real service, replay later")
    if args.callback_timeout is not None and args.callback_timeout <= 0:
        raise UsageError("--callback-timeout: seconds > 0")
    if args.request_timeout <= 0:
        raise UsageError("--request-timeout: seconds > 0")
    if not 0 <= args.callback_port <= 65535:
        raise UsageError("--callback-port: 0..65535")
    if args.callback_url and not args.callback_port:
        raise UsageError("--callback-url needs --callback-port: the local port your tunnel forwards that URL to "
                         "(the receiver listens there, on 127.0.0.1)")
    args.base_url = _url(args.base_url, "--base-url")
    args.callback_url = _url(args.callback_url, "--callback-url")
    args.upload_url = _url(args.upload_url, "--upload-url")
    if args.app and args.base_url:
        raise UsageError("--app and --base-url name two targets: give one")
    if args.app and ":" not in args.app:
        raise UsageError(f"--app: MODULE:NAME (got {args.app!r})")
    if args.replay and not os.path.isdir(args.replay):
        raise UsageError(f"--replay: no such directory {args.replay!r}")
    if args.replay and not os.path.isfile(os.path.join(args.replay, "exchanges.jsonl")):
        raise UsageError(f"--replay: {args.replay!r} holds no recording (exchanges.jsonl): "
                         f"make one with verify --record {args.replay}")
    if args.replay and (args.suite or args.tier):
        raise UsageError("--suite and --tier choose checks to run; --replay replays a whole recording")
    if args.record and os.path.exists(args.record) and not os.path.isdir(args.record):
        raise UsageError(f"--record: {args.record!r} is a file; a recording is a directory")
    if args.junit_xml:
        parent = os.path.dirname(os.path.abspath(args.junit_xml))
        if not os.path.isdir(parent) or os.path.isdir(args.junit_xml):
            raise UsageError(f"--junit-xml: cannot write {args.junit_xml!r} (its directory must exist)")


def load_app(spec: str):
    """MODULE:NAME -> a WSGI app: NAME is an app, a factory of one, or a name MODULE.build() knows."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--app: cannot import {module_name}: {exc}") from None
    obj = getattr(module, attr, None)
    if obj is None and hasattr(module, "build"):
        try:
            return module.build(attr)
        except KeyError:
            raise UsageError(f"--app: {module_name} has no {attr!r}") from None
    if obj is None:
        raise UsageError(f"--app: {module_name} has no {attr!r}")
    if hasattr(obj, "wsgi_app") or not callable(obj) or _is_wsgi(obj):
        return obj
    return obj()


def _is_wsgi(obj) -> bool:
    import inspect

    try:
        return len(inspect.signature(obj).parameters) == 2
    except (TypeError, ValueError):
        return False


def _select(args):
    from .runner import all_checks

    checks = all_checks()
    if args.suite:
        names = set(args.suite)
        known = {c.suite for c in checks} | {c.name for c in checks}
        unknown = names - known
        if unknown:
            raise UsageError(f"--suite: unknown {', '.join(sorted(unknown))}; known suites: "
                             f"{', '.join(sorted({c.suite for c in checks}))}")
        checks = [c for c in checks if c.suite in names or c.name in names]
    if args.tier:
        checks = [c for c in checks if c.tier in args.tier]
    if not checks:  # (an empty selection must not fall back to running everything)
        raise UsageError(f"--suite {' '.join(args.suite or ['(all)'])} --tier {' '.join(args.tier or ['(all)'])}: "
                         f"no check is both; see --list")
    return checks


def verify(args) -> int:
    try:
        _check_args(args)
        checks = _select(args)
    except UsageError as exc:
        print(f"kie-mock verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        for c in checks:
            print(f"{c.name:<34} {c.tier:<8} {c.doc}")
        return EXIT_AGREE
    try:
        return _run(args, checks)
    except UsageError as exc:
        print(f"kie-mock verify: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _interrupt_on_sigterm():
    """SIGTERM (a CI job cancelled or timed out) stops the run as Ctrl-C does: the checks done so
    far are still reported, written to --junit-xml and recorded. The previous handler, or None
    outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, interrupt)


def _restore(previous) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def _run(args, checks) -> int:
    from . import report
    from .control_client import ControlClient
    from .receiver import CallbackReceiver
    from .runner import Budget, Context, Progress, run_checks
    from .servers import VERIFY_KEY, make_fake, stop_app
    from .strategies import DEFAULT_UPLOAD_URL
    from .target import HttpTransport, Recorder, Target, WsgiTransport, is_loopback_url

    app = None
    notes = []
    if args.base_url:
        transport = HttpTransport(args.base_url, timeout=args.request_timeout)
        remote = not is_loopback_url(args.base_url)
        if remote and not args.api_key:
            raise UsageError("--api-key (or $KIE_API_KEY) is required for a remote target")
        control = ControlClient.for_url(args.base_url, args.admin_token)
        name = args.base_url
    else:
        app = load_app(args.app) if args.app else make_fake()
        transport = WsgiTransport(app)
        remote = False
        control = ControlClient.for_app(app, args.admin_token)
        name = f"in-process app {args.app}" if args.app else "in-process fake (kie-mock)"
    api_key = args.api_key or VERIFY_KEY
    for attempt in range(3):  # a flaky service's one reset or 5xx is not "cannot reach"
        try:
            probe = transport.send("GET", "/api/v1/chat/credit", {}, {"Authorization": f"Bearer {api_key}"}, None)
        except Exception as exc:
            if attempt == 2:
                raise UsageError(f"cannot reach {args.base_url} (3 tries): {exc}") from None
        else:
            if probe.status < 500 and probe.code != 500 or attempt == 2:
                break
        time.sleep(attempt + 1)
    if probe.json() is None:
        notes.append(f"note: {name} did not answer chat/credit with JSON (HTTP {probe.status})")
    is_fake = control.available()
    if not is_fake:
        if control.token_refused():  # a fake after all: its control checks must not be skipped in silence
            raise UsageError("the target is a kie-mock fake whose control API needs its admin token: pass "
                             "--admin-token (or set KIE_MOCK_ADMIN_TOKEN) to the token it was started with")
        control = None
        if probe.code == 401:  # else every check would report the key's refusal as the service's
            raise UsageError(f"{name} refused the API key (code 401 on chat/credit): check --api-key / $KIE_API_KEY")
    try:
        receiver = CallbackReceiver(port=args.callback_port, public_url=args.callback_url).start()
    except OSError as exc:
        raise UsageError(f"--callback-port {args.callback_port}: cannot listen on it: {exc.strerror or exc}") from None
    temp_key = None
    if is_fake and not args.replay:
        # A key of our own on a fake: credits that do not run out, and no one else's state or rate window.
        temp_key = f"kie-mock-verify-{uuid.uuid4().hex[:12]}"
        control.put_account(temp_key, credits=10**9)
        api_key = temp_key
        notes.append("fake detected (/_mock answers): using a temporary account for this run")
    limit = args.allow_spend if args.allow_spend is not None else (None if is_fake else 0)
    budget = Budget(limit)
    if limit is not None and not is_fake:
        bal = probe.data if probe.code == 200 else None
        if isinstance(bal, int) and bal < limit:
            notes.append(f"note: the balance ({bal}) is below --allow-spend ({limit}); the budget is the balance")
            budget.limit = bal
    recorder = Recorder([api_key, args.api_key or ""]) if args.record else None
    target = Target(transport, api_key, pacer=_rate(args.rate, remote), recorder=recorder, name=name,
                    retry_transient=0 if is_fake else 2)
    callback_public = bool(args.callback_url) or not remote
    timeout = args.callback_timeout or (20.0 if is_fake else 600.0)
    ctx = Context(target, budget=budget, receiver=receiver, control=control, examples=args.examples,
                  seed=args.seed, upload_url=args.upload_url or DEFAULT_UPLOAD_URL,
                  callback_public=callback_public, callback_timeout=timeout, is_fake=is_fake, recorder=recorder)
    progress = Progress(quiet=args.quiet)
    started = time.monotonic()
    on_term = _interrupt_on_sigterm()
    try:
        if args.replay:
            from .replay import replay

            results = replay(ctx, args.replay, progress)
            name += f" replaying {args.replay}"
        else:
            results = run_checks(ctx, checks, progress=progress)
    finally:
        _restore(on_term)
        receiver.stop()
        if temp_key and control:
            try:
                control.delete_account(temp_key)
            except Exception:
                pass
        if app is not None:
            stop_app(app)
    elapsed = time.monotonic() - started
    table = report.disagreement_table(results)
    if table:
        print("\nDISAGREEMENTS\n" + table)
    extra = notes + [f"requests: {target.requests} in {elapsed:.1f}s"
                     + (f"; waited {target.pacer.waited:.1f}s for pacing" if target.pacer and target.pacer.waited else "")
                     + (f"; backed off {len(target.backoffs)}x on 429" if target.backoffs else "")
                     + (f"; tried {len(target.transients)} request(s) again after a 5xx or a dropped connection "
                        f"({', '.join(target.transients[:3])}{', ...' if len(target.transients) > 3 else ''})"
                        if target.transients else "")]
    print("\n" + report.summary(results, name, budget.describe(), extra))
    if args.junit_xml:
        report.junit_xml(results, args.junit_xml)
    if recorder:
        recorder.save(args.record, {"target": name, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "seed": args.seed, "examples": args.examples,
                                    "results": {r.check: r.status for r in results}})
        print(f"recorded {len(recorder.exchanges)} exchanges and {len(recorder.callbacks)} callbacks in {args.record}")
    bad = any(r.status in ("failed", "error") for r in results)
    return EXIT_DISAGREE if bad else EXIT_AGREE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kie-mock")
    sub = parser.add_subparsers(dest="command", required=True)
    add_verify_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
