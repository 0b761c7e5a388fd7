"""The generated files: audio (with HTTP Range) and cover images, served by the fake itself.

URLs (made in lifecycle._track): /files/<taskId>/<trackId>.mp3, .../source.mp3,
.../stream, .../source-stream, /files/<taskId>/<trackId>.jpeg, .../source.jpeg.
Files vanish with their task after the retention period (15 days): 404.
"""

from __future__ import annotations

import re
import zlib

from flask import Blueprint, Response, current_app, request

from . import lifecycle, media
from .envelope import respond
from .scenarios import Scenario

bp = Blueprint("files", __name__)

_NAME = re.compile(r"^(?P<track>[0-9a-f-]{36})(?:\.(?P<ext>mp3|jpeg)|/(?P<variant>source\.mp3|stream|source-stream|source\.jpeg))$")


def _not_found(what: str) -> Response:
    return respond(404, f"Not Found: {what}", status=404)


def _ranged(data: bytes, mimetype: str, etag: str) -> Response:
    """The whole file, or the single byte range asked for (206), or 416; 304 to a client that
    has it (If-None-Match). A file never changes under its URL: `etag` (strong) names it, so a
    download can be resumed safely (If-Range)."""
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=86400", "ETag": etag}
    if _matches(request.headers.get("If-None-Match"), etag):
        return Response(b"", 304, headers)
    rng = request.range  # None when absent or unparseable: RFC 9110 says serve the whole file
    if_range = request.headers.get("If-Range")
    if rng is not None and rng.units == "bytes" and len(rng.ranges) == 1 and (if_range is None or if_range == etag):
        start, end = rng.ranges[0]
        if end is None and start < 0:  # a suffix: the last -start bytes, the whole file if it is shorter
            start = max(size + start, 0)
        stop = size if end is None else min(end, size)
        if start >= size:
            return Response(b"", 416, {**headers, "Content-Range": f"bytes */{size}"}, mimetype=mimetype)
        return Response(data[start:stop], 206, {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}"},
                        mimetype=mimetype)
    return Response(data, 200, headers, mimetype=mimetype)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match (a weak comparison, RFC 9110 13.1.2): "*" or a list holding the tag."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@bp.route("/files/<task_id>/<path:name>", methods=["GET", "HEAD"])
def serve(task_id: str, name: str):
    """A track's audio or cover image."""
    svc = current_app.extensions["kie_mock"]
    match = _NAME.match(name)
    svc.sync_clock()
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
    return _ranged(data, mimetype, f'"{task_id}-{zlib.crc32(name.encode()):08x}-{len(data):x}"')
