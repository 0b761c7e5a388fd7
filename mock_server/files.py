"""The generated files: audio (with HTTP Range) and cover images, served by the fake itself.

URLs (made in lifecycle._track): /files/<taskId>/<trackId>.mp3, .../source.mp3,
.../stream, .../source-stream, /files/<taskId>/<trackId>.jpeg, .../source.jpeg.
Files vanish with their task after the retention period (15 days): 404.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from . import lifecycle, media
from .envelope import respond
from .scenarios import Scenario

bp = Blueprint("files", __name__)

_NAME = re.compile(r"^(?P<track>[0-9a-f-]{36})(?:\.(?P<ext>mp3|jpeg)|/(?P<variant>source\.mp3|stream|source-stream|source\.jpeg))$")


def _not_found(what: str) -> Response:
    return respond(404, f"Not Found: {what}", status=404)


def _ranged(data: bytes, mimetype: str) -> Response:
    """The whole file, or the single byte range asked for (206), or 416."""
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=86400"}
    rng = request.range  # None when absent or unparseable: RFC 9110 says serve the whole file
    if rng is not None and rng.units == "bytes" and len(rng.ranges) == 1:
        bounds = rng.range_for_length(size)
        if bounds is None:
            return Response(b"", 416, {**headers, "Content-Range": f"bytes */{size}"}, mimetype=mimetype)
        start, stop = bounds
        return Response(data[start:stop], 206, {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}"},
                        mimetype=mimetype)
    return Response(data, 200, headers, mimetype=mimetype)


@bp.route("/files/<task_id>/<path:name>", methods=["GET", "HEAD"])
def serve(task_id: str, name: str):
    """A track's audio or cover image."""
    svc = current_app.extensions["kie_mock"]
    match = _NAME.match(name)
    task = svc.live_task(task_id) if match else None
    if task is None:
        return _not_found(f"/files/{task_id}/{name}")
    track = lifecycle.track(task, match["track"])
    if track is None:
        return _not_found(f"/files/{task_id}/{name}")
    image = match["ext"] == "jpeg" or match["variant"] == "source.jpeg"
    mimetype = media.JPEG_MIME if image else media.MP3_MIME
    empty_for = Scenario.from_dict(task["scenario"]).empty_files_for
    if empty_for and (task.get("completed_at") is None or svc.clock.now() < task["completed_at"] + empty_for):
        return Response(b"", 200, {"Accept-Ranges": "bytes"}, mimetype=mimetype)  # "0 bytes right after SUCCESS"
    data = media.jpeg_bytes() if image else media.mp3_bytes(track["duration"])
    return _ranged(data, mimetype)
