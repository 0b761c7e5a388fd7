"""What the user asked to go wrong, from three places, consumed by the HTTP layer:

1. a request header in the style of Prism: `Prefer: code=402`, `Prefer: scenario=fail-501`
   (several: `Prefer: code=500, latency=2`; a scenario's parameter rides along:
   `Prefer: scenario=delayed-callbacks, delay=5`; a forced code's transport too:
   `Prefer: code=500, transport=status` is an HTTP 500, whatever the server's transport);
2. faults armed through the control API or a scenario file: "the next N requests of this
   key answer CODE" (kind "code"; with a `path`, only requests to that endpoint: kind
   "code@PATH") or "the next N tasks of this key play SCENARIO" (kind "scenario");
3. shared settings: maintenance on/off or a window, response latency, default scenario.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .envelope import TRANSPORTS
from .scenarios import Scenario

# The codes the endpoint page documents for errors; Prefer: code= accepts these.
ERROR_CODES = (401, 402, 404, 409, 422, 429, 451, 455, 500)
MESSAGES = {
    401: "You do not have access permissions",
    402: "Insufficient credits: your account does not have enough credits to perform this operation",
    404: "Not Found",
    409: "Conflict: WAV record already exists",
    422: "Validation Error: the request parameters failed validation checks",
    429: "Rate limited: request limit has been exceeded for this resource",
    451: "Failed to fetch the image. Kindly verify any access limits set by you or your service provider.",
    455: "Service Unavailable: the system is currently undergoing maintenance",
    500: "Internal Error: an unexpected error occurred while processing the request",
}


# The faked API's endpoints: a forced code can be armed for one of them (its `path`).
API_PATHS = ("/api/v1/generate/upload-cover", "/api/v1/generate/record-info", "/api/v1/chat/credit")


def code_kind(path: str | None = None) -> str:
    """The store's kind of a forced-code fault: for every endpoint, or for the one at `path`."""
    return "code@" + path if path else "code"


SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{0,9})?|\.[0-9]{1,9}")  # as written in a header: 2, 0.5, .5, 30.


class PreferError(ValueError):
    """A Prefer header the fake cannot honour (answered as 422, saying why)."""


@dataclass(frozen=True)
class Prefer:
    code: int | None = None
    scenario: Scenario | None = None
    latency: float | None = None
    transport: str | None = None  # of the forced code (None: the server's)

    @classmethod
    def parse(cls, header: str | None) -> "Prefer":
        if not header:
            return cls()
        code = scenario = latency = transport = None
        params: dict = {}
        # "code=409, transport=status" (preferences) or "code=409; transport=status" (RFC 7240's
        # parameters of one preference): the same here
        for part in re.split(r"[,;]", header):
            name, _, value = part.strip().partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "code":
                if not (value.isascii() and value.isdigit() and len(value) <= 3) or int(value) not in ERROR_CODES:
                    raise PreferError(f"Prefer: code must be one of {', '.join(map(str, ERROR_CODES))} (got {value!r})")
                code = int(value)
            elif name == "transport":
                if value not in TRANSPORTS:
                    raise PreferError(f"Prefer: transport must be one of {', '.join(TRANSPORTS)} (got {value!r})")
                transport = value
            elif name == "scenario":
                scenario = value
            elif name in ("delay", "seconds"):  # the scenario's parameter: scenario=empty-files, seconds=5
                if not SECONDS.fullmatch(value):
                    raise PreferError(f"Prefer: {name} must be a number of seconds (got {value!r})")
                params[name] = float(value)
            elif name == "latency":
                if not SECONDS.fullmatch(value):
                    raise PreferError(f"Prefer: latency must be seconds, e.g. 2 or 0.5 (got {value!r})")
                latency = float(value)
                if not 0 <= latency <= 60:
                    raise PreferError("Prefer: latency must be from 0 to 60 seconds")
            # other preferences (e.g. Prism's example=, dynamic=) are ignored, as RFC 7240 says
        if transport is not None and code is None:
            raise PreferError("Prefer: transport is how a forced code is answered: add code=N")
        if params and scenario is None:
            raise PreferError(f"Prefer: {', '.join(params)} is a parameter of a scenario: "
                              f"add scenario=delayed-callbacks (delay) or scenario=empty-files or empty-urls (seconds)")
        if scenario is not None:
            try:
                scenario = Scenario.parse(scenario, params)
            except ValueError as exc:
                raise PreferError(f"Prefer: {exc}") from None
        return cls(code, scenario, latency, transport)


def maintenance_on(settings: dict, now: float) -> bool:
    if settings.get("maintenance"):
        return True
    window = settings.get("maintenance_window")
    return bool(window) and window[0] <= now < window[1]


def latency_for(settings: dict, prefer: Prefer) -> float:
    if prefer.latency is not None:
        return prefer.latency
    lat = settings.get("latency")
    if not lat:
        return 0.0
    lo, hi = float(lat.get("min", 0)), float(lat.get("max", lat.get("min", 0)))
    return lo if hi <= lo else random.uniform(lo, hi)
