"""Synthetic but standards-shaped DICOM, PNG and zip inputs.

Tests, README examples and load tests need inputs whose ground truth is known (where the
nodule is, which pixels are lung) and that carry recognisable fake patient data, so a test
can prove that data never reaches an error body. Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DEFAULT_PHI: Mapping[str, str] = {
    "PatientName": "Synthetic^Patient",
    "PatientID": "SYN-000001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "PatientAddress": "1 Example Street, Nowhere",
    "AccessionNumber": "ACC000001",
    "InstitutionName": "Synthetic Hospital",
    "ReferringPhysicianName": "Doctor^Example",
    "OtherPatientIDs": "SYN-ALT-000001",
}
_SOP_CLASSES = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "CT": CTImageStorage,
}


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(entropy_srcs=["medserve-samples", str(seed), *map(str, parts)])


def _dataset(modality: str, sop_instance: UID, phi: Mapping[str, str] | None) -> Dataset:
    sop_class = _SOP_CLASSES.get(modality.upper(), SecondaryCaptureImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.Modality = modality
    ds.StudyDate = ds.SeriesDate = "20240101"
    ds.StudyTime = ds.SeriesTime = "120000"
    for keyword, value in (DEFAULT_PHI if phi is None else phi).items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword}")
        setattr(ds, keyword, value)
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, bits: int, photometric: str) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype("<u2").tobytes()


def _to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def chest_image(rows: int = 256, cols: int = 256, seed: int = 0) -> np.ndarray:
    """Float [rows, cols] in [0, 1], bright = dense: gradient, two dark lungs, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y, x = y / max(rows - 1, 1), x / max(cols - 1, 1)
    image = 0.55 + 0.25 * y - 0.1 * np.abs(x - 0.5)
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.48) / 0.3) ** 2 <= 1.0
        image[lung] -= 0.35
    image += rng.normal(0.0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0)


def make_radiograph(
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    rows: int = 256,
    cols: int = 256,
    bits: int = 12,
    window: tuple[float, float] | None = None,
    seed: int = 0,
    phi: Mapping[str, str] | None = None,
) -> bytes:
    """A chest-like projection radiograph as a DICOM Part 10 file.

    MONOCHROME1 stores inverted values (and a mirrored window centre), so both
    photometric interpretations of the same ``seed`` look the same once displayed.
    ``window`` is (centre, width) in MONOCHROME2 stored-value terms. DX and CR get their own
    SOP classes; any other modality (for wrong-modality tests) is Secondary Capture.
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    top = 2**bits - 1
    stored = np.rint(chest_image(rows, cols, seed) * top).astype(np.uint16)
    ds = _dataset(modality, _uid(seed, "radiograph", modality, photometric, rows, cols), phi)
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "radiograph-series")
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    if modality.upper() == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.15, 0.15]
    if photometric == "MONOCHROME1":
        stored = top - stored
    _set_pixels(ds, stored, bits, photometric)
    if window is not None:
        centre, width = window
        ds.WindowCenter = centre if photometric == "MONOCHROME2" else top - centre
        ds.WindowWidth = width
    return _to_bytes(ds)


def make_ct_series(
    slices: int = 24,
    rows: int = 64,
    cols: int = 64,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    slice_thickness: float = 2.5,
    nodules: Sequence[tuple[tuple[float, float, float], float]] = (((-10.0, 2.0, -2.5), 4.0),),
    origin: tuple[float, float, float] = (-25.6, -25.6, -30.0),
    seed: int = 0,
    phi: Mapping[str, str] | None = None,
    shuffle: bool = True,
) -> list[bytes]:
    """An axial chest CT series, one Part 10 file per slice, in shuffled order by default.

    ``pixel_spacing`` is DICOM's (row spacing, column spacing); nodule centres are patient
    (LPS) millimetres and radii are in mm. The axial grid maps column -> +x, row -> +y and
    slice -> +z starting at ``origin``, so ground truth needs no affine arithmetic.
    """
    rng = np.random.default_rng(seed)
    row_spacing, col_spacing = pixel_spacing
    x = origin[0] + np.arange(cols) * col_spacing
    y = origin[1] + np.arange(rows) * row_spacing
    yy, xx = np.meshgrid(y, x, indexing="ij")  # [rows, cols], as DICOM stores a slice
    cx, cy = float(x.mean()), float(y.mean())
    half_x, half_y = (x[-1] - x[0]) / 2, (y[-1] - y[0]) / 2
    body = ((xx - cx) / (0.95 * half_x)) ** 2 + ((yy - cy) / (0.8 * half_y)) ** 2 <= 1.0
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        centre_x = cx + side * 0.42 * half_x
        lungs |= ((xx - centre_x) / (0.3 * half_x)) ** 2 + ((yy - cy) / (0.6 * half_y)) ** 2 <= 1
    base = np.where(body, 40.0, -1000.0)
    base[lungs & body] = -800.0

    study, series = _uid(seed, "study"), _uid(seed, "ct-series")
    frame_of_reference = _uid(seed, "frame-of-reference")
    files = []
    for k in range(slices):
        z = origin[2] + k * slice_thickness
        hu = base.copy()
        for (nx, ny, nz), radius in nodules:
            hu[(xx - nx) ** 2 + (yy - ny) ** 2 + (z - nz) ** 2 <= radius**2] = 50.0
        hu += rng.normal(0.0, 10.0, hu.shape)
        ds = _dataset("CT", _uid(seed, "ct-instance", k), phi)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "FFS"
        ds.KVP = 120
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [round(origin[0], 6), round(origin[1], 6), round(z, 6)]
        ds.SliceLocation = round(z, 6)
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.SliceThickness = slice_thickness
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        _set_pixels(ds, np.clip(np.rint(hu + 1024), 0, 4095), 12, "MONOCHROME2")
        files.append(_to_bytes(ds))
    if shuffle:
        files = [files[i] for i in rng.permutation(len(files))]
    return files


def make_png(rows: int = 256, cols: int = 256, bits: int = 8) -> bytes:
    """The chest-like image as an 8- or 16-bit greyscale PNG."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    image = chest_image(rows, cols)
    if bits == 8:
        img = Image.fromarray(np.rint(image * 255).astype(np.uint8))
    else:
        img = Image.fromarray(np.rint(image * 65535).astype(np.uint16))
    buffer = BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def zip_series(parts: Sequence[bytes]) -> bytes:
    """Instances as a deflated zip, named the way a PACS export would name them."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index, data in enumerate(parts):
            archive.writestr(f"series/IM{index:05d}.dcm", data)
    return buffer.getvalue()
