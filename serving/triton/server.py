"""Run the `tritonserver` binary that the `nvidia-pytriton` wheel ships.

What pytriton does to launch it, without pytriton's Python layer: the binary and its bundled
libraries come from the wheel; the Python backend's stub for this interpreter's version is
copied beside the backend library (Triton looks for it there); the stub embeds this
interpreter's `libpython`, so its directory goes on `LD_LIBRARY_PATH`; and this environment's
`bin` goes first on `PATH`, because the embedded interpreter finds its prefix, and with it
this virtualenv's site-packages (`serving`, torch), by searching `PATH` for `python3`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from serving.errors import ModelLoadError
from serving.net import free_port
from serving.polling import poll_until

HOST = "127.0.0.1"
# Python-backend tensors travel through shared memory; one region per server, grown as needed.
SHM_DEFAULT_BYTES = 16 << 20
SHM_GROWTH_BYTES = 16 << 20


@dataclass(frozen=True)
class Distribution:
    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def locate() -> Distribution:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded Triton needs the nvidia-pytriton package (Linux "
                             "x86-64): pip install 'medserve[triton]', or pass --triton-url")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = Distribution(
        binary=dist / "bin" / "tritonserver",
        python_backend=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
    )
    for path in (found.binary, found.python_backend, found.stub):
        if not path.exists():
            raise ModelLoadError(f"nvidia-pytriton lacks {path.name} for Python {version}")
    return found


def server_env(dist: Distribution) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [libdir, str(dist.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    # Not resolved: a virtualenv's python is a symlink to the base interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # the model sets its own team size in its thread
    return env


class TritonServer:
    """One `tritonserver` on loopback ports over a model repository; restartable on the same
    ports, so clients holding its address reconnect after a crash."""

    def __init__(self, model_repository: Path, log: IO[bytes] | int | None = None) -> None:
        """`log`: where Triton's output goes (a file, subprocess.DEVNULL; None: inherited)."""
        self.dist = locate()
        self.model_repository = Path(model_repository).resolve()
        self.log = log
        self.http_port, self.grpc_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._runtime = Path(tempfile.mkdtemp(prefix="medserve-triton-"))
        backend = self._runtime / "backends" / "python"
        shutil.copytree(self.dist.python_backend, backend,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.dist.stub, backend / "triton_python_backend_stub")
        self._shm_prefix = ""

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self._runtime / 'backends'}",
            f"--http-address={HOST}", f"--http-port={self.http_port}",
            f"--grpc-address={HOST}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--pinned-memory-pool-byte-size=0",  # CPU-only: no CUDA host staging buffers
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
            "--disable-auto-complete-config",
            # Medserve stops first, so nothing is in flight; the Python stub takes ~5 s to
            # unload its model, which need not be waited for.
            "--exit-timeout-secs=2",
            "--log-info=false",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]

    def start(self) -> None:
        if self.running():
            return
        self._cleanup_shm()
        self._shm_prefix = f"medserve-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Same process group as the caller: whoever stops that group (a test's server
        # fixture, a terminal's Ctrl-C) stops Triton and its stub processes too.
        self.proc = subprocess.Popen(
            self.command(), stdout=self.log, stderr=subprocess.STDOUT, env=server_env(self.dist)
        )

    def wait_ready(
        self, timeout_s: float = 300.0, cancel: threading.Event | None = None
    ) -> None:
        url = f"http://{self.http_url}/v2/health/ready"

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise ModelLoadError(f"tritonserver exited with {code} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url, timeout=2).status_code == 200
            return False

        try:
            poll_until(ready, timeout_s, every_s=0.25, cancel=cancel)
        except TimeoutError:
            if cancel is not None and cancel.is_set():
                raise ModelLoadError("tritonserver start cancelled") from None
            raise ModelLoadError(f"tritonserver not ready within {timeout_s:g} s") from None

    def stop(self, grace_s: float = 15.0) -> None:
        stubs: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            stubs = _children(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Python-backend stubs outlive a server that exits before they unload (seconds later
        # they notice); nothing is in flight any more, so end them now.
        for pid in stubs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._cleanup_shm()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._runtime, ignore_errors=True)

    def _cleanup_shm(self) -> None:
        # A killed server leaves its Python-backend regions behind in /dev/shm.
        if self._shm_prefix:
            for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc): the server's Python-backend stubs."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (field 2) may hold spaces; the parent pid follows it.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found
