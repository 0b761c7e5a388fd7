"""What a task is and how it looks over time: creation, its plan of stages, and the two
views of it (callback payloads and record-info), both derived from the same task record
so they can never disagree.

Shapes follow shared/API_NOTES.md: callbacks carry snake_case tracks, record-info
camelCase `sunoData`; `first` carries both tracks with the unfinished one's audio_url "".
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time

import orjson

from . import media
from .config import Config
from .limits import table
from .scenarios import Scenario

# stage -> (callback msg, record-info status)
STAGES = {
    "text": ("Text generation completed.", "TEXT_SUCCESS"),
    "first": ("First track generated successfully.", "FIRST_SUCCESS"),
    "complete": ("All generated successfully.", "SUCCESS"),
}
# Late failures: callback code -> (msg, record-info status). Codes from the callback page.
ERRORS = {
    400: ("Lyrics contain copyrighted material.", "SENSITIVE_WORD_ERROR"),
    408: ("Rate limited or timed out, please try again later.", "GENERATE_AUDIO_FAILED"),
    413: ("Uploaded audio matches an existing work.", "GENERATE_AUDIO_FAILED"),
    500: ("Internal Error", "GENERATE_AUDIO_FAILED"),
    501: ("Audio generation failed.", "GENERATE_AUDIO_FAILED"),
    531: ("Generation failed, credits have been refunded.", "GENERATE_AUDIO_FAILED"),
}
REFUNDING_CODES = {531}
CALLBACK_EXCEPTION = "CALLBACK_EXCEPTION"
FINAL_STAGES = {"complete", "error"}

_CAMEL = {"audio_url": "audioUrl", "source_audio_url": "sourceAudioUrl",
          "stream_audio_url": "streamAudioUrl", "source_stream_audio_url": "sourceStreamAudioUrl",
          "image_url": "imageUrl", "source_image_url": "sourceImageUrl", "model_name": "modelName"}


# Ids need to be unique, not secret: a PRNG seeded from the OS (and reseeded in every
# forked worker, so two workers never draw the same ids) is ten times cheaper than uuid4.
_rng = random.Random()


def _reseed() -> None:
    _rng.seed(int.from_bytes(os.urandom(32), "big"))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """32 hex digits, like the real service's taskIds: 11 of them count 100 µs steps of time, the
    other 21 are random. Ids made one after the other sort together, so a store's index on them
    grows at its end (one page written per batch of new tasks, not one page per task)."""
    return f"{int(time.time() * 10000) & 0xFFFFFFFFFFF:011x}{_rng.getrandbits(84):021x}"


def new_uuid() -> str:
    """A random (version 4, RFC 4122 variant) UUID, formatted without building a uuid.UUID."""
    h = f"{_rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


_last_second: list = [(None, "")]  # [(whole second, its text)]: covers of one second format it once


def _create_time(now: float, cfg: Config):
    if cfg.create_time == "epoch_ms":
        return int(now * 1000)
    second = math.floor(now)  # what gmtime does with a fraction, also before 1970
    last = _last_second[0]  # one tuple, replaced whole: threads never see a half-updated pair
    if last[0] != second:
        last = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second)))
        _last_second[0] = last
    return last[1]


def _duration(track_id: str) -> float:
    """A stable duration from 60 to 240 s, snapped to what whole MP3 frames give."""
    seed = int(hashlib.sha256(track_id.encode()).hexdigest()[:8], 16)
    return media.snap_duration(60 + (seed % 18000) / 100)


def _title(body: dict) -> str:
    if body.get("customMode"):
        return body["title"]
    words = (body.get("prompt") or "").split()[:5]
    return " ".join(words).title() or "Untitled Cover"


def _lyrics(body: dict) -> str:
    if body.get("instrumental"):
        return ""
    if body.get("customMode"):
        return body.get("prompt") or ""
    return f"[Verse]\n{body.get('prompt') or ''}"


def _track(task: dict, body: dict, track_id: str) -> dict:
    files = f"{task['base_url'].rstrip('/')}/files/{task['taskId']}/{track_id}"
    return {
        "id": track_id,
        "audio_url": f"{files}.mp3",
        "source_audio_url": f"{files}/source.mp3",
        "stream_audio_url": f"{files}/stream",
        "source_stream_audio_url": f"{files}/source-stream",
        "image_url": f"{files}.jpeg",
        "source_image_url": f"{files}/source.jpeg",
        "prompt": _lyrics(body),
        "model_name": table().models[body["model"]].model_name,
        "title": _title(body),
        "tags": body.get("style") or "",
        "createTime": task["createTime"],
        "duration": _duration(track_id),
    }


def tracks(task: dict) -> list[dict]:
    """The task's two tracks in full. A task record keeps only their ids: everything else is
    derived (from the request body, the base URL, the creation time and the id), so a record
    stays small in every store and the views can never disagree."""
    if "tracks" in task:  # a record written by an earlier version
        return [dict(t) for t in task["tracks"]]
    body = orjson.loads(task["param"])
    return [_track(task, body, track_id) for track_id in task["track_ids"]]


def track(task: dict, track_id: str) -> dict | None:
    return next((t for t in tracks(task) if t["id"] == track_id), None)


def new_task(body: dict, key: str, now: float, cfg: Config, base_url: str,
             scenario: Scenario, charged: int) -> dict:
    """A freshly accepted task (status PENDING) and its plan of stages."""
    return {
        "taskId": new_id(),
        "key": key,
        "param": orjson.dumps(body).decode(),  # compact, non-ASCII kept as is
        "callBackUrl": body["callBackUrl"],
        "model": body["model"],
        "created_at": now,
        "createTime": _create_time(now, cfg),
        "base_url": base_url,
        "expires_at": now + cfg.retention_days * 86400,
        "status": "PENDING",
        "stage": None,
        "errorCode": None,
        "errorMessage": None,
        "charged": charged,
        "track_ids": [new_uuid(), new_uuid()],
        "scenario": scenario.to_dict(),
        "plan": scenario.plan(now, cfg),
        "delivery": "active",  # "abandoned" once 3 retries of one callback failed
        "completed_at": None,
    }


def tracks_at(task: dict, stage: str | None) -> list[dict] | None:
    """The tracks as visible after `stage` (snake_case); None before any stage."""
    if stage is None:
        return None
    if stage in ("text", "error"):
        return []
    full = tracks(task)
    if stage == "first":
        for t in full[1:]:  # the unfinished track: no audio yet (seen in real captures)
            t["audio_url"] = t["source_audio_url"] = ""
    return full


def apply_stage(task: dict, stage: str, code: int | None = None, status: str | None = None) -> dict:
    """The changes to a task when `stage` happens ("error" with its callback code, and the
    status it leaves when not the code's own: CREATE_TASK_FAILED)."""
    changes: dict = {"stage": stage}
    if stage == "error":
        msg, default = ERRORS[code]
        status = status or default
        changes.update(errorCode=code, errorMessage=msg, failed_status=status)
    else:
        status = STAGES[stage][1]
    if stage == "error" or task["status"] != CALLBACK_EXCEPTION:  # once delivery failed, polling says
        changes["status"] = status  # so; but a failed generation says that (status_when_abandoned)
    if stage in FINAL_STAGES:
        changes["completed_at"] = None  # filled by the caller with the clock's time
    return changes


def status_when_abandoned(task: dict) -> str:
    """record-info's status once the task's callbacks were given up: CALLBACK_EXCEPTION, which
    API_NOTES says means "generation worked but the callback could not be delivered"; a task
    whose generation failed keeps saying that (GENERATE_AUDIO_FAILED, SENSITIVE_WORD_ERROR)."""
    if task.get("stage") == "error" and task.get("errorCode") in ERRORS:
        return task.get("failed_status") or ERRORS[task["errorCode"]][1]  # (older tasks: the code's)
    return CALLBACK_EXCEPTION


def callback_body(task: dict, stage: str) -> dict:
    if stage == "error":
        code = task["errorCode"]
        msg = ERRORS[code][0]
    else:
        code, msg = 200, STAGES[stage][0]
    return {"code": code, "msg": msg,
            "data": {"callbackType": stage, "task_id": task["taskId"], "data": tracks_at(task, stage)}}


def _urls_empty_yet(task: dict, now: float | None) -> bool:
    seconds = Scenario.from_dict(task["scenario"]).empty_urls_for
    done = task.get("completed_at")
    return bool(seconds) and task.get("stage") == "complete" and done is not None and now is not None \
        and now < done + seconds


def camel(track: dict) -> dict:
    return {_CAMEL.get(k, k): v for k, v in track.items()}


def record_info(task: dict, now: float | None = None) -> dict:
    """What polling the task says at `now` (the fake's clock)."""
    tracks = tracks_at(task, task["stage"])
    if tracks and _urls_empty_yet(task, now):  # scenario empty-urls: "output URLs that are empty right after SUCCESS"
        tracks = [dict(t, audio_url="", source_audio_url="") for t in tracks]
    return {
        "taskId": task["taskId"],
        "parentMusicId": "",
        "param": task["param"],
        "response": None if tracks is None else {
            "taskId": task["taskId"], "sunoData": [camel(t) for t in tracks]},
        "status": task["status"],
        "type": "UPLOAD_COVER",
        "operationType": "upload_cover",
        "errorCode": task["errorCode"],
        "errorMessage": task["errorMessage"],
    }
