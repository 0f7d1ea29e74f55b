"""Heatmap -> nodule candidates in patient mm (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.imaging.detection import candidates_from_heatmap

SHAPE = (32, 28, 20)


def affine_for(spacing=(0.8, 0.8, 2.5), origin=(-12.0, 30.0, -100.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def heatmap_with(peaks: list[tuple[tuple[int, int, int], float, float]]) -> np.ndarray:
    """Gaussian blobs of the given peak score, with the diameter written at each peak voxel."""
    grid = np.indices(SHAPE, dtype=np.float32)
    heatmap = np.zeros((2, *SHAPE), dtype=np.float32)
    for voxel, score, diameter in peaks:
        d2 = sum((grid[a] - voxel[a]) ** 2 for a in range(3))
        heatmap[0] = np.maximum(heatmap[0], score * np.exp(-d2 / 4.0))
        heatmap[1][voxel] = diameter
    return heatmap


def test_peaks_are_reported_in_mm_sorted_by_score() -> None:
    peaks = [((5, 6, 7), 0.7, 6.5), ((20, 20, 12), 0.95, 11.0), ((25, 5, 3), 0.5, 4.0)]
    affine = affine_for()
    found = candidates_from_heatmap(heatmap_with(peaks), affine, 0.3, 10, 5.0)
    expected = sorted(peaks, key=lambda p: -p[1])
    assert [c["score"] for c in found] == pytest.approx([p[1] for p in expected])
    for candidate, (voxel, _, diameter) in zip(found, expected, strict=True):
        assert candidate["centre_mm"] == pytest.approx((affine @ [*voxel, 1])[:3].tolist())
        assert candidate["diameter_mm"] == pytest.approx(diameter)
    json.dumps(found)  # plain Python types, ready for a response body


def test_threshold_and_max_candidates() -> None:
    peaks = [((5, 6, 7), 0.7, 6.5), ((20, 20, 12), 0.95, 11.0), ((25, 5, 3), 0.5, 4.0)]
    heatmap = heatmap_with(peaks)
    above = candidates_from_heatmap(heatmap, affine_for(), 0.6, 10, 5.0)
    assert [c["score"] for c in above] == pytest.approx([0.95, 0.7])
    top = candidates_from_heatmap(heatmap, affine_for(), 0.0, 1, 5.0)
    assert [c["score"] for c in top] == pytest.approx([0.95])
    assert candidates_from_heatmap(heatmap, affine_for(), 0.99, 10, 5.0) == []
    assert candidates_from_heatmap(heatmap, affine_for(), 0.3, 0, 5.0) == []


def test_suppression_distance_is_in_mm_not_voxels() -> None:
    # Two peaks 3 voxels apart along x (2.4 mm) and two 3 voxels apart along z (7.5 mm).
    peaks = [
        ((8, 8, 5), 0.9, 5.0),
        ((11, 8, 5), 0.8, 5.0),
        ((20, 20, 5), 0.9, 5.0),
        ((20, 20, 8), 0.8, 5.0),
    ]
    heatmap = np.zeros((2, *SHAPE), dtype=np.float32)
    for voxel, score, diameter in peaks:
        heatmap[0][voxel], heatmap[1][voxel] = score, diameter
    affine = affine_for(spacing=(0.8, 0.8, 2.5))
    kept = candidates_from_heatmap(heatmap, affine, 0.5, 10, 5.0)
    centres = {tuple(np.round(c["centre_mm"], 3)) for c in kept}
    mm = {tuple(np.round((affine @ [*v, 1])[:3], 3)) for v, _, _ in peaks}
    assert len(kept) == 3  # the x pair is merged, the z pair is not
    assert centres <= mm
    assert tuple(np.round((affine @ [11, 8, 5, 1])[:3], 3)) not in centres
    assert len(candidates_from_heatmap(heatmap, affine, 0.5, 10, 1.0)) == 4
    assert len(candidates_from_heatmap(heatmap, affine, 0.5, 10, 8.0)) == 2


def test_plateau_gives_one_candidate() -> None:
    heatmap = np.zeros((2, *SHAPE), dtype=np.float32)
    heatmap[0, 10:13, 10:13, 10:12] = 0.8
    found = candidates_from_heatmap(heatmap, affine_for(spacing=(1.0, 1.0, 1.0)), 0.5, 10, 6.0)
    assert len(found) == 1 and found[0]["score"] == pytest.approx(0.8)


def test_empty_and_malformed_heatmaps() -> None:
    empty = np.zeros((2, *SHAPE), dtype=np.float32)
    assert candidates_from_heatmap(empty, affine_for(), 0.5, 10, 5.0) == []
    nan = empty.copy()
    nan[0, 3, 3, 3] = np.nan
    assert candidates_from_heatmap(nan, affine_for(), 0.5, 10, 5.0) == []
    with pytest.raises(ValueError):
        candidates_from_heatmap(empty[:1], affine_for(), 0.5, 10, 5.0)
    with pytest.raises(ValueError):
        candidates_from_heatmap(empty, np.eye(3), 0.5, 10, 5.0)
