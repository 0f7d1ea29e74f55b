"""The formats an imaging result is given in, and how a client asks for one.

JSON is the default. A hospital system asks for DICOM Structured Report (`application/dicom`,
or `?format=dicom-sr`) to store the result next to the study in its PACS, or for a FHIR R4
DiagnosticReport (`application/fhir+json`, or `?format=fhir`). `format` wins over `Accept`,
as in DICOMweb's `accept` query parameter, because some clients cannot set headers.
"""

from __future__ import annotations

from enum import StrEnum

from serving.errors import NotAcceptable


class ResultFormat(StrEnum):
    JSON = "json"
    DICOM_SR = "dicom-sr"
    DICOM_SEG = "dicom-seg"
    FHIR = "fhir"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    ResultFormat.JSON: "application/json",
    ResultFormat.DICOM_SR: "application/dicom",
    ResultFormat.DICOM_SEG: "application/dicom",
    ResultFormat.FHIR: "application/fhir+json",
}
# A DICOM result is an SR, or a SEG for a segmentation model (`for_task`).
_BY_MEDIA_TYPE = {"application/json": ResultFormat.JSON,
                  "application/dicom": ResultFormat.DICOM_SR,
                  "application/fhir+json": ResultFormat.FHIR}
_WILDCARDS = ("*/*", "application/*")


def _accepted(accept: str) -> list[tuple[str, float]]:
    """`Accept` header -> [(media type, q)], q-value order kept stable for ties."""
    ranges = []
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media.lower(), q))
    return sorted(ranges, key=lambda r: -r[1])


def for_task(fmt: ResultFormat, task: str, explicit: bool) -> ResultFormat:
    """The DICOM result of a segmentation is a SEG, of the other tasks an SR; asking for the
    other one by name is a 406."""
    if fmt not in (ResultFormat.DICOM_SR, ResultFormat.DICOM_SEG):
        return fmt
    want = ResultFormat.DICOM_SEG if task == "segmentation" else ResultFormat.DICOM_SR
    if explicit and fmt is not want:
        raise NotAcceptable(f"a {task} model's DICOM result is format={want.value}")
    return want


def negotiate(format_param: str | None, accept: str | None) -> ResultFormat:
    """The result format for a predict: `?format=` if given, else the most preferred type of
    `Accept` that Medserve gives, else JSON. An `Accept` naming none of them (and no
    wildcard) is a 406, so a PACS never receives JSON it would store as garbage."""
    if format_param is not None:
        try:
            return ResultFormat(format_param.strip().lower())
        except ValueError:
            raise NotAcceptable(
                "format must be one of: " + ", ".join(f.value for f in ResultFormat)
            ) from None
    if not accept or not accept.strip():
        return ResultFormat.JSON
    for media, q in _accepted(accept):
        if q <= 0:
            continue
        if media in _BY_MEDIA_TYPE:
            return _BY_MEDIA_TYPE[media]
        if media in _WILDCARDS:
            return ResultFormat.JSON
    raise NotAcceptable(
        "Accept names no result type given here; use one of: " + ", ".join(_BY_MEDIA_TYPE)
    )
