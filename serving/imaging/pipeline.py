"""Per-task request pipelines: payload -> model input tensor, model output -> findings.

They run in the imaging replica (decode and preprocess are CPU work that scales with the
model's replicas, not with the gateway's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from serving.cancellation import Stop, check, never
from serving.errors import InvalidInput, UnsupportedMediaType
from serving.imaging.detection import candidates_from_heatmap
from serving.imaging.dicom import decode_png, decode_series, read_radiograph
from serving.imaging.preprocess import CTPreprocessor, RadiographPreprocessor
from serving.imaging.segmentation import label_mask, label_volumes
from serving.protocol.results import ResultFormat
from serving.schema.imaging import CTPreprocessing, ModelManifest, RadiographPreprocessing


@dataclass(frozen=True)
class Payload:
    """What the gateway hands over: the body's media type and its DICOM/PNG parts."""

    content_type: str
    parts: list[bytes]
    result: ResultFormat = ResultFormat.JSON


@dataclass
class Source:
    """What a prediction keeps of its input after decoding: the model grid's affine (CT), the
    DICOM headers, pixels dropped, that a DICOM or FHIR result references, and for a
    segmentation the series' own grid and the label mask (for a DICOM SEG)."""

    affine: np.ndarray | None = None
    headers: list[Dataset] = field(default_factory=list)
    series_affine: np.ndarray | None = None
    series_shape: tuple[int, int, int] | None = None
    mask: np.ndarray | None = None


class RadiographPipeline:
    def __init__(self, manifest: ModelManifest, pre: RadiographPreprocessing) -> None:
        self.labels = manifest.labels
        self.modalities = manifest.modalities
        self.transform = RadiographPreprocessor(pre.spatial_size, mean=pre.mean, std=pre.std)

    def prepare(self, payload: Payload, stop: Stop = never) -> tuple[np.ndarray, Source]:
        if len(payload.parts) != 1:
            raise InvalidInput("this model takes exactly one image per request")
        source = Source()
        if payload.content_type == "image/png":
            image = decode_png(payload.parts[0])
        elif payload.content_type == "application/dicom":
            image, header = read_radiograph(payload.parts[0], self.modalities)
            source.headers.append(header)
        else:
            raise UnsupportedMediaType(f"cannot decode {payload.content_type}")
        return self.transform(image)[None], source

    def findings(self, output: np.ndarray, source: Source) -> list[dict[str, Any]]:
        probs = output[0]
        ranked = sorted(zip(self.labels, probs.tolist(), strict=True), key=lambda p: -p[1])
        return [{"label": label, "probability": round(p, 6)} for label, p in ranked]


class CTPipeline:
    def __init__(self, manifest: ModelManifest, pre: CTPreprocessing) -> None:
        self.pre = pre
        self.modalities = manifest.modalities
        self.transform = CTPreprocessor(
            hu_min=pre.hu_window[0], hu_max=pre.hu_window[1], target_spacing=pre.target_spacing_mm,
            max_voxels=pre.max_resampled_voxels,
        )

    def prepare(self, payload: Payload, stop: Stop = never) -> tuple[np.ndarray, Source]:
        volume = decode_series(payload.parts, self.modalities, min_slices=self.pre.min_slices,
                               stop=stop)
        check(stop)  # before resampling, the one step that cannot stop part-way
        tensor, affine = self.transform(volume)
        return tensor[None], Source(affine, volume.headers, volume.affine,
                                    tuple(volume.hu.shape))  # type: ignore[arg-type]

    def findings(self, output: np.ndarray, source: Source) -> list[dict[str, Any]]:
        assert source.affine is not None
        found = candidates_from_heatmap(
            output[0], source.affine, threshold=self.pre.score_threshold,
            max_candidates=self.pre.max_candidates, min_distance_mm=self.pre.min_distance_mm,
        )
        return [{"label": "nodule", **c} for c in found]


class SegmentationPipeline(CTPipeline):
    """A CT series in, a label per voxel out: findings are per-label volumes; the mask stays
    on the source for a DICOM SEG result."""

    def __init__(self, manifest: ModelManifest, pre: CTPreprocessing) -> None:
        super().__init__(manifest, pre)
        self.labels = manifest.labels

    def findings(self, output: np.ndarray, source: Source) -> list[dict[str, Any]]:
        assert source.affine is not None
        source.mask = label_mask(output[0])
        return label_volumes(source.mask, self.labels, source.affine)


def make_pipeline(manifest: ModelManifest) -> RadiographPipeline | CTPipeline:
    pre = manifest.preprocessing
    if isinstance(pre, RadiographPreprocessing):
        return RadiographPipeline(manifest, pre)
    if manifest.task == "segmentation":
        return SegmentationPipeline(manifest, pre)
    return CTPipeline(manifest, pre)
