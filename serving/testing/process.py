"""Run `medserve serve` as a child process: used by the tests, benchmarks and load tests.

The server gets its own process session so that it, and every Ray process it starts, can be
stopped by process id even if a graceful shutdown hangs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.net import free_port
from serving.polling import poll_until

READY_PATH = "/v2/health/ready"


def memory_mib(pid: int) -> tuple[float, float]:
    """A process's resident set now and at its peak (VmRSS, VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics_port: int | None = None  # Ray's metrics export port (Prometheus text), if fixed
    ray_tmpdir: Path | None = None  # this server's private RAY_TMPDIR: its Ray session logs

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve_logs(self) -> list[Path]:
        """Ray Serve's log files of this server (controller, proxy, replicas: access lines and
        warnings); empty when its Ray temp dir is not known."""
        if self.ray_tmpdir is None:
            return []
        return sorted(self.ray_tmpdir.glob("ray/session_latest/logs/serve/*.log"))

    def session_processes(self) -> Iterator[tuple[int, str]]:
        """(pid, command line) of every process in the server's session: its Ray processes."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if os.getsid(pid) != self.pid:
                    continue
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ProcessLookupError):
                continue
            yield pid, cmdline.strip()

    def serve_processes(self) -> dict[int, str]:
        """pid -> title of the Serve proxy and every replica (gateway and models)."""
        return {pid: cmd for pid, cmd in self.session_processes()
                if cmd.startswith(("ray::ServeReplica:", "ray::ProxyActor"))}

    def replica_pids(self, deployment: str) -> list[int]:
        """PIDs of the Serve replica processes of one deployment, in whichever application
        (Ray titles them `ray::ServeReplica:<app>:<deployment>`, with `.method` appended while
        a task runs)."""
        out = []
        for pid, cmd in self.session_processes():
            app, _, rest = cmd.removeprefix("ray::ServeReplica:").partition(":")
            if cmd.startswith("ray::ServeReplica:") and app and \
                    (rest == deployment or rest.startswith(f"{deployment}.")):
                out.append(pid)
        return out

    def wait_ready(self, timeout_s: float = 420.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medserve exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(self.url + READY_PATH, timeout=5).status_code == 200
            return False

        try:
            poll_until(ready, timeout_s, every_s=0.5)
        except TimeoutError:
            raise RuntimeError(f"medserve not ready within {timeout_s:g} s; see {self.log}") \
                from None

    def stop(self, grace_s: float = 90.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        # Ray's helper processes share the server's session: end any that outlived it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_server(
    *extra_args: str, log: Path, cwd: Path | None = None, metrics: bool = False,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start `medserve serve` on a free port; `metrics` fixes a free metrics export port too;
    `env` adds variables (e.g. Ray's `RAY_metrics_report_interval_ms`)."""
    port = free_port()
    metrics_port = free_port() if metrics else None
    if metrics_port is not None:
        extra_args = (*extra_args, "--metrics-port", str(metrics_port))
    child_env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **(env or {})}
    # A short private temp dir: Ray keeps its session logs there, and its unix socket paths
    # must stay under the 107-character limit.
    ray_tmpdir = tempfile.mkdtemp(prefix="ms-", dir="/tmp")
    child_env["RAY_TMPDIR"] = ray_tmpdir
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--port", str(port), *extra_args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env, cwd=cwd,
            start_new_session=True,
        )
    return ServerProcess(proc, port, log, metrics_port, Path(ray_tmpdir))


@contextlib.contextmanager
def running_server(
    *extra_args: str, log: Path, cwd: Path | None = None, metrics: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    server = start_server(*extra_args, log=log, cwd=cwd, metrics=metrics, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
