"""Instances sent to Medserve (STOW-RS) wait here for their job, beside the job store; so do
the results of such jobs when the cluster has no PACS to store them in.

<spool>/<job id>/inputs/<n>.dcm  the received instances, removed once the job has run
<spool>/<job id>/results/<SOP Instance UID>.dcm  its DICOM SRs (no PACS only)
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from serving.dicomweb.pacs import SeriesInfo
from serving.errors import ModelNotFound

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, job_id: str, kind: str) -> Path:
        return self.root / job_id / kind

    def save_inputs(self, job_id: str, parts: list[bytes]) -> None:
        folder = self.folder(job_id, "inputs")
        folder.mkdir(parents=True, exist_ok=True)
        for index, data in enumerate(parts):
            (folder / f"{index:06d}.dcm").write_bytes(data)

    def drop_inputs(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id, "inputs"), ignore_errors=True)

    def save_result(self, job_id: str, sop_instance_uid: str, data: bytes) -> None:
        folder = self.folder(job_id, "results")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sop_instance_uid}.dcm").write_bytes(data)

    def result(self, job_id: str, sop_instance_uid: str) -> bytes:
        path = self.folder(job_id, "results") / f"{sop_instance_uid}.dcm"
        if not _UID.fullmatch(sop_instance_uid) or not path.is_file():
            raise ModelNotFound("no such result")
        return path.read_bytes()


class SpooledStudy:
    """A received study as a job reads it: its series, then each series' instances."""

    def __init__(self, spool: Spool, job_id: str) -> None:
        self.folder = spool.folder(job_id, "inputs")

    def _by_series(self) -> dict[str, list[Path]]:
        files: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(self.folder.glob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            files[str(ds.SeriesInstanceUID)].append(path)
        return files

    def series(self) -> list[SeriesInfo]:
        out = []
        for uid, paths in self._by_series().items():
            ds = dcmread(paths[0], stop_before_pixels=True)
            out.append(SeriesInfo(uid, str(ds.get("Modality", "") or "").upper(),
                                  str(ds.get("BodyPartExamined", "") or "").upper(),
                                  len(paths)))
        return out

    def instances(self, series: SeriesInfo) -> list[bytes]:
        return [p.read_bytes() for p in self._by_series()[series.uid]]


class SpoolResults:
    """Where a received study's results go when there is no PACS."""

    def __init__(self, spool: Spool, job_id: str) -> None:
        self.spool, self.job_id = spool, job_id

    def store(self, instance: bytes) -> None:
        uid = str(dcmread(BytesIO(instance), stop_before_pixels=True).SOPInstanceUID)
        self.spool.save_result(self.job_id, uid, instance)
