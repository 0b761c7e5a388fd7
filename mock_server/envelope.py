"""The `{code, msg, data}` envelope and the error transport.

Real transport (default): HTTP 200 with the code in the body, except rate limiting,
which the provider says is "rejected with HTTP 429" (shared/API_NOTES.md).
Status transport: the HTTP status mirrors the code (455 and 451 included).
"""

from __future__ import annotations

import orjson
from flask import Response

TRANSPORTS = ("real", "status")


def http_status(code: int, transport: str) -> int:
    if transport == "status" or code == 429:
        return code
    return 200


def respond(code: int, msg: str, data=None, *, transport: str = "real", status: int | None = None,
            headers: dict | None = None) -> Response:
    body = orjson.dumps({"code": code, "msg": msg, "data": data})
    return Response(body, status=status or http_status(code, transport), headers=headers,
                    mimetype="application/json")


def success(data) -> Response:
    return Response(orjson.dumps({"code": 200, "msg": "success", "data": data}), status=200,
                    mimetype="application/json")
