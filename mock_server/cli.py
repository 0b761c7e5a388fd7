"""`kie-mock serve` (start the fake) and `kie-mock verify` (the contract kit)."""

from __future__ import annotations

import argparse
import os
import sys

from .config import DEFAULT_API_KEY, Config, _parse_allowlist, _parse_keys, from_env
from .envelope import TRANSPORTS


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="start the fake (defaults just work)",
                       description="Start the fake. Every flag also reads KIE_MOCK_<NAME> from the environment.")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8787)")
    p.add_argument("--api-keys", help=f"comma-separated keys, each optionally KEY:CREDITS (default {DEFAULT_API_KEY}:1000)")
    p.add_argument("--credits", type=int, help="starting balance of every configured key")
    p.add_argument("--transport", choices=TRANSPORTS, help="real: HTTP 200 + code in body (default); status: HTTP status = code")
    p.add_argument("--stage-delays", help="seconds after submission for text,first,complete (default 2,5,8)")
    p.add_argument("--time-scale", type=float, help="multiply every delay (0.01 = 100x faster)")
    p.add_argument("--instant", action="store_true", default=None, help="fire every stage at once")
    p.add_argument("--clock", choices=("real", "virtual"), help="virtual: time moves only via POST /_mock/clock/advance")
    p.add_argument("--public-url", help="base URL put in file links (default: the request's host)")
    p.add_argument("--rate-limit", type=int, help="new tasks per window per key (default 20; 0 = off)")
    p.add_argument("--admin-token", help="require X-Admin-Token on the control API (KIE_MOCK_ADMIN_TOKEN keeps it out of ps)")
    p.add_argument("--store", help="sqlite:PATH (kept across restarts), redis://HOST:PORT/DB (shared by instances) "
                                   "or memory (one process); default: a fresh sqlite file in a temporary "
                                   "directory, removed at a clean exit")
    p.add_argument("--scenario-file", help="YAML/JSON file of settings, accounts and faults to apply at start")
    p.add_argument("--source-check", action="store_true", default=None, help="fetch uploadUrl before accepting")
    p.add_argument("--outbound-allow", help="comma-separated hosts/networks the fake may call (callbacks, uploadUrl)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1); more than one needs a shared store (sqlite file or redis)")
    p.add_argument("--schedulers", type=int, default=1,
                   help="processes making the callbacks on a shared store (default 1, about 900 callbacks/s each)")


def build_config(args) -> Config:
    cfg = from_env()
    changes = {
        "host": args.host, "port": args.port, "transport": args.transport, "time_scale": args.time_scale,
        "instant": args.instant, "clock": args.clock, "public_url": args.public_url,
        "rate_limit": args.rate_limit, "admin_token": args.admin_token, "store": args.store,
        "source_check": args.source_check,
    }
    if args.api_keys:
        changes["api_keys"] = _parse_keys(args.api_keys)
    if args.outbound_allow is not None:
        changes["outbound_allow"] = _parse_allowlist(args.outbound_allow)
    if args.stage_delays:
        changes["stage_delays"] = tuple(float(x) for x in args.stage_delays.split(","))
    cfg = cfg.with_overrides(**changes)
    if args.credits is not None:
        cfg.api_keys = {k: args.credits for k in cfg.api_keys}
    return cfg


def serve(args) -> int:
    from .server import run

    try:
        cfg = build_config(args).check()
    except ValueError as exc:  # bad flag or environment value: a usage error, not a traceback
        print(f"kie-mock serve: {exc}", file=sys.stderr)
        return 2
    default_store = args.store is None and "KIE_MOCK_STORE" not in os.environ
    return run(cfg, workers=args.workers, scenario_file=args.scenario_file, default_store=default_store,
               schedulers=args.schedulers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kie-mock", description="Offline fake of kie.ai's Suno upload-cover API.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    try:
        from contract.cli import add_verify_parser
        from contract.receive import add_receive_parser
    except ImportError:  # the contract kit is optional at run time
        pass
    else:
        add_verify_parser(sub)
        add_receive_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
