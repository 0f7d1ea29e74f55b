"""MONAI preprocessing: shapes, intensities and, for CT, world coordinates (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import InvalidInput, PayloadTooLarge
from serving.imaging.dicom import Volume, decode_series
from serving.imaging.preprocess import CTPreprocessor, RadiographPreprocessor
from serving.testing import samples

# --- radiographs ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(512, 400), (100, 120), (224, 224), (600, 90)])
def test_radiograph_shape_and_normalisation(shape: tuple[int, int]) -> None:
    mean, std, value = 0.45, 0.22, 0.7
    pre = RadiographPreprocessor(mean=mean, std=std)
    out = pre(np.full(shape, value, dtype=np.float32))
    assert out.dtype == np.float32 and out.shape == (1, 224, 224)
    np.testing.assert_allclose(out, (value - mean) / std, atol=1e-4)


def test_radiograph_keeps_layout_and_custom_size() -> None:
    image = np.zeros((300, 200), dtype=np.float32)
    image[:, :100] = 1.0  # bright left half
    out = RadiographPreprocessor((64, 32), mean=0.0, std=1.0)(image)[0]
    assert out.shape == (64, 32)
    assert out[:, :12].mean() > 0.95 and out[:, -12:].mean() < 0.05


def test_radiograph_anti_aliases_when_downsizing() -> None:
    checker = (np.indices((448, 448)).sum(axis=0) % 2).astype(np.float32)  # 1-pixel stripes
    out = RadiographPreprocessor(mean=0.0, std=1.0)(checker)
    assert out.std() < 0.1 * checker.std()  # aliasing would keep a high-contrast pattern
    assert out.mean() == pytest.approx(checker.mean(), abs=0.02)


def test_radiograph_rejects_bad_input_and_config() -> None:
    pre = RadiographPreprocessor(mean=0.5, std=0.25)
    with pytest.raises(InvalidInput):
        pre(np.zeros((3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError):
        RadiographPreprocessor(mean=0.5, std=0.0)
    with pytest.raises(TypeError):
        RadiographPreprocessor((224, 224), 0.5, 0.25)  # type: ignore[misc]


# --- CT ------------------------------------------------------------------------------------


def world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).T.reshape(*shape, 3)


def weighted_centre_mm(image: np.ndarray, affine: np.ndarray, level: float) -> np.ndarray:
    weights = np.where(image > level, image, 0.0)
    voxel = (np.indices(image.shape).reshape(3, -1) @ weights.ravel()) / weights.sum()
    return (affine @ np.r_[voxel, 1.0])[:3]


def test_ct_window_maps_hu_range_to_unit_interval_and_clips() -> None:
    hu_min, hu_max = -1000.0, 400.0
    pre = CTPreprocessor(hu_min=hu_min, hu_max=hu_max, target_spacing=(2.0, 2.0, 2.0))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for hu, expected in [(hu_min - 500, 0.0), (hu_max + 500, 1.0), ((hu_min + hu_max) / 2, 0.5)]:
        out, _ = pre(Volume(np.full((8, 8, 8), hu, dtype=np.float32), affine))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_ct_affine_keeps_directions_and_origin_and_takes_target_spacing() -> None:
    target = (1.0, 1.5, 2.0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.7, -0.9, 2.5])  # anisotropic, one axis flipped
    affine[:3, 3] = [10.0, 20.0, -50.0]
    hu = np.zeros((40, 30, 12), dtype=np.float32)
    out, new_affine = CTPreprocessor(target_spacing=target)(Volume(hu, affine))
    assert out.ndim == 4 and out.shape[0] == 1
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), target)
    np.testing.assert_allclose(np.sign(new_affine[:3, :3]), np.sign(affine[:3, :3]))
    np.testing.assert_allclose(new_affine[:3, 3], affine[:3, 3])
    extent = np.abs(np.diag(affine[:3, :3])) * (np.array(hu.shape) - 1)
    assert np.all(np.abs((np.array(out.shape[1:]) - 1) * target - extent) <= np.array(target))


@pytest.mark.parametrize("oblique", [False, True])
def test_ct_resampling_keeps_a_blob_at_its_patient_coordinate(oblique: bool) -> None:
    target = (1.0, 1.0, 1.0)
    affine = np.eye(4)
    directions = np.eye(3)
    if oblique:  # rotate 30 degrees about z: an oblique acquisition plane
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        directions = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine[:3, :3] = directions @ np.diag([0.7, -0.9, 2.5])
    affine[:3, 3] = [10.0, 20.0, -50.0]
    shape = (48, 40, 24)
    centre_voxel = np.array([29.3, 17.6, 11.4])
    centre_mm = (affine @ np.r_[centre_voxel, 1.0])[:3]
    distance = np.linalg.norm(world_grid(shape, affine) - centre_mm, axis=-1)
    hu = np.where(distance <= 5.0, 400.0, -1000.0).astype(np.float32)

    out, new_affine = CTPreprocessor(target_spacing=target)(Volume(hu, affine))
    found = weighted_centre_mm(out[0], new_affine, 0.5)
    assert np.linalg.norm(found - centre_mm) <= np.linalg.norm(target)


def test_ct_series_nodule_survives_decode_and_resampling() -> None:
    centre = (-10.0, 2.0, -2.5)
    parts = samples.make_ct_series(nodules=((centre, 4.0),))
    base = samples.make_ct_series(nodules=())
    pre = CTPreprocessor(target_spacing=(1.0, 1.0, 1.0))
    out, affine = pre(decode_series(parts, ["CT"]))
    ref, ref_affine = pre(decode_series(base, ["CT"]))
    np.testing.assert_array_equal(affine, ref_affine)
    found = weighted_centre_mm(out[0] - ref[0], affine, 0.2)
    assert np.linalg.norm(found - centre) <= np.sqrt(3.0)


def test_ct_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        CTPreprocessor(hu_min=100, hu_max=-100)
    with pytest.raises(ValueError):
        CTPreprocessor(target_spacing=(1.0, 0.0, 1.0))


def test_a_resampling_bomb_is_refused_before_any_resampling() -> None:
    """3 slices of 16x16 at 140 mm would resample to ~263 million voxels (GBs) at 2 mm."""
    bomb = Volume(np.zeros((16, 16, 3), np.float32), np.diag([140.0, 140.0, 140.0, 1.0]))
    pre = CTPreprocessor(target_spacing=(2.0, 2.0, 2.0))
    with pytest.raises(PayloadTooLarge, match=r"resamples to about 2\.63e\+08 voxels"):
        pre(bomb)
    normal = Volume(np.zeros((64, 64, 40), np.float32), np.diag([0.7, 0.7, 1.25, 1.0]))
    assert pre(normal)[0].shape == (1, 23, 23, 25)  # an ordinary series still passes
