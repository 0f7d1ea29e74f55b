"""`medserve pacs`: a local Orthanc PACS (Debian's, with DICOMweb) for trying study jobs with
`make serve`; see the README, "Hospital integration"."""

from __future__ import annotations

import signal
import threading
from io import BytesIO
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.support import console, fail


def pacs(
    port: Annotated[int, typer.Option(help="Orthanc's HTTP port.")] = 8042,
    data: Annotated[Path, typer.Option("--dir", help="Orthanc's storage folder.")] = Path(
        "pacs-data"),
    load: Annotated[Path | None, typer.Option(
        help="Store these studies first: a folder of .dcm and .zip files (`medserve samples`)."
    )] = None,
) -> None:
    """Run a local Orthanc PACS until Ctrl-C, and print the `pacs:` settings for it."""
    import zipfile

    import requests
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    from serving.testing.orthanc import start_orthanc

    try:
        orthanc = start_orthanc(data.resolve(), port=port)
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    try:
        if load is not None:
            parts = [p.read_bytes() for p in sorted(load.rglob("*.dcm"))]
            for archive in sorted(load.rglob("*.zip")):
                with zipfile.ZipFile(archive) as z:
                    parts += [z.read(n) for n in z.namelist() if not n.endswith("/")]
            session = requests.Session()
            session.auth = orthanc.auth
            datasets = [dcmread(BytesIO(p)) for p in parts]
            DICOMwebClient(orthanc.dicomweb_url, session=session).store_instances(datasets)
            for study in sorted({str(ds.StudyInstanceUID) for ds in datasets}):
                console.print(f"stored study {study}")
        user, password = orthanc.auth
        console.print(
            f"Orthanc is up: {orthanc.url}/app/explorer.html (user {user}). In medserve.yaml:\n"
            f"pacs:\n  url: {orthanc.dicomweb_url}\n  username_env: MEDSERVE_PACS_USER\n"
            f"  password_env: MEDSERVE_PACS_PASSWORD\n"
            f"and before `make serve`: export MEDSERVE_PACS_USER={user} "
            f"MEDSERVE_PACS_PASSWORD={password}\nready; Ctrl-C stops it", soft_wrap=True,
            highlight=False)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5) and orthanc.proc.poll() is None:
                pass
        except KeyboardInterrupt:
            pass
    finally:
        orthanc.stop()
