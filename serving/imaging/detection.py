"""Nodule candidates from a detection heatmap, reported in patient millimetres.

Suppression runs in millimetres, not voxels, so one ``min_distance_mm`` means the same thing
whatever the model's grid spacing, and so anisotropic grids do not suppress more along one
axis than another. Local maxima come from a 3x3x3 max-pool, which is exact and needs no SciPy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _local_maxima(score: np.ndarray, threshold: float) -> np.ndarray:
    """Voxel indices [N, 3] of 26-neighbourhood maxima at or above ``threshold``."""
    tensor = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))[None, None]
    pooled = F.max_pool3d(tensor, kernel_size=3, stride=1, padding=1)
    peaks = (tensor == pooled) & (tensor >= threshold)
    return torch.nonzero(peaks[0, 0]).numpy()


def candidates_from_heatmap(
    heatmap: np.ndarray,
    affine: np.ndarray,
    threshold: float,
    max_candidates: int,
    min_distance_mm: float,
) -> list[dict]:
    """Peaks of channel 0 (objectness), NMS'd in mm, each with channel 1 (diameter, mm).

    Returns ``{"centre_mm": [x, y, z], "diameter_mm": float, "score": float}`` sorted by
    descending score. A flat plateau yields many equal maxima; greedy suppression keeps one
    of them when ``min_distance_mm`` exceeds the voxel size.
    """
    if heatmap.ndim != 4 or heatmap.shape[0] != 2:
        raise ValueError("heatmap must be [2, X, Y, Z]: objectness and diameter channels")
    if np.shape(affine) != (4, 4):
        raise ValueError("affine must be 4x4")
    if max_candidates <= 0:
        return []
    score = np.nan_to_num(heatmap[0], nan=0.0)
    voxels = _local_maxima(score, threshold)
    if len(voxels) == 0:
        return []
    scores = score[tuple(voxels.T)]
    order = np.argsort(-scores, kind="stable")  # ties: lowest voxel index first, reproducibly
    voxels, scores = voxels[order], scores[order]
    homogeneous = np.c_[voxels.astype(np.float64), np.ones(len(voxels))]
    centres = (np.asarray(affine, dtype=np.float64) @ homogeneous.T).T[:, :3]

    kept: list[int] = []
    alive = np.arange(len(voxels))
    while alive.size and len(kept) < max_candidates:
        best = alive[0]  # alive stays in descending-score order
        kept.append(int(best))
        distance = np.linalg.norm(centres[alive] - centres[best], axis=1)
        alive = alive[distance >= min_distance_mm]
        alive = alive[alive != best]
    return [
        {
            "centre_mm": [float(v) for v in centres[i]],
            "diameter_mm": float(heatmap[1][tuple(voxels[i])]),
            "score": float(scores[i]),
        }
        for i in kept
    ]
