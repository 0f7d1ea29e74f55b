"""The embedded Triton of `medserve serve`: built, started, watched and stopped with Medserve.

When a served model's backend is `triton` and no `--triton-url` is given, the repository is
built for Triton's Python backend into a temporary folder and one `tritonserver` serves it on
free loopback ports. A watcher restarts it on the same ports if it dies, so the replicas'
gRPC channels reconnect by themselves; meanwhile they answer 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from serving.repository.store import Repository
from serving.triton.build import build_repository, triton_models
from serving.triton.server import TritonServer

log = logging.getLogger(__name__)
WATCH_PERIOD_S = 1.0


def _watch(server: TritonServer, stop: threading.Event) -> None:
    while not stop.wait(WATCH_PERIOD_S):
        if server.running():
            continue
        log.warning("tritonserver (pid %s) exited with %s; restarting", server.pid,
                    server.proc.returncode if server.proc else None)
        try:
            server.start()
            server.wait_ready(cancel=stop)
        except Exception as exc:  # keep watching: the next period tries again
            log.error("tritonserver restart failed: %s", exc)
        else:
            print(f"Triton restarted on {server.grpc_url} (pid {server.pid})", flush=True)


@contextlib.contextmanager
def triton_endpoint(repo: Repository, triton_url: str | None) -> Iterator[str | None]:
    """Yield the Triton gRPC address the replicas use: `triton_url` if given, an embedded
    server's if some model needs one, else None."""
    if triton_url or not triton_models(repo):
        yield triton_url
        return
    workdir = Path(tempfile.mkdtemp(prefix="medserve-triton-repo-"))
    server: TritonServer | None = None
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        build_repository(repo, workdir, "python")
        server = TritonServer(workdir)  # its log lines join Medserve's
        server.start()
        server.wait_ready()
        print(f"Triton ready on {server.grpc_url} (pid {server.pid})", flush=True)
        watcher = threading.Thread(target=_watch, args=(server, stop), daemon=True,
                                   name="triton-watch")
        watcher.start()
        yield server.grpc_url
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        if server is not None:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
