"""Triton `config.pbtxt` generated from a manifest.

The config is built as Triton's own protobuf message (tritonclient ships `model_config_pb2`)
and printed in text format, so a misspelt field fails here rather than when Triton loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.schema.imaging import CTPreprocessing, ModelManifest

Format = Literal["python", "onnx"]
MANIFEST_PARAM = "medserve_manifest"
THREADS_PARAM = "medserve_threads"


@dataclass(frozen=True)
class TritonIO:
    """What one Triton request carries: up to `max_batch_size` items of `input_dims`."""

    input_name: str
    output_name: str
    datatype: str
    max_batch_size: int
    input_dims: list[int]
    output_dims: list[int]


def triton_io(manifest: ModelManifest) -> TritonIO:
    """Radiographs go whole, in batches; CT volumes differ in size, so Triton serves the
    network on sliding-window ROIs and Medserve runs the window loop (as MONAI's inferer)."""
    inp, out = manifest.inputs[0], manifest.outputs[0]
    pre = manifest.preprocessing
    if isinstance(pre, CTPreprocessing):
        roi = list(pre.roi_size)
        return TritonIO(inp.name, out.name, inp.datatype, pre.sw_batch_size,
                        [inp.shape[1], *roi], [out.shape[1], *roi])
    return TritonIO(inp.name, out.name, inp.datatype, manifest.batching.max_batch_size,
                    inp.shape[1:], out.shape[1:])


def model_config(manifest: ModelManifest, fmt: Format, threads: int = 1) -> mc.ModelConfig:
    io = triton_io(manifest)
    settings = manifest.triton
    dtype = mc.DataType.Value(f"TYPE_{io.datatype}")
    config = mc.ModelConfig(name=manifest.name, max_batch_size=io.max_batch_size)
    if fmt == "onnx":
        config.platform = "onnxruntime_onnx"
    else:
        config.backend = "python"
        config.parameters[MANIFEST_PARAM].string_value = manifest.model_dump_json()
        config.parameters[THREADS_PARAM].string_value = str(threads)
    config.input.add(name=io.input_name, data_type=dtype, dims=io.input_dims)
    config.output.add(name=io.output_name, data_type=dtype, dims=io.output_dims)
    config.version_policy.specific.versions.extend(int(v.version) for v in manifest.versions)
    # The ONNX export is for GPU Triton; the Python backend is the CPU-only path.
    kind = mc.ModelInstanceGroup.Kind.KIND_GPU if fmt == "onnx" else (
        mc.ModelInstanceGroup.Kind.KIND_CPU
    )
    config.instance_group.add(kind=kind, count=settings.instance_count)
    delay_ms = settings.max_queue_delay_ms
    if delay_ms is None:
        delay_ms = manifest.batching.batch_wait_timeout_ms
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = round(delay_ms * 1e3)
    if settings.priority_levels:
        batching.priority_levels = settings.priority_levels
        batching.default_priority_level = (
            settings.default_priority_level or settings.priority_levels
        )
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def manifest_from_parameters(parameters: dict[str, dict[str, str]]) -> ModelManifest:
    """The manifest a Python-backend model was built from (Triton hands parameters as JSON)."""
    return ModelManifest.model_validate(json.loads(parameters[MANIFEST_PARAM]["string_value"]))
