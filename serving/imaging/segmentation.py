"""A segmentation output as findings: per label, the voxels it holds and their volume.

The output is [C, X, Y, Z], one channel per manifest label. With several channels each voxel
takes the label of its largest channel (a softmax's argmax); with one, the voxels at 0.5 or
above (a sigmoid's threshold). A label named "background" is not a finding. Volumes come from
the model grid's affine: voxels x |det| mm^3, in mL.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from monai.utils import SpaceKeys

BACKGROUND = "background"


def label_mask(output: np.ndarray) -> np.ndarray:
    """[C, X, Y, Z] -> uint8 [X, Y, Z] of channel indices (one channel: 1 where >= 0.5)."""
    if output.ndim != 4:
        raise ValueError("a segmentation output is [C, X, Y, Z]")
    if output.shape[0] == 1:
        return (np.nan_to_num(output[0]) >= 0.5).astype(np.uint8)
    return np.argmax(np.nan_to_num(output, nan=-np.inf), axis=0).astype(np.uint8)


def label_volumes(mask: np.ndarray, labels: list[str], affine: np.ndarray) -> list[dict]:
    """One finding per non-background label: voxel count and volume in mL, largest first."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    channels = [1] if len(labels) == 1 else range(len(labels))
    found = []
    for channel in channels:
        label = labels[channel if len(labels) > 1 else 0]
        if label.lower() == BACKGROUND:
            continue
        voxels = int(counts[channel]) if channel < len(counts) else 0
        found.append({"label": label, "voxels": voxels,
                      "volume_ml": round(voxels * voxel_ml, 3)})
    return sorted(found, key=lambda f: -f["voxels"])


def mask_on_series(mask: np.ndarray, model_affine: np.ndarray, series_affine: np.ndarray,
                   series_shape: tuple[int, int, int]) -> np.ndarray:
    """The label mask resampled (nearest) from the model's grid back onto the series' own
    voxels, [X, Y, Z] in slice order: the frames a DICOM SEG lays over the source images."""
    image = MetaTensor(torch.from_numpy(mask.astype(np.float32))[None],
                       affine=torch.as_tensor(model_affine, dtype=torch.float64),
                       meta={"space": SpaceKeys.LPS})
    out = SpatialResample(mode="nearest", padding_mode="zeros", dtype=np.float32)(
        image, dst_affine=torch.as_tensor(series_affine, dtype=torch.float64),
        spatial_size=series_shape)
    return np.rint(np.asarray(out[0])).astype(np.uint8)
