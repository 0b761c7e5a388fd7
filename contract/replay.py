"""Replay: hold a fake to what a target answered when it was recorded (`verify --record DIR`).

Every recorded request is sent again to the fake (keys and callback URLs substituted, the
recorded taskIds mapped to the fake's), and the fake's answer must match the recording in
what the contract is about: the HTTP status, the envelope code, and the *shape* of the
body (keys and JSON types, not values: ids, messages and times differ by design; createTime may
be a string or a number on either side). The callbacks each recorded task received must match
too: the same last stage, every recorded stage in its order (a duplicate, or a text or first
stage one side skipped, is allowed), with payloads of the same shape. A recorded 5xx answer
(the target's own fault) is not replayed.

Checks of the control tier are not replayed: their answers came from the state a fake was put
in (forced codes, maintenance, balances, a temporary account), which a recording does not
hold. A recording of the real service has none of them (they are skipped there).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

from .runner import Context, Result, all_checks
from .target import REDACTED


def load(directory) -> tuple[dict, list[dict], list[dict]]:
    d = Path(directory)
    if not (d / "exchanges.jsonl").exists():
        raise FileNotFoundError(f"{d}: no exchanges.jsonl (record one with verify --record {d})")
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    read = lambda name: [json.loads(line) for line in (d / name).read_text().splitlines() if line.strip()]  # noqa: E731
    return meta, read("exchanges.jsonl"), read("callbacks.jsonl") if (d / "callbacks.jsonl").exists() else []


# Fields whose type the contract leaves open: createTime is "2025-01-01 00:00:00" or epoch ms
# (API_NOTES: real captures show both), so a recording of one and a fake of the other agree.
EITHER = {"createTime": ("number", "string")}


def shape(value, key: str | None = None):
    """The JSON shape of a value: key sets and types; a list's shape is its first item's."""
    if key in EITHER:
        kind = shape(value)
        return " or ".join(EITHER[key]) if kind in EITHER[key] else kind
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return "string"


def shape_diff(want, got, path: str = "") -> list[str]:
    """Where two shapes differ ('data.taskId: string vs missing')."""
    here = path or "(root)"
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in want:
            if k not in got:
                out.append(f"{path + '.' if path else ''}{k}: recorded, missing from the fake")
            else:
                out += shape_diff(want[k], got[k], f"{path + '.' if path else ''}{k}")
        out += [f"{path + '.' if path else ''}{k}: the fake has it, the recording not" for k in got if k not in want]
        return out
    if isinstance(want, list) and isinstance(got, list):
        if want and got:
            return shape_diff(want[0], got[0], f"{path}[]")
        return []  # an empty list matches any list
    if want == got:
        return []
    return [f"{here}: recorded {_kind(want)}, the fake {_kind(got)}"]


def _kind(s) -> str:
    return "object" if isinstance(s, dict) else "array" if isinstance(s, list) else s


def _subst(value, key: str, ids: dict):
    """The recorded taskIds mapped to the fake's, the redacted key put back."""
    if isinstance(value, str):
        for old, new in ids.items():
            value = value.replace(old, new)
        return value.replace(REDACTED, key)
    if isinstance(value, dict):
        return {k: _subst(v, key, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, key, ids) for v in value]
    return value


def _token(url: str) -> str:
    """The receiver token a callBackUrl ends with (its last path segment)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _receivable(url) -> bool:
    """A callBackUrl the recorded target delivered to (and so the replay's receiver stands in
    for); a case's deliberately bad one ("", ftp://, no host) is replayed as it was."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def replay(ctx: Context, directory, progress=None) -> list[Result]:
    meta, exchanges, callbacks = load(directory)
    target = ctx.target
    key = target.api_key
    ids: dict[str, str] = {}  # recorded taskId -> the fake's
    tokens: dict[str, tuple[str, str]] = {}  # receiver token -> (recorded task id, check)
    by_check: dict[str, Result] = {}
    finals = {}  # recorded task id -> the last stage its callbacks reached
    for c in callbacks:
        stage = ((c.get("json") or {}).get("data") or {}).get("callbackType")
        if stage:
            finals[c["task_id"]] = stage
    state = {"finals": finals, "tokens_by_task": {}}
    order = list(dict.fromkeys(e.get("check") or "?" for e in exchanges))
    tiers = {c.name: c.tier for c in all_checks()}
    r, i, comparing = None, 0, False
    try:
        for i, name in enumerate(order, 1):
            r = by_check[name] = Result(f"replay:{name}", "replay", "control" if tiers.get(name) == "control" else "free")
            ctx.result = r
            started = time.monotonic()
            if r.tier == "control":
                r.status, r.reason = "skipped", "a control-tier check: its answers came from the recorded fake's state"
                if progress:
                    progress.stream.write(f"[{i:>2}/{len(order)}] {r.check:<40} SKIPPED ({r.reason})\n")
                continue
            for rec in (e for e in exchanges if (e.get("check") or "?") == name):
                _one(ctx, rec, key, ids, tokens, state)
            r.duration = time.monotonic() - started
            r.status = "failed" if r.disagreements else "passed"
            if progress:
                progress.stream.write(f"[{i:>2}/{len(order)}] {r.check:<40} {r.status.upper()} ({r.cases} exchanges)\n")
        r, comparing = None, True
        if callbacks:
            r = by_check["replay:callbacks"] = Result("replay:callbacks", "replay", "free")
            ctx.result = r
            _callbacks(ctx, callbacks, ids, tokens)
            r.status = "failed" if r.disagreements else "passed"
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (a CI job cancelled): what was replayed is reported
        if r is not None:
            r.status = "error"
            r.reason = ("interrupted: the recorded callbacks were not all compared" if comparing
                        else f"interrupted: this check and the {len(order) - i} after it did not finish")
        if progress:
            progress.stream.write("interrupted\n")
    return list(by_check.values())


def _one(ctx, rec: dict, key: str, ids: dict, tokens: dict, state: dict) -> None:
    path = rec["path"]
    if path.startswith(("http://", "https://")):
        ctx.note(f"not replayed (a file download from the recorded target): {path[:60]}")
        return
    want = rec["response"]
    if want["status"] >= 500 or (want.get("json") or {}).get("code") == 500:
        ctx.note(f"not replayed: the recorded target answered {rec['method']} {path} with HTTP {want['status']} "
                 f"(a fault of its own, tried again when recorded)")
        return
    old_task = (rec.get("query") or {}).get("taskId")
    token = state["tokens_by_task"].get(old_task)
    if token and ctx.receiver and old_task in state["finals"]:
        # Recorded after that task's callbacks: replay it at the same point of the task's life.
        ctx.receiver.wait_for_stage(token, state["finals"][old_task], timeout=ctx.callback_timeout)
    body = _subst(rec.get("body"), key, ids)
    if isinstance(body, dict) and _receivable(body.get("callBackUrl")) and ctx.receiver:
        body = dict(body, callBackUrl=ctx.receiver.url(_token(body["callBackUrl"])))
    headers = _subst(rec.get("headers") or {}, key, ids)
    query = _subst(rec.get("query") or {}, key, ids)
    call = {"json": body} if isinstance(body, (dict, list)) or (body is None and "content-type" in
                                                                  {h.lower() for h in headers}) else {"data": body}
    if isinstance(body, str):
        call = {"data": body}
    ex = ctx.target.call(rec["method"], path, params=query, headers=headers,
                         auth=headers.get("Authorization") or headers.get("authorization"),
                         label=ctx.result.check, retry_429=False, **call)
    ctx.case()
    got = ex.reply
    rj, gj = want.get("json"), got.json()
    if isinstance(rj, dict) and isinstance(gj, dict) and rj.get("code") == 200 and gj.get("code") == 200:
        old_id = (rj.get("data") or {}).get("taskId") if isinstance(rj.get("data"), dict) else None
        new_id = (gj.get("data") or {}).get("taskId") if isinstance(gj.get("data"), dict) else None
        if old_id and new_id:
            ids[old_id] = new_id
            if isinstance(body, dict) and isinstance(body.get("callBackUrl"), str):
                token = _token(body["callBackUrl"])
                tokens[token] = (old_id, ctx.result.check)
                state["tokens_by_task"][old_id] = token
    said = f"recorded: HTTP {want['status']}" + (f", code {rj.get('code')}" if isinstance(rj, dict) else "")
    if got.status != want["status"]:
        ctx.disagree("replay.http-status", ex, said, ex)
    if isinstance(rj, dict) and isinstance(gj, dict):
        if rj.get("code") != gj.get("code"):
            ctx.disagree("replay.code", ex, said + f' "{str(rj.get("msg"))[:60]}"', ex)
        else:
            diffs = shape_diff(shape(rj), shape(gj))
            if diffs:
                ctx.disagree("replay.shape", ex, "the recorded body's shape (keys and types)", "; ".join(diffs[:3]))
    elif (rj is None) != (gj is None):
        ctx.disagree("replay.body", ex, "a JSON body" if rj is not None else "a non-JSON body", ex)


def _callbacks(ctx, recorded: list[dict], ids: dict, tokens: dict) -> None:
    rx = ctx.receiver
    if rx is None:
        ctx.note("no receiver: recorded callbacks not compared")
        return
    by_task: dict[str, list[dict]] = {}
    for c in recorded:
        by_task.setdefault(c["task_id"], []).append(c)
    for token, (old_id, check_name) in tokens.items():
        want = by_task.get(old_id)
        if not want:
            continue
        final = want[-1]["json"]["data"].get("callbackType") if isinstance(want[-1].get("json"), dict) else None
        got = rx.wait_for_stage(token, final or ("complete", "error"), timeout=ctx.callback_timeout, settle=0.2)
        ctx.case()
        ws = [(c.get("json") or {}).get("data", {}).get("callbackType") for c in want]
        gs = [c.stage for c in got if c.status < 300]
        where = f"callbacks of the task of {check_name} (recorded {old_id})"
        if not _same_course(ws, gs):
            ctx.disagree("replay.callback-stages", where, f"recorded stages: {', '.join(map(str, ws))}",
                         f"the fake sent: {', '.join(map(str, gs)) or 'none'}")
            continue
        firsts = {}
        for c in (c for c in got if c.status < 300):
            firsts.setdefault(c.stage, c)
        recorded_firsts = {}
        for c, stage in zip(want, ws):
            recorded_firsts.setdefault(stage, c)
        for stage, w in recorded_firsts.items():  # each stage's first payload against the fake's
            g = firsts.get(stage)
            if g is None:
                continue
            diffs = shape_diff(shape(w.get("json")), shape(g.json))
            if diffs:
                ctx.disagree("replay.callback-shape", f"{g.stage} callback, {where}",
                             "the recorded payload's shape", "; ".join(diffs[:3]))


def _same_course(recorded: list, sent: list) -> bool:
    """The same task course as the contract sees it: the same last stage, and every stage the
    recording has sent in its order (a duplicate, or a text/first stage one side skipped, is
    allowed: "the same task may be called back more than once", "in some cases text and first
    are skipped")."""
    rec, got = list(dict.fromkeys(recorded)), list(dict.fromkeys(sent))
    if not rec or not got or rec[-1] != got[-1]:
        return not rec and not got
    it = iter(got)
    return all(stage in it for stage in rec)
