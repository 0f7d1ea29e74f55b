"""Model-ready tensors from decoded images, with MONAI doing the resampling.

MONAI is used rather than hand-written interpolation because its transforms are what the
models were trained with, and because ``Spacing`` on a ``MetaTensor`` carries the affine
through resampling, which is what lets detections be reported in patient millimetres.
Preprocessors are built once per model at load time and are safe to share across requests:
they hold only configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, ScaleIntensityRange, Spacing
from monai.utils import SpaceKeys

from serving.errors import InvalidInput, PayloadTooLarge
from serving.imaging.dicom import Volume


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    plain = tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
    return np.ascontiguousarray(plain.detach().cpu().numpy(), dtype=np.float32)


class RadiographPreprocessor:
    """[H, W] image in [0, 1] -> float32 [1, *spatial_size], normalised like the training data.

    ``mean`` and ``std`` are keyword-only with no default: they belong to the model's
    training recipe, and a silent 0/1 default would give plausible but wrong scores.
    """

    def __init__(
        self, spatial_size: Sequence[int] = (224, 224), *, mean: float, std: float
    ) -> None:
        if len(spatial_size) != 2 or min(spatial_size) <= 0:
            raise ValueError("spatial_size must be two positive integers")
        if not std > 0:
            raise ValueError("std must be positive")
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.mean, self.std = float(mean), float(std)
        self._upsample = Resize(self.spatial_size, mode="bilinear")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 2 or min(image.shape) < 1:
            raise InvalidInput("expected a single 2D greyscale image")
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        # Shrink with "area" (a box filter, so fine texture in a 3000 px radiograph does not
        # alias), then grow any axis still short with bilinear. MONAI's own anti_aliasing
        # option smooths with zero padding and darkens the image border, so it is not used.
        shrunk = tuple(min(n, m) for n, m in zip(image.shape, self.spatial_size, strict=True))
        if shrunk != image.shape:
            tensor = Resize(shrunk, mode="area")(tensor)
        if shrunk != self.spatial_size:
            tensor = self._upsample(tensor)
        return ((_to_numpy(tensor) - self.mean) / self.std).astype(np.float32)


class CTPreprocessor:
    """HU volume -> float32 [1, X', Y', Z'] in [0, 1] on ``target_spacing``, plus its affine.

    Resampling runs on HU before the intensity window so interpolation sees the real tissue
    contrast; ``border`` padding stops zeros (soft tissue in HU) bleeding into air at edges.
    """

    def __init__(
        self,
        hu_min: float = -1000.0,
        hu_max: float = 400.0,
        target_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        max_voxels: int = 32_000_000,
    ) -> None:
        if not hu_max > hu_min:
            raise ValueError("hu_max must be greater than hu_min")
        if len(target_spacing) != 3 or min(target_spacing) <= 0:
            raise ValueError("target_spacing must be three positive sizes in mm")
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.max_voxels = int(max_voxels)
        self._spacing = Spacing(
            pixdim=self.target_spacing, mode="bilinear", padding_mode="border", dtype=np.float32
        )
        self._window = ScaleIntensityRange(
            a_min=self.hu_min, a_max=self.hu_max, b_min=0.0, b_max=1.0, clip=True
        )

    def __call__(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        if volume.hu.ndim != 3 or volume.affine.shape != (4, 4):
            raise InvalidInput("expected a 3D volume with a 4x4 affine")
        image = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(volume.hu, dtype=np.float32))[None],
            affine=torch.as_tensor(volume.affine, dtype=torch.float64),
            # Our affine is DICOM LPS; MetaTensor otherwise labels it RAS, which would
            # mislead any orientation-aware transform added later.
            meta={"space": SpaceKeys.LPS},
        )
        # Checked before the work: a few slices declaring a huge spacing would resample to
        # gigabytes (3 slices of 16x16 at 140 mm: 263 million voxels at 2 mm).
        spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
        shape = np.maximum(1, np.ceil(np.array(volume.hu.shape) * spacing
                                      / np.array(self.target_spacing)))
        voxels = float(np.prod(shape))
        if not np.isfinite(voxels) or voxels > self.max_voxels:
            raise PayloadTooLarge(
                f"the series resamples to about {voxels:.3g} voxels at the model's spacing, "
                f"over its limit of {self.max_voxels:.3g}: check the slice spacing")
        resampled = self._spacing(image)
        assert isinstance(resampled, MetaTensor)
        # The output affine is MONAI's: it keeps each axis direction and the origin voxel
        # centre and only rescales the columns, so it must be read back, not recomputed.
        affine = resampled.affine.detach().cpu().numpy().astype(np.float64)
        windowed = self._window(resampled)
        assert isinstance(windowed, torch.Tensor)
        return _to_numpy(windowed), affine
