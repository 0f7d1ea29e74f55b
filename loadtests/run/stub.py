"""A stand-in for Medserve's predict routes: one FIFO server with a fixed service time and
an optional scripted stall. No CPU work, so it is immune to a noisy machine: the tests use
it to show coordinated-omission correction, and benchmarks/capacity.py to check the
planner's method apart from CPU noise.

    python -m loadtests.run.stub --port P [--service-s 0.01] [--stall-at 4 --stall-s 2]

Requests are served one at a time in arrival order (one replica, no batching), each taking
`--service-s`; from `--stall-at` seconds after the first request the server stops for
`--stall-s` (a GC pause, a replica restart) while requests keep queueing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from serving.net import free_port

BODY = json.dumps({"model": "stub", "findings": []}).encode()


class FifoServer:
    def __init__(self, service_s: float, stall_at: float, stall_s: float) -> None:
        self.service_s, self.stall_at, self.stall_s = service_s, stall_at, stall_s
        self.jobs: queue.Queue[threading.Event] = queue.Queue()
        self.first: float | None = None
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            done = self.jobs.get()
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            stall_end = self.first + self.stall_at + self.stall_s
            if self.stall_s > 0 and self.first + self.stall_at <= now < stall_end:
                time.sleep(stall_end - now)  # the scripted stall
            time.sleep(self.service_s)  # the scripted service time
            done.set()

    def serve(self) -> None:
        done = threading.Event()
        self.jobs.put(done)
        done.wait()


def handler(server: FifoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffer the reply and send it in one write: headers and body as two small writes
        # would meet Nagle and delayed ACKs and add ~40 ms that no real server adds.
        wbufsize = 1 << 16

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            server.serve()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def running_stub(service_s: float, stall_at: float = 0.0, stall_s: float = 0.0,
                 ) -> Iterator[str]:
    """Start the stub in its own process on a free port; yield its URL; stop it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.run.stub", "--port", str(port),
                             "--service-s", str(service_s), "--stall-at", str(stall_at),
                             "--stall-s", str(stall_s)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # poll until it accepts connections
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=0.5)
                break
        else:
            raise RuntimeError("stub server did not start")
        yield url
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--service-s", type=float, default=0.01)
    parser.add_argument("--stall-at", type=float, default=0.0)
    parser.add_argument("--stall-s", type=float, default=0.0)
    a = parser.parse_args()
    fifo = FifoServer(a.service_s, a.stall_at, a.stall_s)
    httpd = ThreadingHTTPServer(("127.0.0.1", a.port), handler(fifo))
    httpd.daemon_threads = True
    httpd.serve_forever()


if __name__ == "__main__":
    main()
