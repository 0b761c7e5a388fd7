"""Running the app: one process (threaded) by default."""

from __future__ import annotations

import logging
import signal
import sys

from .app import create_app
from .config import Config


def run(cfg: Config, workers: int = 1, scenario_file: str | None = None) -> int:
    from werkzeug.serving import make_server

    app = create_app(cfg)
    if scenario_file:
        from .scenario_file import apply_file

        apply_file(app.extensions["kie_mock"], scenario_file)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server(cfg.host, cfg.port, app, threaded=True)
    keys = ", ".join(cfg.api_keys)
    print(f"kie-mock listening on http://{cfg.host}:{server.port}  (keys: {keys}; transport: {cfg.transport}; "
          f"clock: {cfg.clock}; store: {cfg.store})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["kie_mock"].scheduler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(Config()))
