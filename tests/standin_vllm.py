"""A stand-in for a vLLM server process: parses the flags the vllm actuator manages and serves `/health`
(200 once "loaded") and `/flags` (what it was started with). With `--max-seqs-limit M` a larger
`--max-num-seqs` never becomes healthy (as vLLM failing to fit its KV cache). It exits by itself after
`--lifetime-s`, so a test can never leave it running.

    python tests/standin_vllm.py --port P --max-num-seqs N [--load-s S] [--max-seqs-limit M]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-num-seqs", type=int, required=True)
    p.add_argument("--load-s", type=float, default=0.3)
    p.add_argument("--max-seqs-limit", type=int, default=1 << 30)
    p.add_argument("--lifetime-s", type=float, default=120.0)
    args = p.parse_args()
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            loaded = time.monotonic() - started >= args.load_s and args.max_num_seqs <= args.max_seqs_limit
            if self.path == "/health":
                code, body = (200, b"") if loaded else (503, b"loading")
            elif self.path == "/flags":
                code, body = 200, json.dumps({"max_num_seqs": args.max_num_seqs, "pid": os.getpid()}).encode()
            else:
                code, body = 404, b""
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    threading.Timer(args.lifetime_s, server.shutdown).start()
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
