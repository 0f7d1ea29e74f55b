"""Turn untrusted uploads (DICOM, PNG, zip of DICOM) into arrays a model can take.

Everything here parses bytes from outside, so every failure becomes a ``MedserveError`` whose
message we wrote ourselves: no DICOM attribute value and no parser exception text ever reaches
it, because either could carry patient data. Modality and transfer syntax UID are the only
header values echoed, and only after checking they look like the coded values they must be.
Header checks run before pixel decoding so a wrong request is refused before it costs memory.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian

from serving.cancellation import Stop, check, never
from serving.errors import InvalidInput, PayloadTooLarge, UnprocessableInput, UnsupportedMediaType
from serving.imaging.codestream import declared_size

# pydicom logs malformed values verbatim ("Invalid value for VR DA: '<value>'"); keep its
# records away from the service's handlers so header contents never land in a log line.
logging.getLogger("pydicom").propagate = False
# pydicom validates values as it reads them and warns with the value quoted ("Invalid value for
# VR UI: '<value>'"), from any attribute access in any thread: a warning filter set around
# some reads (not thread-safe either) cannot catch them all. Reading validation is off in
# this process instead; the checks here validate every value the models use.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

MAX_IMAGE_PIXELS = 8192 * 8192  # one 2D image, checked from the header before decoding
MAX_SERIES_VOXELS = 1024 * 512 * 512  # a whole CT series (4 GiB as float32 at the limit)
# The most one inflated (Deflated transfer syntax) instance may hold: the largest image at
# 16 bits, plus room for its header.
MAX_INFLATED_BYTES = 2 * MAX_IMAGE_PIXELS + (1 << 20)

_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")  # DICOM CS: what a real Modality looks like
_UID = re.compile(r"[0-9.]{1,64}")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def _echo(value: object, pattern: re.Pattern[str]) -> str:
    """Echo a coded value only when it has that code's shape, so free text cannot leak."""
    text = str(value).strip() if value is not None else ""
    return text if pattern.fullmatch(text) else "an unrecognised value"


def _check_inflated_size(data: bytes, where: str) -> None:
    """Deflated Explicit VR Little Endian compresses the whole dataset, and pydicom inflates it
    with no bound: about 2 GB per MB uploaded. Inflate it here first, up to the most any
    instance may hold, and refuse beyond (413) before pydicom sees it."""
    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)  # the public read_file_meta_info takes paths only
    except Exception:
        return  # not a Part 10 file: dcmread says so next
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[fp.tell():], MAX_INFLATED_BYTES + 1)
    except zlib.error:
        raise InvalidInput(f"{where}deflated DICOM data is corrupt") from None
    if len(inflated) > MAX_INFLATED_BYTES:
        raise PayloadTooLarge(f"{where}deflated DICOM inflates past {MAX_INFLATED_BYTES >> 20} "
                              "MiB")


def _read(data: bytes, where: str) -> Dataset:
    _check_inflated_size(data, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(data), force=False)
    except InvalidDicomError:
        raise InvalidInput(f"{where}not a DICOM file") from None
    except Exception:
        raise InvalidInput(f"{where}DICOM file could not be parsed") from None
    # A bare 'DICM' preamble parses as an empty dataset: without a transfer syntax in the
    # file meta it is not a Part 10 file, and pydicom would only be guessing its encoding.
    if not getattr(ds, "file_meta", None) or not ds.file_meta.get("TransferSyntaxUID"):
        raise InvalidInput(f"{where}not a DICOM file")
    return ds


def read_header(data: bytes, where: str = "") -> Dataset:
    """An instance's header without its pixels, with the same guards as a decode (a deflated
    dataset is inflated with a bound first): for routing a received instance."""
    _check_inflated_size(data, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception:
        raise InvalidInput(f"{where}not a DICOM file, or its header could not be parsed") \
            from None


def _check_instance(ds: Dataset, accepted: Sequence[str], where: str) -> None:
    """Modality, pixel presence, frame count and size: all decided from the header alone."""
    try:
        modality = str(ds.get("Modality", "") or "").strip()
    except Exception:
        raise InvalidInput(f"{where}DICOM header is malformed") from None
    if modality.upper() not in {m.upper() for m in accepted}:
        received = _echo(modality, _CODE_STRING) if modality else "none"
        raise UnprocessableInput(
            f"{where}modality {received} is not accepted by this model; "
            f"accepted modalities: {', '.join(accepted)}"
        )
    if "PixelData" not in ds:
        raise InvalidInput(f"{where}DICOM instance has no pixel data")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:
        raise InvalidInput(f"{where}DICOM image header is malformed") from None
    if frames != 1:
        raise InvalidInput(f"{where}multi-frame DICOM is not supported; send one frame")
    if pixels <= 0:
        raise InvalidInput(f"{where}DICOM image header is malformed")
    if pixels > MAX_IMAGE_PIXELS:
        raise PayloadTooLarge(f"{where}image exceeds {MAX_IMAGE_PIXELS} pixels")


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    """Decode stored values, telling 'no decoder here' (415) apart from 'broken data' (400)."""
    ts = ds.file_meta.TransferSyntaxUID  # presence checked by _read
    try:
        available = get_decoder(ts).is_available
    except Exception:
        available = False
    if not available:
        raise UnsupportedMediaType(f"{where}transfer syntax {_echo(ts, _UID)} is not supported")
    declared = declared_size(ds.PixelData, ts)
    if declared is not None and declared != (int(ds.Rows), int(ds.Columns)):
        # the decoder would allocate the codestream's size, whatever the header says
        raise InvalidInput(f"{where}compressed frame's dimensions do not match the header's "
                           "Rows and Columns")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception:
        raise InvalidInput(f"{where}pixel data is truncated or corrupt") from None


def _unit_range(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo or not np.isfinite(hi - lo):
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601


def _grey_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Luma in float32, a band of rows at a time: a float64 copy of a large colour image's
    [H, W, 3] would cost 24 bytes per pixel (1.5 GB for the largest image allowed)."""
    grey = np.empty(rgb.shape[:2], np.float32)
    for top in range(0, rgb.shape[0], 256):
        grey[top:top + 256] = rgb[top:top + 256, :, :3].astype(np.float32) @ _LUMA
    return grey


def _display_intensity(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then the range that window maps to, then [0, 1].

    pydicom's windowing output range depends on BitsStored, PixelRepresentation and rescale,
    so instead of re-deriving it we push -inf/+inf through the same function and read back
    the two ends. A VOI LUT is scaled by its own entries' range, because vendors often declare
    16-bit LUTs holding 12-bit values.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _unit_range(_grey_from_rgb(rgb), 0.0, float(np.iinfo(rgb.dtype).max))
    if photometric in _RGB_LIKE:  # pydicom has already converted YBR to RGB
        return _unit_range(_grey_from_rgb(arr), 0.0, float(2 ** int(ds.BitsStored) - 1))
    if photometric not in _MONOCHROME or arr.ndim != 2:
        raise UnprocessableInput("unsupported photometric interpretation for a radiograph")

    values = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") and voi[0].get("LUTData") is not None:
        count, first = int(voi[0].LUTDescriptor[0]) or 2**16, int(voi[0].LUTDescriptor[1])
        entries = apply_voi(np.arange(first, first + count), ds)
        out = apply_voi(np.rint(values).astype(np.int64), ds)
        scaled = _unit_range(out, float(entries.min()), float(entries.max()))
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_windowing(values, ds)
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
        scaled = _unit_range(out, float(lo), float(hi))
    else:
        scaled = _unit_range(values, float(values.min()), float(values.max()))
    return 1.0 - scaled if photometric == "MONOCHROME1" else scaled


def header_of(ds: Dataset) -> Dataset:
    """The instance without its pixels: what a DICOM result references (patient, study,
    series and instance UIDs) once the image has been decoded."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def decode_radiograph(data: bytes, accepted_modalities: Sequence[str]) -> np.ndarray:
    """One DICOM instance -> float32 [H, W] in [0, 1], as a reader would see it displayed."""
    return read_radiograph(data, accepted_modalities)[0]


def read_radiograph(data: bytes, accepted_modalities: Sequence[str]) -> tuple[np.ndarray, Dataset]:
    """`decode_radiograph`, plus the instance's header (pixels dropped) for a DICOM result."""
    ds = _read(data, "")
    _check_instance(ds, accepted_modalities, "")
    arr = _pixels(ds, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _display_intensity(arr, ds)
    except UnprocessableInput:
        raise
    except Exception:  # e.g. a LUT or window the standard does not allow
        raise InvalidInput("DICOM intensity transform (LUT or window) is invalid") from None
    return np.ascontiguousarray(image, dtype=np.float32), header_of(ds)


def decode_png(data: bytes) -> np.ndarray:
    """PNG -> float32 [H, W] in [0, 1], using the full range of the file's bit depth."""
    try:
        with Image.open(BytesIO(data)) as img:
            if img.format != "PNG":
                raise InvalidInput("not a PNG file")
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise PayloadTooLarge(f"image exceeds {MAX_IMAGE_PIXELS} pixels")
            img.load()
            mode = img.mode
            if mode in ("P", "PA", "CMYK", "YCbCr"):
                arr = np.asarray(img.convert("RGB"))
                mode = "RGB"
            else:
                arr = np.asarray(img)
    except (InvalidInput, PayloadTooLarge):
        raise
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image is too large to decode") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise InvalidInput("not a PNG file, or the PNG is corrupt") from None
    if mode == "1":
        return arr.astype(np.float32)
    full_scale = 65535.0 if mode.startswith("I") else 255.0
    grey = _grey_from_rgb(arr) if arr.ndim == 3 and arr.shape[2] >= 3 else arr
    if grey.ndim == 3:  # LA: grey plus alpha
        grey = grey[..., 0]
    del arr  # in place from here: the largest PNG allowed is 256 MiB per float32 copy
    out = grey.astype(np.float32, copy=False)
    out /= np.float32(full_scale)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass
class Volume:
    """A CT series on one regular grid, with the geometry needed to report findings in mm."""

    hu: np.ndarray  # float32 [X, Y, Z] = (column, row, slice) order
    affine: np.ndarray  # 4x4 voxel (i=column, j=row, k=slice) -> patient coordinates (LPS, mm)
    # The instances' headers in slice order, pixels dropped: what a DICOM result references.
    headers: list[Dataset] = field(default_factory=list)


def _geometry(ds: Dataset, where: str) -> tuple[str, tuple[int, int], np.ndarray, np.ndarray]:
    try:
        series = str(ds.SeriesInstanceUID)
        shape = (int(ds.Rows), int(ds.Columns))
        iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        spacing = np.array([float(v) for v in ds.PixelSpacing], dtype=np.float64)
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        ok = iop.shape == (6,) and spacing.shape == (2,) and position.shape == (3,)
    except Exception:
        ok = False
    if not ok or not np.all(np.isfinite(np.r_[iop, spacing, position])) or spacing.min() <= 0:
        raise InvalidInput(f"{where}missing or malformed image geometry (orientation, spacing)")
    return series, shape, np.r_[iop, spacing], position


def decode_series(
    parts: Sequence[bytes], accepted_modalities: Sequence[str], min_slices: int = 3,
    stop: Stop = never,
) -> Volume:
    """Single-frame CT instances of one series -> HU volume on a regular grid plus its affine.
    `stop` is checked before each instance's header and pixels (`Cancelled` once it is true)."""
    if len(parts) < min_slices:
        raise InvalidInput(f"series has {len(parts)} instances; at least {min_slices} needed")
    datasets, positions = [], []
    first: tuple[str, tuple[int, int], np.ndarray] | None = None
    for index, data in enumerate(parts):
        check(stop)
        where = f"part {index}: "
        ds = _read(data, where)
        _check_instance(ds, accepted_modalities, where)
        series, shape, frame, position = _geometry(ds, where)
        if first is None:
            first = (series, shape, frame)
            if len(parts) * shape[0] * shape[1] > MAX_SERIES_VOXELS:
                raise PayloadTooLarge(f"series exceeds {MAX_SERIES_VOXELS} voxels")
        elif series != first[0]:
            raise InvalidInput(f"{where}belongs to a different series than part 0")
        elif shape != first[1]:
            raise InvalidInput(f"{where}image size differs from part 0")
        elif not np.allclose(frame, first[2], rtol=1e-4, atol=1e-4):
            raise InvalidInput(f"{where}orientation or pixel spacing differs from part 0")
        datasets.append(ds)
        positions.append(position)
    assert first is not None
    row_dir, col_dir, (row_spacing, col_spacing) = first[2][:3], first[2][3:6], first[2][6:]
    if not (
        abs(np.linalg.norm(row_dir) - 1) < 1e-3
        and abs(np.linalg.norm(col_dir) - 1) < 1e-3
        and abs(row_dir @ col_dir) < 1e-3
    ):
        raise InvalidInput("ImageOrientationPatient is not two orthogonal unit vectors")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    along = (pos - pos[0]) @ normal
    steps = np.diff(along)
    if steps.min() < 0.01:
        raise InvalidInput("series has two or more instances at the same slice position")
    spacing = float(along[-1] / (len(along) - 1))
    if np.abs(steps - spacing).max() > max(0.01, 0.01 * spacing):
        raise InvalidInput("slice spacing is not uniform (missing or extra slices?)")
    in_plane = (pos - pos[0]) - np.outer(along, normal)
    if np.linalg.norm(in_plane, axis=1).max() > max(0.01, 0.01 * along[-1]):
        raise InvalidInput("slices are not stacked along the slice normal (gantry tilt)")

    slices, headers = [], []
    for index in order:
        check(stop)
        ds, where = datasets[index], f"part {index}: "
        if str(ds.get("PhotometricInterpretation", "")).strip() not in _MONOCHROME:
            raise UnprocessableInput(f"{where}series images must be monochrome")
        stored = _pixels(ds, where)
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except Exception:
            raise InvalidInput(f"{where}rescale slope or intercept is malformed") from None
        slices.append((stored.astype(np.float32) * slope + intercept).T)
        headers.append(header_of(ds))
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = pos[0]
    return Volume(hu=np.stack(slices, axis=2).astype(np.float32), affine=affine, headers=headers)


def unzip_series(data: bytes, max_members: int, max_total_bytes: int) -> list[bytes]:
    """Zip of instances -> their bytes, refusing bombs before and while inflating.

    Only stored and deflate members are read: zipfile bounds a deflate read to what we ask
    for, but feeds bzip2 and LZMA whole chunks, which can inflate without limit. A member
    whose first bytes are not a DICOM Part 10 preamble is skipped after 64 KiB, not inflated
    whole (a 512 MiB member of zeros would otherwise be held until the decode refused it).
    """
    try:
        archive = zipfile.ZipFile(BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise InvalidInput("not a zip archive, or the archive is corrupt") from None
    with archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and not info.filename.startswith("__MACOSX/")
            and not info.filename.rsplit("/", 1)[-1].startswith(".")
        ]
        if not members:
            raise InvalidInput("zip archive contains no files")
        if len(members) > max_members:
            raise PayloadTooLarge(f"zip archive has more than {max_members} files")
        if sum(info.file_size for info in members) > max_total_bytes:
            raise PayloadTooLarge(f"zip archive expands to more than {max_total_bytes} bytes")
        if any(i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for i in members):
            raise UnsupportedMediaType("zip members must be stored or deflate-compressed")
        out: list[bytes] = []
        total = 0
        try:
            for info in members:
                chunks = []
                with archive.open(info) as member:
                    head = member.read(1 << 16)
                    if head[128:132] != b"DICM":
                        continue  # not a Part 10 file (a readme, a thumbnail): not inflated
                    chunk = head
                    while chunk:
                        total += len(chunk)
                        if total > max_total_bytes:
                            raise PayloadTooLarge(
                                f"zip archive expands to more than {max_total_bytes} bytes"
                            )
                        chunks.append(chunk)
                        chunk = member.read(1 << 16)
                out.append(b"".join(chunks))
        except PayloadTooLarge:
            raise
        except Exception:  # bad CRC, encrypted member, truncated stream, lying sizes
            raise InvalidInput("zip archive member could not be read") from None
    if not out:
        raise InvalidInput("zip archive holds no DICOM files")
    return out
