"""A callback receiver for the benchmarks: answers every POST with 200 and records when each
callback arrived. Run as a process of its own:

    python bench/receiver.py PORT OUT.json

On SIGTERM it writes [[task_id, callbackType, arrival wall time], ...] to OUT.json and exits.
The answer is written in one piece: written in parts (as http.server's send_header does), it
meets the client's delayed ACK and every callback takes 40 ms.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
arrivals: list = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the fake's delivery pool uses it

    def do_POST(self):  # noqa: N802 (http.server's naming)
        at = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:  # recorded before it is answered: whoever saw the answer finds it in the file
            data = json.loads(body)["data"]
            arrivals.append((data["task_id"], data["callbackType"], at))
        except (ValueError, KeyError, TypeError):
            arrivals.append((None, None, at))
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except ConnectionError:  # the fake closed a pooled connection: nothing to record
            pass


def main(argv=None) -> int:
    port, out = (argv or sys.argv[1:])[:2]
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.daemon_threads = True

    def stop(*_):
        with open(out, "w") as f:
            json.dump(arrivals, f)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
