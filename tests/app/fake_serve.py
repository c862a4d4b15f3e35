"""A stand-in for `cellar serve` keeping its contract (engine/server.py): errors as one 'error:' line
on stderr before listening; then one JSON line {"event": "listening", "url": ...} on stdout; GET
/health with slots and queue; SIGTERM stops it. It records its arguments in $FAKE_SERVE_ARGS and
reads the slots it reports busy and the queue from $FAKE_SERVE_STATE (JSON), so tests can see
requests in flight without a model."""
from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("command")
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--api-key", default=None)
    args, _rest = ap.parse_known_args()
    Path(os.environ["FAKE_SERVE_ARGS"]).write_text(json.dumps({"argv": sys.argv[1:], "pid": os.getpid()}))
    if os.environ.get("FAKE_SERVE_FAIL"):
        sys.stderr.write(f"error: cannot listen on {args.host}:{args.port} (Address already in use); "
                         "pick another --port or --host\n")
        return 2
    state_file = Path(os.environ["FAKE_SERVE_STATE"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/health":
                self.send_error(404)
                return
            st = json.loads(state_file.read_text()) if state_file.exists() else {}
            busy = int(st.get("busy", 0))
            body = json.dumps({"status": "ok", "model": Path(args.model).stem, "queue": int(st.get("queue", 0)),
                               "slots": [{"id": i, "state": "busy" if i < busy else "idle"}
                                         for i in range(args.parallel)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1" if args.host == "0.0.0.0" else args.host, args.port), Handler)
    host, port = httpd.server_address[:2]
    print(json.dumps({"event": "listening", "url": f"http://{args.host}:{port}", "model": Path(args.model).stem,
                      "parallel": args.parallel}), flush=True)
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
