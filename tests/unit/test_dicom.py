"""Decoding of untrusted DICOM, PNG and zip uploads (no Ray)."""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zipfile
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import MPEG2MPML

from serving.errors import (
    InvalidInput,
    MedserveError,
    PayloadTooLarge,
    UnprocessableInput,
    UnsupportedMediaType,
)
from serving.imaging import dicom
from serving.imaging.dicom import (
    decode_png,
    decode_radiograph,
    decode_series,
    read_header,
    unzip_series,
)
from serving.testing import samples

PHI = {
    "PatientName": "Zqphi^Marker",
    "PatientID": "PHI-ID-7731",
    "PatientBirthDate": "19010203",
    "PatientAddress": "PHI-ADDR-42 Secret Lane",
    "AccessionNumber": "PHIACC99",
    "InstitutionName": "PHI-INSTITUTE",
    "ReferringPhysicianName": "Phidoc^Referrer",
    "OtherPatientIDs": "PHI-OTHER-5",
}


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as f:
        return f.read()


def dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data))


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def assert_no_phi(error: MedserveError) -> None:
    text = f"{error} {error.message} {error!r}"
    for value in PHI.values():
        for piece in value.split("^"):
            assert piece not in text
    # Wrapped parser errors are raised ``from None``: their text is not even chained.
    assert error.__cause__ is None


# --- radiographs ---------------------------------------------------------------------------


def test_radiograph_without_window_uses_data_min_max() -> None:
    data = samples.make_radiograph(bits=12)
    stored = dataset(data).pixel_array.astype(np.float64)
    image = decode_radiograph(data, ["DX"])
    assert image.dtype == np.float32 and image.shape == stored.shape
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_modality_match_is_case_insensitive() -> None:
    data = samples.make_radiograph(modality="CR")
    assert decode_radiograph(data, ["dx", "cr"]).shape == (256, 256)


def test_monochrome1_inverts_the_same_stored_pixels() -> None:
    for window in (None, (1800.0, 1200.0)):
        mono2 = samples.make_radiograph(window=window)
        ds = dataset(mono2)
        ds.PhotometricInterpretation = "MONOCHROME1"
        mono1 = to_bytes(ds)
        np.testing.assert_allclose(
            decode_radiograph(mono1, ["DX"]), 1.0 - decode_radiograph(mono2, ["DX"]), atol=1e-6
        )


def test_monochrome1_sample_displays_like_monochrome2() -> None:
    width = 2000.0
    for window in (None, (2000.0, width)):
        a = decode_radiograph(samples.make_radiograph(window=window), ["DX"])
        b = decode_radiograph(
            samples.make_radiograph(photometric="MONOCHROME1", window=window), ["DX"]
        )
        np.testing.assert_allclose(a, b, atol=2.0 / width)


def test_window_follows_dicom_linear_formula_and_saturates() -> None:
    centre, width = 1500.0, 800.0
    narrow = samples.make_radiograph(window=(centre, width))
    wide = samples.make_radiograph(window=(centre, 4 * width))
    x = dataset(narrow).pixel_array.astype(np.float64)
    expected = np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    image = decode_radiograph(narrow, ["DX"])
    np.testing.assert_allclose(image, expected, atol=1e-5)
    saturated = np.mean((image == 0) | (image == 1))
    wide_image = decode_radiograph(wide, ["DX"])
    assert saturated > np.mean((wide_image == 0) | (wide_image == 1))
    assert image.min() == 0.0 and image.max() == 1.0


def test_window_is_applied_after_rescale() -> None:
    centre, width, slope, intercept = 1500.0, 800.0, 2.0, -100.0
    plain = samples.make_radiograph(window=(centre, width))
    ds = dataset(plain)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = centre * slope + intercept, width * slope
    np.testing.assert_allclose(
        decode_radiograph(to_bytes(ds), ["DX"]), decode_radiograph(plain, ["DX"]), atol=2 / width
    )


def test_voi_lut_sequence_wins_and_is_scaled_by_its_own_range() -> None:
    data = samples.make_radiograph(bits=12, window=(100.0, 50.0))
    ds = dataset(data)
    lut = np.rint(np.sqrt(np.arange(4096) / 4095.0) * 4095).astype(int)  # 12-bit values
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])  # declared 16 bits, as vendors do
    item.add_new("LUTData", "US", lut.tolist())
    ds.VOILUTSequence = [item]
    image = decode_radiograph(to_bytes(ds), ["DX"])
    expected = lut[ds.pixel_array] / lut.max()
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_rgb_is_converted_to_luminance() -> None:
    data = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL JPEG: pydicom hands back RGB
    rgb = dataset(data).pixel_array.astype(np.float64)
    image = decode_radiograph(data, ["OT"])
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_palette_colour_decodes_to_unit_range() -> None:
    image = decode_radiograph(pydicom_file("examples_palette.dcm"), ["US"])
    assert image.ndim == 2 and 0.0 <= image.min() < image.max() <= 1.0


def test_jpeg_compressed_instance_decodes() -> None:
    data = pydicom_file("JPGExtended.dcm")
    stored = dataset(data).pixel_array.astype(np.float64)
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(decode_radiograph(data, ["NM"]), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "accepted", "error"),
    [
        ("MR_small.dcm", ["DX", "CR"], UnprocessableInput),
        ("CT_small.dcm", ["DX"], UnprocessableInput),
        ("MR_truncated.dcm", ["DX"], UnprocessableInput),  # modality checked before pixels
        ("MR_truncated.dcm", ["MR"], InvalidInput),
        ("JPEG-lossy.dcm", ["NM"], InvalidInput),  # non-conformant JPEG stream
        ("rtplan.dcm", ["RTPLAN"], InvalidInput),  # no pixel data
        ("rtdose.dcm", ["RTDOSE"], InvalidInput),  # 15 frames
        ("no_meta.dcm", ["DX"], InvalidInput),  # no Part 10 header: not accepted
    ],
)
def test_pydicom_test_files_are_refused_with_the_right_class(
    name: str, accepted: list[str], error: type[MedserveError]
) -> None:
    with pytest.raises(error):
        decode_radiograph(pydicom_file(name), accepted)


def test_wrong_modality_message_names_received_and_accepted() -> None:
    with pytest.raises(UnprocessableInput) as info:
        decode_radiograph(pydicom_file("MR_small.dcm"), ["DX", "CR"])
    assert "MR" in info.value.message and "DX, CR" in info.value.message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the CS value itself
def test_free_text_in_modality_is_not_echoed() -> None:
    ds = dataset(samples.make_radiograph(phi=PHI))
    ds.Modality = PHI["PatientAddress"]
    with pytest.raises(UnprocessableInput) as info:
        decode_radiograph(to_bytes(ds), ["DX"])
    assert_no_phi(info.value)


@pytest.mark.parametrize("payload", [b"", b"hello", b"\0" * 128 + b"DICM", samples.make_png()])
def test_not_dicom(payload: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a DICOM file"):
        decode_radiograph(payload, ["DX"])


def test_transfer_syntax_without_decoder_is_415_naming_the_uid() -> None:
    ds = dataset(pydicom_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(UnsupportedMediaType) as info:
        decode_radiograph(to_bytes(ds), ["NM"])
    assert MPEG2MPML in info.value.message


def _patched_frame(name: str, marker: bytes, at: int, fmt: str, size: int) -> bytes:
    """A real compressed file whose codestream claims `size` x `size`, header unchanged."""
    ds = dataset(pydicom_file(name))
    pixels = bytearray(ds.PixelData)
    start = pixels.find(marker)
    assert start > 0, name
    struct.pack_into(fmt, pixels, start + at, size, size)
    ds.PixelData = bytes(pixels)
    return to_bytes(ds)


@pytest.mark.parametrize(("name", "marker", "at", "fmt"), [
    ("JPEG2000.dcm", b"\xff\x4f\xff\x51", 8, ">II"),  # SIZ: Xsiz, Ysiz
    ("JPGExtended.dcm", b"\xff\xc1", 5, ">HH"),  # SOF1: rows, columns
    ("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xc0", 5, ">HH"),  # SOF0
    ("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", 5, ">HH"),  # SOF55
])
def test_codestream_larger_than_its_header_is_refused_before_decoding(
    name: str, marker: bytes, at: int, fmt: str
) -> None:
    original = pydicom_file(name)
    modality = str(dataset(original).Modality)
    decode_radiograph(original, [modality])  # the real file decodes
    data = _patched_frame(name, marker, at, fmt, 16384 if fmt == ">II" else 65000)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="dimensions do not match"):
            decode_radiograph(data, [modality])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_missing_decoder_plugin_is_415(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pydicom_file("JPEG2000.dcm")

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(UnsupportedMediaType) as info:
        decode_radiograph(data, ["NM"])
    assert dataset(data).file_meta.TransferSyntaxUID in info.value.message


def test_oversized_header_is_refused_before_decoding() -> None:
    ds = dataset(samples.make_radiograph())
    ds.Rows = ds.Columns = 65535
    with pytest.raises(PayloadTooLarge):
        decode_radiograph(to_bytes(ds), ["DX"])


def phi_failures() -> list[bytes]:
    good = samples.make_radiograph(phi=PHI)
    no_pixels, frames, broken_window = dataset(good), dataset(good), dataset(good)
    del no_pixels.PixelData
    frames.NumberOfFrames = 2
    broken_window.WindowCenter, broken_window.WindowWidth = 100, 0
    truncated = dataset(good)
    truncated.PixelData = truncated.PixelData[:1000]
    return [
        samples.make_radiograph(modality="MG", phi=PHI),
        to_bytes(no_pixels),
        to_bytes(frames),
        to_bytes(broken_window),
        to_bytes(truncated),
        good[: len(good) // 3],
    ]


@pytest.mark.parametrize("index", range(6))
def test_error_messages_never_contain_phi(index: int) -> None:
    with pytest.raises(MedserveError) as info:
        decode_radiograph(phi_failures()[index], ["DX"])
    assert_no_phi(info.value)


# --- PNG -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "full_scale"), [(8, 255.0), (16, 65535.0)])
def test_png_uses_full_range_of_bit_depth(bits: int, full_scale: float) -> None:
    data = samples.make_png(rows=40, cols=30, bits=bits)
    raw = np.asarray(Image.open(BytesIO(data))).astype(np.float64)
    image = decode_png(data)
    assert image.dtype == np.float32 and image.shape == (40, 30)
    np.testing.assert_allclose(image, raw / full_scale, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_is_converted_to_luminance(mode: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, len(mode)), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    expected = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(decode_png(buffer.getvalue()), expected, atol=1e-5)


def test_png_rejects_other_formats_and_corruption() -> None:
    jpeg = BytesIO()
    Image.new("L", (8, 8)).save(jpeg, format="JPEG")
    png = samples.make_png()
    for payload in (b"", b"not an image", jpeg.getvalue(), png[: len(png) // 2]):
        with pytest.raises(InvalidInput):
            decode_png(payload)


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def test_png_decompression_bomb_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PayloadTooLarge):  # a few hundred bytes claiming 10^10 pixels
        decode_png(png_claiming(100_000, 100_000))
    with pytest.raises(PayloadTooLarge):  # between Pillow's limit and ours: Pillow's own guard
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        decode_png(samples.make_png(rows=64, cols=64))


# --- CT series -----------------------------------------------------------------------------


def sorted_by_instance(parts: list[bytes]) -> list[bytes]:
    return sorted(parts, key=lambda p: int(dataset(p).InstanceNumber))


def test_series_geometry_matches_every_instance_header() -> None:
    parts = samples.make_ct_series(slices=8, rows=20, cols=24, pixel_spacing=(0.7, 0.9))
    volume = decode_series(parts, ["CT"])
    assert volume.hu.dtype == np.float32 and volume.hu.shape == (24, 20, 8)
    for data in parts:
        ds = dataset(data)
        offset = np.subtract(ds.ImagePositionPatient, volume.affine[:3, 3])
        k = round(float(np.linalg.solve(volume.affine[:3, :3], offset)[2]))
        np.testing.assert_allclose(volume.affine @ [0, 0, k, 1], [*ds.ImagePositionPatient, 1])
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.hu[:, :, k], hu.T)
    row_spacing, col_spacing = (float(v) for v in dataset(parts[0]).PixelSpacing)
    np.testing.assert_allclose(
        np.linalg.norm(volume.affine[:3, :3], axis=0), [col_spacing, row_spacing, 2.5]
    )


def test_shuffled_and_sorted_series_decode_identically() -> None:
    shuffled = samples.make_ct_series(slices=10)
    assert shuffled != sorted_by_instance(shuffled)  # the sample really is shuffled
    a, b = decode_series(shuffled, ["CT"]), decode_series(sorted_by_instance(shuffled), ["CT"])
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_reversed_normal_orders_slices_along_the_normal() -> None:
    parts = []
    for data in samples.make_ct_series(slices=6, rows=16, cols=16):
        ds = dataset(data)
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]  # normal = row x col = (0, 0, -1)
        parts.append(to_bytes(ds))
    volume = decode_series(parts, ["CT"])
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, -2.5])
    top = max(float(dataset(p).ImagePositionPatient[2]) for p in parts)
    assert volume.affine[2, 3] == pytest.approx(top)


def test_nodule_centre_is_recovered_in_patient_mm() -> None:
    centre, radius = (-8.3, -1.5, 1.2), 4.0  # inside the left lung, off the voxel grid
    kwargs = {"slices": 16, "rows": 48, "cols": 48, "origin": (-19.2, -19.2, -20.0)}
    base = samples.make_ct_series(nodules=(), **kwargs)
    with_nodule = samples.make_ct_series(nodules=((centre, radius),), **kwargs)
    a, b = decode_series(with_nodule, ["CT"]), decode_series(base, ["CT"])
    voxels = np.argwhere(a.hu - b.hu > 400)  # same seed: identical noise, only the nodule differs
    assert len(voxels) > 10
    found = (a.affine @ np.r_[voxels.mean(axis=0), 1.0])[:3]
    assert np.all(np.abs(found - centre) <= np.linalg.norm(a.affine[:3, :3], axis=0))


def with_positions(parts: list[bytes], shift) -> list[bytes]:
    out = []
    for data in parts:
        ds = dataset(data)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [float(v) for v in np.add(ds.ImagePositionPatient, shift(k))]
        out.append(to_bytes(ds))
    return out


def test_series_rejections() -> None:
    kwargs = {"slices": 6, "rows": 16, "cols": 16}
    parts = samples.make_ct_series(phi=PHI, **kwargs)
    ordered = sorted_by_instance(parts)
    cases = {
        "other series": parts + samples.make_ct_series(seed=1, phi=PHI, **kwargs)[:1],
        "other size": parts + samples.make_ct_series(phi=PHI, slices=6, rows=16, cols=18)[:1],
        "other spacing": parts
        + samples.make_ct_series(phi=PHI, pixel_spacing=(0.8, 0.9), **kwargs)[:1],
        "duplicate": parts + parts[:1],
        "gap": ordered[:2] + ordered[3:],
        "tilt": with_positions(parts, lambda k: (0.0, 0.5 * k, 0.0)),
        "junk part": [*parts[:3], b"junk", *parts[3:]],
        "too few": parts[:2],
    }
    for name, case in cases.items():
        with pytest.raises(InvalidInput) as info:
            decode_series(case, ["CT"])
        assert_no_phi(info.value)
        if name == "junk part":
            assert "part 3" in info.value.message


def test_series_wrong_modality_is_422_naming_the_part() -> None:
    parts = samples.make_ct_series(slices=4, rows=16, cols=16)
    with pytest.raises(UnprocessableInput, match="part 4"):
        decode_series([*parts, pydicom_file("MR_small.dcm")], ["CT"])


def test_min_slices_is_configurable() -> None:
    parts = samples.make_ct_series(slices=3, rows=8, cols=8)
    assert decode_series(parts, ["CT"], min_slices=3).hu.shape == (8, 8, 3)
    with pytest.raises(InvalidInput):
        decode_series(parts, ["CT"], min_slices=4)


# --- zip -----------------------------------------------------------------------------------


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_unzip_round_trip_skips_junk_entries() -> None:
    parts = samples.make_ct_series(slices=3, rows=8, cols=8, shuffle=False)
    members = {f"s/{i}.dcm": p for i, p in enumerate(parts)}
    members |= {"__MACOSX/s/._0.dcm": b"x", "s/.DS_Store": b"x", ".hidden": b"x"}
    data = zipped(members)
    with zipfile.ZipFile(BytesIO(data), "a") as archive:
        archive.mkdir("empty/")
    assert unzip_series(data, max_members=3, max_total_bytes=10**7) == parts
    assert unzip_series(samples.zip_series(parts), 3, 10**7) == parts


def test_unzip_skips_non_dicom_members_without_inflating_them() -> None:
    parts = samples.make_ct_series(slices=2, rows=8, cols=8, shuffle=False)
    data = zipped({"a.dcm": parts[0], "notes.bin": bytes(64 << 20), "b.dcm": parts[1]})
    tracemalloc.start()
    try:
        assert unzip_series(data, max_members=3, max_total_bytes=1 << 30) == parts
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the 64 MiB member was never held
    with pytest.raises(InvalidInput, match="no DICOM"):
        unzip_series(zipped({"notes.bin": bytes(1000)}), 3, 10**7)


def test_unzip_limits_and_corruption() -> None:
    bomb = zipped({"a.dcm": b"\0" * 5_000_000})  # ~5 kB on the wire
    assert len(bomb) < 50_000
    with pytest.raises(PayloadTooLarge):
        unzip_series(bomb, max_members=10, max_total_bytes=1_000_000)
    with pytest.raises(PayloadTooLarge):
        unzip_series(zipped({f"{i}.dcm": b"x" for i in range(5)}), 4, 10**6)
    with pytest.raises(UnsupportedMediaType):
        unzip_series(zipped({"a.dcm": b"x" * 100}, zipfile.ZIP_BZIP2), 10, 10**6)
    for payload in (b"", b"not a zip", zipped({}), bomb[: len(bomb) // 2]):
        with pytest.raises(InvalidInput):
            unzip_series(payload, 10, 10**7)


def test_unzip_does_not_trust_declared_sizes() -> None:
    data = bytearray(zipped({"a.dcm": b"\0" * 2_000_000}))
    # Claim 1000 bytes in both the local header (offset 22) and central directory (offset 24).
    struct.pack_into("<I", data, 22, 1000)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1000)
    with pytest.raises((InvalidInput, PayloadTooLarge)):
        unzip_series(bytes(data), max_members=10, max_total_bytes=100_000)


def _deflated(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it() -> None:
    ds = pydicom.dcmread(BytesIO(samples.make_radiograph(modality="DX")))
    # 160 MiB of zeros in a private element: a small upload that inflates past the limit.
    ds.add_new(0x00091010, "OB", bytes(160 << 20))
    bomb = _deflated(ds)
    assert len(bomb) < 1 << 20
    with pytest.raises(PayloadTooLarge, match="deflated DICOM inflates past 129 MiB"):
        decode_radiograph(bomb, ["DX"])
    with pytest.raises(PayloadTooLarge, match="part 0: deflated DICOM inflates past"):
        read_header(bomb, "part 0: ")  # routing a received (STOW-RS) instance
    with pytest.raises(InvalidInput):  # a broken deflate stream is a plain 400
        decode_radiograph(bomb[: len(bomb) // 2] + b"\xff" * 64, ["DX"])


def test_a_normal_deflated_instance_still_decodes() -> None:
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()  # pydicom's deflated file
    image = decode_radiograph(data, ["OT"])
    assert image.shape == (512, 512) and 0.0 <= image.min() < image.max() <= 1.0


def test_invalid_header_values_raise_no_warning_that_quotes_them() -> None:
    """pydicom warns with the raw value of an invalid UI ('JANE-DOE-4711' could be an id);
    warnings end up in the Ray workers' stderr files."""
    parts = []
    for part in samples.make_ct_series():
        ds = pydicom.dcmread(BytesIO(part))
        ds["SeriesInstanceUID"].value = "JANE-DOE-4711"
        out = BytesIO()
        ds.save_as(out)
        parts.append(out.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = decode_series(parts, ["CT"])
    assert volume.hu.ndim == 3
    assert not [w for w in caught if "JANE" in str(w.message)]
