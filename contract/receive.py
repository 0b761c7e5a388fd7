"""`kie-mock receive`: a callback receiver for people. Prints each callback as it arrives.

    kie-mock receive --port 9000            # then use callBackUrl http://127.0.0.1:9000/callback
    kie-mock receive --port 9000 --json     # whole bodies
    kie-mock receive --port 9000 --fail 4   # answer 500 to the first 4 callbacks (rehearse retries)
"""

from __future__ import annotations

import json
import sys
import threading
import time

from .receiver import Callback, CallbackReceiver


def add_receive_parser(subparsers):
    p = subparsers.add_parser("receive", help="print the callbacks POSTed to a local port",
                              description="Listen for callbacks and print each one as it arrives (Ctrl-C stops).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--json", action="store_true", help="print every body in full")
    p.add_argument("--fail", type=int, default=0, metavar="N", help="answer HTTP 500 to the first N callbacks")
    p.set_defaults(func=receive)
    return p


GIVE_UP_AFTER = 4  # the fake's default: 1 try + 3 retries (KIE_MOCK_RETRY_DELAYS 1,2,4)


def describe(call: Callback, failures: int = 0) -> str:
    """One callback, for people; `failures`: how many times in a row this task's callback of this
    stage has now been refused (this one included)."""
    body = call.json
    if not isinstance(body, dict):
        return f"{call.path}: not JSON ({len(call.content)} bytes)"
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    tracks = data.get("data") if isinstance(data.get("data"), list) else []
    line = (f"{time.strftime('%H:%M:%S', time.localtime(call.at))}  {str(data.get('callbackType')):<8} "
            f"task {data.get('task_id')}  code {body.get('code')}  {body.get('msg')!r}")
    for t in tracks:
        if isinstance(t, dict):
            line += f"\n    track {t.get('id')}  {t.get('duration')} s  audio {t.get('audio_url') or '(not yet)'}"
    if "X-Webhook-Signature" in call.headers:
        line += f"\n    signed: {call.headers['X-Webhook-Signature']} at {call.headers.get('X-Webhook-Timestamp')}"
    if call.status >= 300:
        line += f"\n    answered HTTP {call.status} (--fail), failure {failures} in a row of this callback: "
        line += ("the fake retries it (by default after 1, 2, 4 s)" if failures < GIVE_UP_AFTER else
                 "by default the fake now gives up (record-info CALLBACK_EXCEPTION, no more callbacks)")
    return line


def receive(args) -> int:
    rx = CallbackReceiver(host=args.host, port=args.port, prefix="/")
    rx.fail_first = args.fail

    printing = threading.Lock()
    refused: dict[tuple, int] = {}  # (task_id, callbackType) -> failures in a row

    def on_call(call: Callback):  # callbacks arrive on several threads: one whole block at a time
        data = call.json.get("data") if isinstance(call.json, dict) else None
        which = (data.get("task_id"), data.get("callbackType")) if isinstance(data, dict) else (None, None)
        with printing:
            prior = refused.pop(which, 0)  # a success ends the run of failures
            failures = prior + 1 if call.status >= 300 else 0
            if failures:
                refused[which] = failures
            text = describe(call, failures) + ("\n" + json.dumps(call.json, indent=2) if args.json else "")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    rx.on_call = on_call
    try:
        rx.start()
    except OSError as exc:
        print(f"kie-mock receive: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"receiving callbacks on http://{args.host}:{rx.port}/callback (any path works); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()
    return 0
