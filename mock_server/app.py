"""create_app(config): the only wiring point."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from . import api, control, files
from .config import Config
from .envelope import respond
from .service import Service
from .spec import check_uri_format_available


def create_app(config: Config | None = None, *, store=None, clock=None, deliver=None,
               source_checker=None, start_scheduler: bool = True, fast_path: bool = True,
               claims: bool = True) -> Flask:
    """The fake as a Flask app. `claims=False`: this process never works due jobs (stages,
    callbacks); a scheduler process of its own does (server.py)."""
    cfg = config or Config()
    check_uri_format_available()
    if source_checker is None and cfg.source_check:
        from .source import SourceChecker

        source_checker = SourceChecker(cfg)
    service = Service(cfg, store=store, clock=clock, deliver=deliver, source_checker=source_checker,
                      claims=claims)
    app = Flask("kie_mock")
    # "//" in a path is not merged into "/" by a redirect: /_mock/accounts/%2Fabc (a key "/abc")
    # was redirected to the account "abc", which a client that follows redirects then changed.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes + 1024
    app.json.sort_keys = False
    app.extensions["kie_mock"] = service
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(control.bp)

    flask_options = app.make_default_options_response

    def options_envelope():
        # Flask's automatic OPTIONS answer is an empty text/html body: keep its Allow, answer the envelope.
        allow = flask_options().headers.get("Allow", "")
        return respond(200, "success", {"allow": [m.strip() for m in allow.split(",") if m.strip()]},
                       headers={"Allow": allow})

    app.make_default_options_response = options_envelope

    def api_refusal(code: int, msg: str, **how):
        """An answer of the faked API that its handlers never saw (an unknown path under /api/, a
        wrong method, a body the HTTP layer refused): journaled like theirs (GET /_mock/requests)."""
        resp = respond(code, msg, **how)
        api.journal(service, request.method, request.path, None, resp.status_code, code, None, msg)
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # Routing and protocol errors still answer in the envelope, with the HTTP status kept.
        mirrored = request.path.startswith(control.PREFIX + "/")  # the control API's statuses mirror the code
        answer = respond if mirrored or not request.path.startswith(api.PREFIX) else api_refusal
        if exc.code == 404:
            return answer(404, f"Not Found: no endpoint {request.method} {request.path}", status=404)
        if exc.code == 405:
            # (HEAD is served wherever GET is: RFC 9110 lists it; OPTIONS answers everywhere)
            allowed = ", ".join(sorted(m for m in (exc.valid_methods or []) if m != "OPTIONS"))
            return answer(405 if mirrored else 404,
                          f"Method {request.method} is not allowed on {request.path} (allowed: {allowed})",
                          status=405, headers={"Allow": allowed})
        if mirrored:  # the control API: 400, as its own refusals
            what = f"request body too large: the limit is {cfg.max_body_bytes} bytes" if exc.code == 413 \
                else f"bad request: {exc.description}"
            return respond(400, what, transport="status")
        if exc.code == 413:
            return answer(422, f"request body too large: the limit is {cfg.max_body_bytes} bytes",
                          transport=cfg.transport)
        return answer(422, f"bad request: {exc.description}", transport=cfg.transport)

    @app.errorhandler(Exception)
    def crash(exc: Exception):  # a bug of the fake, or a store it cannot use: still an envelope, and in the log
        answer = api_refusal if request.path.startswith(api.PREFIX) else respond
        return answer(500, api.internal_error(exc), status=500)

    if fast_path:  # the API endpoints straight from WSGI (api.py); the rest through Flask
        app.wsgi_app = api.FastPath(service, app.wsgi_app)

    if start_scheduler:
        service.scheduler.start()
    return app
