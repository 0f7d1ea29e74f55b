"""A real Orthanc PACS (Debian's `orthanc` with its DICOMweb plugin) for tests and demos.

Started with a generated configuration on free ports, storing into a temporary folder, with
HTTP basic auth on, and stopped by its process id. `medserve pacs` runs one for a quick start
with `make serve`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.net import free_port
from serving.polling import poll_until

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "medserve", "medserve-test-only"


def orthanc_binary() -> str | None:
    """Orthanc's path when it and its DICOMweb plugin are installed."""
    path = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    return path if path and PLUGIN.exists() else None


@dataclass
class OrthancProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_orthanc(workdir: Path, port: int | None = None) -> OrthancProcess:
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError("Orthanc with its DICOMweb plugin is not installed: "
                                "apt-get install orthanc orthanc-dicomweb (as root)")
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = {
        "Name": "medserve-test-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(config_path)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    orthanc = OrthancProcess(proc, port, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{orthanc.dicomweb_url}/studies", auth=orthanc.auth, timeout=2)
            return r.status_code in (200, 204)
        return False

    try:
        poll_until(ready, 30.0, every_s=0.2)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc


@contextlib.contextmanager
def running_orthanc(workdir: Path) -> Iterator[OrthancProcess]:
    orthanc = start_orthanc(workdir)
    try:
        yield orthanc
    finally:
        orthanc.stop()
