"""Spends tier: one cover's whole life. Submit; the callbacks arrive at the local receiver in
order (text -> first -> complete; text and first may be skipped, any stage may repeat), each
valid against schemas/callback.json and naming the returned taskId; record-info agrees with
what the callbacks said; the files download."""

from __future__ import annotations

import json
import time

from .. import schemas as S
from .. import strategies as T
from ..runner import Skip, check

ORDER = {"text": 0, "first": 1, "complete": 2}
SPEC_ORDER = "callbacks text -> first -> complete, in that order (text and first may be skipped, a stage may repeat)"


def cover_body(ctx, url: str) -> dict:
    b = S.branch_for(True, False, S.models()[0])
    body = T.base_body(b, S.models()[0], upload_url=ctx.upload_url, callback_url=url)
    body.update(style="Classical", title="Peaceful Piano", prompt="[Verse] Night city lights shining bright")
    return body


def submit_and_wait(ctx, label: str, final=("complete", "error")):
    """Submit one cover with a fresh receiver URL; (exchange, task_id, token, callbacks)."""
    rx = ctx.need_receiver()
    url, token = ctx.callback_url()
    body = cover_body(ctx, url)
    ex = ctx.submit(body, label=label)
    ctx.case()
    if not ctx.expect_code(ex, 200, "upload-cover.accepted", "200 with a taskId for a valid body",
                           "upload-cover-response.json"):
        raise Skip("the cover was not accepted, so nothing more can be checked")
    task_id = ex.reply.data["taskId"]
    started = time.monotonic()
    early = rx.wait_for_stage(token, ("first", *final), timeout=ctx.callback_timeout)
    if any(c.stage == "first" for c in early) and not any(c.stage in final for c in early):
        # under way: record-info's status then (FIRST_SUCCESS, or further) is judged too, not only its last
        info = ctx.target.call("GET", S.RECORD_INFO, params={"taskId": task_id}, label=label)
        ctx.envelope(info, "record-info-response.json")
    # The same task may be called back more than once: wait a little after the final stage for repeats.
    calls = rx.wait_for_stage(token, final, timeout=max(ctx.callback_timeout - (time.monotonic() - started), 0.1),
                              settle=0.05 if ctx.is_fake else 2.0)
    if ctx.recorder:
        for c in calls:
            ctx.recorder.add_callback(label, task_id, c.path, c.headers, c.json)
    return ex, body, task_id, token, [c for c in calls if c.status < 300]


def check_payloads(ctx, ex, task_id, calls, expect_final="complete"):
    req = ex.describe()
    for c in calls:
        ctype = (c.headers.get("Content-Type") or c.headers.get("content-type") or "").split(";")[0].strip()
        if ctype != "application/json":
            ctx.disagree("callback.content-type", f"callback to {c.path}", "Content-Type: application/json",
                         ctype or "none")
        body = c.json
        if body is None:
            ctx.disagree("callback.json", f"callback to {c.path}", "a JSON body", f"{c.content[:60]!r}")
            continue
        errs = S.errors("callback.json", body)
        if errs:
            stage = c.stage or "?"
            ctx.disagree(f"callback.schema[{stage}]", f"{stage} callback for {req}",
                         "the payload validates against schemas/callback.json", "; ".join(errs[:2]))
        if c.task_id != task_id:
            ctx.disagree("callback.task_id", f"{c.stage} callback for {req}",
                         f"data.task_id is the taskId upload-cover returned ({task_id})",
                         f"data.task_id = {json.dumps(c.task_id)}; data keys "
                         f"{sorted((body.get('data') or {}).keys()) if isinstance(body.get('data'), dict) else '?'}")
    stages = [c.stage for c in calls]
    if not stages:
        ctx.disagree("callback.arrive", req, f"the {expect_final} callback POSTed to callBackUrl",
                     f"no callback within {ctx.callback_timeout:g}s")
        return
    if stages[-1] != expect_final:
        ctx.disagree("callback.final-stage", req, f"the last callback is '{expect_final}'",
                     f"stages received: {', '.join(map(str, stages))}")
    ranks = [ORDER.get(s, 3 if s == "error" else -1) for s in stages]
    if any(b < a for a, b in zip(ranks, ranks[1:])) or -1 in ranks:
        ctx.disagree("callback.stage-order", req, SPEC_ORDER, f"stages received: {', '.join(map(str, stages))}")


@check("lifecycle.callbacks", "lifecycle", "spends")
def callbacks(ctx):
    """Submit one cover: text, first, complete arrive in order, valid, with the right task_id."""
    got = _followed(ctx)
    check_payloads(ctx, got["exchange"], got["task_id"], got["calls"])


def _followed(ctx) -> dict:
    """Submit one cover and wait for its callbacks; the task, kept for the checks after this one."""
    try:
        ex, body, task_id, _, calls = submit_and_wait(ctx, ctx.result.check)
    except Skip as exc:
        ctx.shared["lifecycle_skipped"] = str(exc)
        raise
    got = ctx.shared["lifecycle"] = {"exchange": ex, "body": body, "task_id": task_id, "calls": calls}
    return got


_CAMEL = {"audioUrl": "audio_url", "imageUrl": "image_url", "sourceAudioUrl": "source_audio_url",
          "streamAudioUrl": "stream_audio_url", "sourceStreamAudioUrl": "source_stream_audio_url",
          "sourceImageUrl": "source_image_url", "modelName": "model_name"}


def _finished(data) -> bool:
    """SUCCESS; or CALLBACK_EXCEPTION (no receiver could be called back) with every track's audio there."""
    if not isinstance(data, dict):
        return False
    if data.get("status") == "SUCCESS":
        return True
    tracks = ((data.get("response") or {}).get("sunoData")) or []
    return data.get("status") == "CALLBACK_EXCEPTION" and bool(tracks) and all(t.get("audioUrl") for t in tracks)


def _poll_only(ctx):
    """No receiver the target can reach: submit and poll record-info until the task ends."""
    body = cover_body(ctx, ctx.callback_url()[0])
    ex = ctx.submit(body, label=ctx.result.check)
    ctx.case()
    if not ctx.expect_code(ex, 200, "upload-cover.accepted", "200 with a taskId for a valid body",
                           "upload-cover-response.json"):
        raise Skip("the cover was not accepted, so nothing more can be checked")
    task_id = ex.reply.data["taskId"]
    deadline = time.monotonic() + ctx.callback_timeout
    while True:  # polling every ~30 s is what the provider advises; 10 s is still far under 3/s
        time.sleep(0.2 if ctx.is_fake else 10)
        info = ctx.target.call("GET", S.RECORD_INFO, params={"taskId": task_id}, label=ctx.result.check)
        ctx.envelope(info, "record-info-response.json")  # every status on the way, not only the last
        data = info.reply.data if info.reply.code == 200 else None
        status = data.get("status") if isinstance(data, dict) else None
        if _finished(data) or time.monotonic() > deadline:
            break
    if not _finished(data):
        raise Skip(f"the task did not succeed within {ctx.callback_timeout:g}s (status {status})")
    tracks = [{_CAMEL.get(k, k): v for k, v in t.items()} for t in data["response"]["sunoData"]]
    fake_call = type("Polled", (), {"stage": "complete", "json": {"data": {"data": tracks}}, "status": 200})
    got = {"exchange": ex, "body": body, "task_id": task_id, "calls": [fake_call], "polled": True}
    ctx.shared["lifecycle"] = got
    ctx.note("no reachable callback receiver: the task was followed by polling record-info")
    return got


def _lifecycle(ctx):
    got = ctx.shared.get("lifecycle")
    if not got and (ctx.receiver is None or not ctx.callback_public):
        got = _poll_only(ctx)
    elif not got and "lifecycle_skipped" not in ctx.shared:  # chosen alone (--suite lifecycle.record-info)
        got = _followed(ctx)
    if not got:
        why = ctx.shared.get("lifecycle_skipped")
        raise Skip(f"lifecycle.callbacks was skipped ({why})" if why else "no task from lifecycle.callbacks")
    complete = [c for c in got["calls"] if c.stage == "complete"]
    if not complete:
        raise Skip("lifecycle.callbacks saw no complete callback")
    return got, complete[-1].json["data"]["data"]


@check("lifecycle.record-info", "lifecycle", "spends")
def record_info(ctx):
    """After the complete callback, record-info says SUCCESS with the same tracks and the request as param."""
    got, tracks = _lifecycle(ctx)
    task_id = got["task_id"]
    deadline = time.monotonic() + (5 if ctx.is_fake else 60)
    while True:  # polling may lag the callbacks on the real service: poll gently (<= 3/s/task)
        ex = ctx.target.call("GET", S.RECORD_INFO, params={"taskId": task_id}, label=ctx.result.check)
        ctx.case()
        data = ex.reply.data if ex.reply.code == 200 else None
        if (_finished(data) if got.get("polled") else isinstance(data, dict) and data.get("status") == "SUCCESS") \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5 if ctx.is_fake else 5)
    if not ctx.expect_code(ex, 200, "record-info.known-task", "200 with the task", "record-info-response.json"):
        return
    if data.get("taskId") != task_id:
        ctx.disagree("record-info.taskId", ex, f"data.taskId = {task_id}", f"data.taskId = {data.get('taskId')}")
    if not (_finished(data) if got.get("polled") else data.get("status") == "SUCCESS"):
        ctx.disagree("record-info.status", ex, "status SUCCESS once the complete callback arrived",
                     f"status {data.get('status')}")
        return
    suno = ((data.get("response") or {}).get("sunoData")) or []
    by_id = {t.get("id"): t for t in suno}
    want = {t["id"]: t for t in tracks}
    if set(by_id) != set(want):
        ctx.disagree("record-info.tracks", ex, f"sunoData has the complete callback's tracks {sorted(want)}",
                     f"sunoData ids {sorted(map(str, by_id))}")
    for tid, t in want.items():
        mine = by_id.get(tid)
        if mine is None:
            continue
        for snake, camel in (("audio_url", "audioUrl"), ("image_url", "imageUrl"), ("title", "title"),
                             ("duration", "duration")):
            if snake in t and mine.get(camel) != t[snake]:
                ctx.disagree(f"record-info.{camel}", ex, f"{camel} equals the callback's {snake} ({t[snake]!r})",
                             f"{camel} = {mine.get(camel)!r}")
    try:
        param = json.loads(data.get("param") or "")
    except ValueError:
        param = None
    sent = got["body"]
    # Real records show param with some of the request's fields (no URLs): what it has must agree.
    if not isinstance(param, dict) or param.get("model") != sent["model"] \
            or any(k in sent and param[k] != sent[k] for k in param):
        ctx.disagree("record-info.param", ex, "param is the original request as a JSON string",
                     f"param = {str(data.get('param'))[:80]}")


@check("lifecycle.files", "lifecycle", "spends")
def files(ctx):
    """The complete callback's audio and image URLs download (non-empty, audio/* and image/*)."""
    got, tracks = _lifecycle(ctx)
    deadline = time.monotonic() + (0.5 if ctx.is_fake else 30)  # for all files together
    for t in tracks:
        for key, kind in (("audio_url", "audio/"), ("image_url", "image/")):
            url = t.get(key)
            if not url:
                ctx.disagree(f"files.{key}", f"complete callback of {got['task_id']}", f"{key} is a URL", "empty")
                continue
            while True:  # real captures: files can serve 0 bytes right after SUCCESS
                ex = ctx.target.fetch(url, label=ctx.result.check)
                ctx.case()
                if ex.reply.status == 200 and ex.reply.content or time.monotonic() > deadline:
                    break
                time.sleep(0.2 if ctx.is_fake else 3)
            ctype = (ex.reply.header("content-type") or "").split(";")[0]
            if ex.reply.status != 200 or not ex.reply.content:
                ctx.disagree(f"files.{key}", f"GET {key} of track {t.get('id')}", "HTTP 200 with the file",
                             f"HTTP {ex.reply.status}, {len(ex.reply.content)} bytes")
            elif not ctype.startswith(kind) and ctype != "application/octet-stream":
                ctx.disagree(f"files.{key}.content-type", f"GET {key} of track {t.get('id')}",
                             f"Content-Type {kind}*", ctype or "none")
