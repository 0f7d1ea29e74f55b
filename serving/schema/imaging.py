"""Manifest schema of an imaging model: tensors, preprocessing, weights, batching, SLO.

An imaging manifest says `kind: imaging` (the default); the repository loader picks the
schema by that key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from serving.protocol.datatypes import OIP_DATATYPES
from serving.schema.base import ManifestBase, ModelVersion, Strict


class TensorSpec(Strict):
    name: str = Field(description="Tensor name as seen on the Open Inference Protocol.")
    datatype: Literal[OIP_DATATYPES] = Field(  # type: ignore[valid-type]
        description="OIP datatype name, e.g. FP32."
    )
    shape: list[int] = Field(description="Shape; -1 means any size along that axis.")

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if not shape or any(d < -1 or d == 0 for d in shape):
            raise ValueError("shape must be non-empty, each dimension positive or -1")
        return shape


class CodedConcept(Strict):
    """A DICOM coded concept (PS3.3 Code Sequence Macro); FHIR gets it as a Coding."""

    scheme: str = Field(
        pattern=r"^[A-Z0-9_]{1,16}$",
        description="Coding scheme designator: SCT (SNOMED CT), DCM, LN (LOINC), or a local "
        "scheme starting with 99.",
    )
    value: str = Field(min_length=1, max_length=64, description="Code value in that scheme.")
    meaning: str = Field(min_length=1, max_length=64, description="Code meaning, for people.")
    category: Literal["organ", "tissue", "abnormal"] = Field(
        "abnormal",
        description="Segmented property category in a DICOM SEG (SNOMED CT Organ, Tissue, or "
        "Morphologically abnormal structure).",
    )


class Architecture(Strict):
    name: Literal["densenet121", "nodule-centernet"] = Field(
        description="Network family the weights belong to (see serving/repository/networks.py)."
    )
    params: dict[str, int | float | list[int]] = Field(
        default_factory=dict, description="Constructor arguments of the network."
    )


class RadiographPreprocessing(Strict):
    kind: Literal["radiograph"] = "radiograph"
    spatial_size: tuple[int, int] = Field((224, 224), description="Model input size (H, W).")
    mean: float = Field(0.5, description="Intensity mean subtracted after scaling to [0, 1].")
    std: float = Field(0.25, gt=0, description="Intensity std divided after scaling.")


class CTPreprocessing(Strict):
    kind: Literal["ct"] = "ct"
    hu_window: tuple[float, float] = Field((-1000.0, 400.0), description="HU clip range.")
    target_spacing_mm: tuple[float, float, float] = Field(
        (2.0, 2.0, 2.0), description="Resampled voxel size (x, y, z) in mm."
    )
    min_slices: int = Field(3, ge=1, description="Fewest instances accepted as a volume.")
    max_resampled_voxels: int = Field(
        32_000_000, ge=1,
        description="Largest volume after resampling to target_spacing_mm (413 beyond), checked "
        "before resampling: a chest CT at 2 mm is about 5 million voxels.",
    )
    roi_size: tuple[int, int, int] = Field((64, 64, 64), description="Sliding-window ROI.")
    sw_batch_size: int = Field(2, ge=1, description="Windows per sliding-window forward pass.")
    overlap: float = Field(0.25, ge=0, lt=1, description="Sliding-window overlap fraction.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Lowest candidate score kept.")
    max_candidates: int = Field(10, ge=1, description="Most candidates returned per scan.")
    min_distance_mm: float = Field(5.0, ge=0, description="NMS radius between candidates.")


Preprocessing = Annotated[RadiographPreprocessing | CTPreprocessing, Field(discriminator="kind")]


class Batching(Strict):
    max_batch_size: int = Field(8, ge=1, description="Largest batch `@serve.batch` forms.")
    batch_wait_timeout_ms: float = Field(
        5.0, ge=0, description="How long a partial batch waits for more requests."
    )


class SLO(Strict):
    latency_threshold_s: float = Field(gt=0, description="End-to-end latency threshold.")
    latency_objective: float = Field(
        0.99, gt=0, lt=1, description="Fraction of requests that must be under the threshold."
    )
    availability_objective: float = Field(
        0.999, gt=0, lt=1, description="Fraction of requests that must not fail with 5xx."
    )


class TritonSettings(Strict):
    """How Triton serves a model whose `backend` is `triton` (`medserve build-triton`)."""

    max_queue_delay_ms: float | None = Field(
        None, ge=0,
        description="Triton's dynamic batcher wait for a fuller batch (default: batching's).",
    )
    priority_levels: int = Field(
        2, ge=0, le=16, description="Dynamic-batching priority levels, 1 most urgent; 0: none."
    )
    default_priority_level: int | None = Field(
        None, ge=1, description="Level of requests that name none (default: the lowest)."
    )
    instance_count: int = Field(
        1, ge=1, description="Model instances per Triton server (instance_group count)."
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one call to Triton; past it the request gets 503."
    )

    @model_validator(mode="after")
    def _levels(self) -> TritonSettings:
        level = self.default_priority_level
        if level is not None and not 1 <= level <= self.priority_levels:
            raise ValueError("default_priority_level must be between 1 and priority_levels")
        return self


class ModelManifest(ManifestBase[ModelVersion]):
    kind: Literal["imaging"] = Field(
        "imaging", description="Manifest schema; LLM manifests say `kind: llm`."
    )
    task: Literal["classification", "detection", "segmentation"] = Field(
        description="What the model outputs: class probabilities (a radiograph), candidate "
        "points (CT), or a label per voxel (CT: one output channel per label)."
    )
    modalities: list[str] = Field(description="DICOM Modality values accepted, e.g. [CR, DX].")
    body_parts: list[str] | None = Field(
        None,
        description="BodyPartExamined values a study job routes to this model, e.g. [CHEST]; "
        "a series that names another body part is not sent to it (one that names none is). "
        "None: any body part.",
    )
    content_types: list[
        Literal["application/dicom", "image/png", "multipart/form-data", "application/zip"]
    ] = Field(description="Request body types the predict route takes.")
    labels: list[str] = Field(description="Output labels, in output-channel order.")
    finding_codes: dict[str, CodedConcept] = Field(
        default_factory=dict,
        description="Coded concept of a label in DICOM SR and FHIR results (e.g. SNOMED CT); a "
        "label without one is coded in Medserve's local scheme 99MEDSERVE by its name.",
    )
    architecture: Architecture | None = Field(
        None,
        description="Network the weights belong to; omitted when every version's file carries "
        "its own graph (onnx, or a whole-network torchscript).",
    )
    inputs: list[TensorSpec] = Field(description="OIP input tensors (preprocessed).")
    outputs: list[TensorSpec] = Field(description="OIP output tensors.")
    preprocessing: Preprocessing
    backend: Literal["torch", "triton"] = Field("torch", description="Inference backend.")
    triton: TritonSettings = Field(
        default_factory=TritonSettings, description="Triton settings (backend: triton)."
    )
    traffic: dict[str, int] | None = Field(
        None,
        description="Canary split of unpinned requests: version label -> weight (relative, "
        "e.g. percent); default: all to default_version. Changing it restarts no replica.",
    )
    batching: Batching = Field(default_factory=Batching)
    slo: SLO

    @field_validator("modalities")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]

    @field_validator("body_parts")
    @classmethod
    def _upper_parts(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [b.upper() for b in v]

    def routes(self, modality: str, body_part: str) -> bool:
        """Whether a study job sends a series of this modality and body part here."""
        return modality.upper() in self.modalities and (
            not body_part or self.body_parts is None or body_part.upper() in self.body_parts)

    @field_validator("traffic", mode="before")
    @classmethod
    def _labels_as_text(cls, v: object) -> object:
        # YAML reads `{1: 90}` with integer keys; version labels are text.
        return {str(k): w for k, w in v.items()} if isinstance(v, dict) else v

    @field_validator("traffic")
    @classmethod
    def _weights(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and (any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError("traffic weights must be >= 0 with a positive sum")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        labels = [v.version for v in self.versions]
        unknown = sorted(set(self.traffic or {}) - set(labels))
        if unknown:
            raise ValueError(f"traffic names versions not in versions: {', '.join(unknown)}")
        uncoded = sorted(set(self.finding_codes) - set(self.labels))
        if uncoded:
            raise ValueError(f"finding_codes names labels not in labels: {', '.join(uncoded)}")
        if self.task == "classification" and self.preprocessing.kind != "radiograph":
            raise ValueError("classification models take radiograph preprocessing")
        if self.task in ("detection", "segmentation") and self.preprocessing.kind != "ct":
            raise ValueError(f"{self.task} models take ct preprocessing")
        bare = [v.version for v in self.versions if v.weights.format in ("safetensors",
                "state_dict") or v.weights.demo_seed is not None]
        if bare and self.architecture is None:
            raise ValueError(f"versions {', '.join(bare)} hold weights only: name the architecture")
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError("imaging models have exactly one input and one output tensor")
        channels = self.outputs[0].shape[1] if len(self.outputs[0].shape) > 1 else -1
        if self.task in ("classification", "segmentation") and channels not in (
                -1, len(self.labels)):
            raise ValueError(f"{len(self.labels)} labels for {channels} output channels: "
                             "one label per channel")
        if self.backend == "triton" and not all(v.isdigit() and int(v) > 0 for v in labels):
            raise ValueError("Triton takes positive integer version labels (backend: triton)")
        return self

    def runtime(self, version: str) -> Literal["torch", "onnxruntime", "triton"]:
        """What runs a version: Triton (backend: triton), ONNX Runtime in the replica for a
        file that carries its graph (format: onnx), or torch in the replica."""
        if self.backend == "triton":
            return "triton"
        return "onnxruntime" if self.version(version).weights.format == "onnx" else "torch"

    @property
    def traffic_split(self) -> dict[str, int]:
        """Weights of unpinned requests by version, zero weights left out."""
        split = self.traffic or {self.served_version: 100}
        return {label: w for label, w in split.items() if w > 0}
