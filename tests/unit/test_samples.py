"""The synthetic DICOM/PNG/zip makers produce valid, deterministic, known-content files."""

from __future__ import annotations

import zipfile
from io import BytesIO

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from serving.testing import samples


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(data), force=False)  # Part 10: preamble + file meta


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("DX", DigitalXRayImageStorageForPresentation), ("CR", ComputedRadiographyImageStorage)],
)
def test_radiograph_is_a_valid_part10_file(modality: str, sop_class: str) -> None:
    ds = read(samples.make_radiograph(modality=modality, rows=64, cols=48, bits=10))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == sop_class
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SOPInstanceUID.is_valid and ds.StudyInstanceUID.is_valid
    assert ds.Modality == modality and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.HighBit) == (64, 48, 10, 9)
    pixels = ds.pixel_array
    assert pixels.shape == (64, 48) and pixels.min() >= 0 and pixels.max() < 2**10


def test_radiograph_has_darker_lungs() -> None:
    pixels = read(samples.make_radiograph(rows=100, cols=100)).pixel_array.astype(float)
    lung, mediastinum = pixels[48, 30], pixels[48, 50]  # lung centres at x = 0.3 and 0.7
    assert lung < mediastinum - 0.2 * 4095


def test_monochrome1_stores_inverted_values_and_window() -> None:
    top = 2**12 - 1
    m2 = read(samples.make_radiograph(window=(1000.0, 500.0)))
    m1 = read(samples.make_radiograph(photometric="MONOCHROME1", window=(1000.0, 500.0)))
    assert m1.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(m1.pixel_array, top - m2.pixel_array)
    assert float(m1.WindowCenter) == top - float(m2.WindowCenter)
    assert float(m1.WindowWidth) == float(m2.WindowWidth)


def test_default_and_custom_phi() -> None:
    default = read(samples.make_radiograph())
    for keyword, value in samples.DEFAULT_PHI.items():
        assert str(default.data_element(keyword).value) == value
    custom = read(samples.make_radiograph(phi={"PatientName": "Custom^Name", "PatientID": "X1"}))
    assert str(custom.PatientName) == "Custom^Name" and custom.PatientID == "X1"
    assert "PatientAddress" not in custom
    with pytest.raises(ValueError):
        samples.make_radiograph(phi={"NotAKeyword": "x"})


def test_makers_are_deterministic_in_seed() -> None:
    assert samples.make_radiograph(seed=3) == samples.make_radiograph(seed=3)
    assert samples.make_radiograph(seed=3) != samples.make_radiograph(seed=4)
    assert samples.make_ct_series(slices=4, seed=3) == samples.make_ct_series(slices=4, seed=3)


def test_ct_series_is_one_consistent_shuffled_series() -> None:
    slices, thickness, origin = 12, 2.5, (-25.6, -25.6, -30.0)
    datasets = [read(p) for p in samples.make_ct_series(slices=slices, origin=origin)]
    assert len(datasets) == slices
    for ds in datasets:
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.Modality == "CT" and ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
        assert ds.SeriesInstanceUID.is_valid and ds.FrameOfReferenceUID.is_valid
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert len({ds.data_element(keyword).value for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == slices
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z != sorted(z)
    np.testing.assert_allclose(sorted(z), origin[2] + thickness * np.arange(slices), atol=1e-6)
    ordered = [read(p) for p in samples.make_ct_series(slices=slices, shuffle=False)]
    assert [int(ds.InstanceNumber) for ds in ordered] == list(range(1, slices + 1))


def test_ct_series_tissue_values_where_expected() -> None:
    centre, radius = (-10.0, 2.0, -2.5), 4.0
    spacing, origin = (0.8, 0.8), (-25.6, -25.6, -30.0)
    parts = samples.make_ct_series(nodules=((centre, radius),), shuffle=False, origin=origin)
    k = round((centre[2] - origin[2]) / 2.5)
    ds = read(parts[k])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    row = round((centre[1] - origin[1]) / spacing[0])
    col = round((centre[0] - origin[0]) / spacing[1])
    assert abs(hu[row, col] - 50) < 50  # nodule
    assert abs(hu[row, col - round(1.5 * radius / spacing[1])] + 800) < 50  # lung beside it
    assert abs(hu[0, 0] + 1000) < 50  # air in the corner
    assert abs(hu[32, 32] - 40) < 50  # mediastinum, between the lungs


@pytest.mark.parametrize(("bits", "mode"), [(8, "L"), (16, "I;16")])
def test_png(bits: int, mode: str) -> None:
    img = Image.open(BytesIO(samples.make_png(rows=30, cols=40, bits=bits)))
    assert img.format == "PNG" and img.mode == mode and img.size == (40, 30)


def test_zip_series_round_trips() -> None:
    parts = samples.make_ct_series(slices=3, rows=8, cols=8)
    with zipfile.ZipFile(BytesIO(samples.zip_series(parts))) as archive:
        assert [archive.read(name) for name in archive.namelist()] == parts
