"""The PACS as Medserve uses it: find a study's series (QIDO-RS), fetch a series' instances
(WADO-RS) and store results (STOW-RS), through dicomweb-client.

Every call has a deadline (`pacs.timeout_s`) and is tried again with exponential back-off on
what a PACS says when it is busy or away (connection refused or reset, timeout, 429, 502,
503, 504); past `pacs.attempts`, it raises `Unavailable` (retryable, Retry-After). A study the
PACS does not have is `StudyNotFound`. No message quotes a UID or anything the PACS sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from serving.errors import InvalidInput, ModelNotFound, PayloadTooLarge, Unavailable
from serving.schema.cluster import Limits, PacsConfig

# dicomweb-client logs request URLs (study and series UIDs) at debug level.
_log = logging.getLogger("dicomweb_client")
_log.propagate = False
_log.addHandler(logging.NullHandler())

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
T = TypeVar("T")

# DICOM JSON tags (PS3.18 F.2) of the QIDO-RS series attributes used here.
SERIES_UID, MODALITY, BODY_PART, INSTANCES = "0020000E", "00080060", "00180015", "00201209"


class StudyNotFound(ModelNotFound):
    """404: the PACS has no study with that UID (the message does not repeat the UID)."""


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    modality: str
    body_part: str
    instances: int


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code in RETRYABLE_STATUS
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class Pacs:
    def __init__(self, config: PacsConfig, limits: Limits) -> None:
        self.config = config
        self.limits = limits
        session = requests.Session()
        if config.username_env or config.password_env:
            session.auth = (os.environ.get(config.username_env or "", ""),
                            os.environ.get(config.password_env or "", ""))
        self.client = DICOMwebClient(config.url, session=session, timeout=config.timeout_s)
        self.client.set_http_retry_params(retry=False)  # one retry policy: ours, below

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_exponential(multiplier=self.config.backoff_s, max=30),
            reraise=True,
        )
        try:
            return retrying(fn)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404:
                raise StudyNotFound("the PACS has no such study or series") from None
            reason = f"the PACS answered {status}"
        except (requests.ConnectionError, requests.Timeout):
            reason = "the PACS is unreachable or too slow"
        except ValueError:  # a body dicomweb-client could not decode
            reason = "the PACS sent an unreadable reply"
        raise Unavailable(f"PACS {what} failed: {reason}",
                          retry_after_s=self.config.backoff_s * 4)

    def series(self, study_uid: str) -> list[SeriesInfo]:
        """The study's series (QIDO-RS); StudyNotFound when it has none."""
        found = self._call("search", lambda: self.client.search_for_series(
            study_uid, fields=["Modality", "BodyPartExamined",
                               "NumberOfSeriesRelatedInstances"]))
        series = [SeriesInfo(_value(s, SERIES_UID), _value(s, MODALITY).upper(),
                             _value(s, BODY_PART).upper(), int(_value(s, INSTANCES) or 0))
                  for s in found]
        if not series:
            raise StudyNotFound("the PACS has no such study")
        return series

    def instances(self, study_uid: str, series: SeriesInfo) -> list[bytes]:
        """A series' instances as Part 10 bytes (WADO-RS), bounded like an upload of one."""
        if series.instances > self.limits.max_series_instances:
            raise PayloadTooLarge(f"series has more than {self.limits.max_series_instances} "
                                  "instances")

        def fetch() -> list[bytes]:
            parts: list[bytes] = []
            total = 0
            # In the transfer syntax the PACS holds (`*`): Medserve decodes JPEG 2000, JPEG-LS
            # and the rest itself, and a PACS that cannot transcode would refuse anything else.
            for ds in self.client.iter_series(study_uid, series.uid,
                                              media_types=(("application/dicom", "*"),)):
                out = BytesIO()
                dcmwrite(out, ds, enforce_file_format=True)
                total += out.tell()
                if total > self.limits.max_series_bytes:
                    raise PayloadTooLarge(f"series over {self.limits.max_series_bytes} bytes")
                if len(parts) >= self.limits.max_series_instances:
                    raise PayloadTooLarge(f"series has more than "
                                          f"{self.limits.max_series_instances} instances")
                parts.append(out.getvalue())
            return parts

        parts = self._call("retrieve", fetch)
        if not parts:
            raise InvalidInput("the PACS returned no instances for a series")
        return parts

    def store(self, instance: bytes) -> None:
        """Store one instance (STOW-RS). Storing one the PACS holds already (same SOP
        Instance UID) is not an error: results are idempotent."""
        ds: Dataset = dcmread(BytesIO(instance))
        self._call("store", lambda: self.client.store_instances([ds]))
