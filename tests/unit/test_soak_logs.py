"""A failed soak shows what Serve logged meanwhile: warnings, errors and the proxy's non-2xx
answers, written after the run started, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtests.run.soak import log_sizes, served_trouble
from serving.testing.process import ServerProcess

ACCESS = "INFO 2026-12-05 04:49:02,574 proxy 192.0.2.2 76cb6f71 -- POST /v1/imaging/{{model}}/predict {} 8.4ms\n"  # noqa: E501


def test_only_trouble_logged_after_the_start_is_shown(tmp_path: Path) -> None:
    serve = tmp_path / "ray" / "session_latest" / "logs" / "serve"
    serve.mkdir(parents=True)
    proxy, replica = serve / "proxy_192.0.2.2.log", serve / "replica_cxr-triage-v1_abc.log"
    proxy.write_text(ACCESS.format(503))  # before the run: not this run's
    replica.write_text("WARNING 2026-12-05 04:40:00,000 cxr-triage-v1 abc -- old\n")
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    server = ServerProcess(proc, 1, tmp_path / "server.log", ray_tmpdir=tmp_path)
    since = log_sizes(server)
    with proxy.open("a") as log:
        log.write(ACCESS.format(200) + ACCESS.format(504) + ACCESS.format(201))
    with replica.open("a") as log:
        log.write("INFO 2026-12-05 04:50:00,000 cxr-triage-v1 abc -- POST /x 500 1.0ms\n"
                  "ERROR 2026-12-05 04:50:01,000 cxr-triage-v1 abc -- Request failed.\n")
    shown = served_trouble(server, since)
    assert len(shown) == 2, shown
    assert shown[0].startswith("proxy_192.0.2.2.log: INFO") and " 504 " in shown[0]
    assert shown[1].endswith("-- Request failed.") and shown[1].startswith("replica_")
    assert served_trouble(server, log_sizes(server)) == []
    assert served_trouble(ServerProcess(proc, 1, tmp_path / "server.log"), since) == []
