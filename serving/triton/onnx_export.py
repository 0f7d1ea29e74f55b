"""ONNX export for GPU Triton (onnxruntime platform), checked against the torch output."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from serving.errors import ModelLoadError
from serving.repository.networks import load_network
from serving.schema.imaging import ModelManifest, ModelVersion
from serving.triton.model_config import triton_io

OPSET = 17
# fp32 on both sides; kernels differ (oneDNN vs MLAS), so compare with a small tolerance.
ATOL = 1e-4


def export_onnx(
    manifest: ModelManifest, version: ModelVersion, weights: Path, out: Path, check_batch: int = 2
) -> float:
    """Write `out` and return the largest absolute difference from torch on a random batch."""
    io = triton_io(manifest)
    net = load_network(manifest.architecture, version.weights, weights, "cpu")
    example = torch.zeros(1, *[1 if d == -1 else d for d in io.input_dims])
    axes = {io.input_name: {0: "batch"}, io.output_name: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: deprecated in favour of torch.export, but it needs only the
        # `onnx` package and handles these (static-graph) networks in seconds.
        warnings.simplefilter("ignore", DeprecationWarning)
        # MONAI's instance norms use the input's statistics in eval mode too, which is what
        # the exporter warns about.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            net, (example,), str(out), dynamo=False, opset_version=OPSET,
            input_names=[io.input_name], output_names=[io.output_name], dynamic_axes=axes,
        )
    diff = check_onnx(net, out, io.input_name, example.shape[1:], check_batch)
    if diff > ATOL:
        out.unlink()
        raise ModelLoadError(
            f"{manifest.name} version {version.version}: ONNX export differs from torch "
            f"by {diff:.2e} (> {ATOL:g})"
        )
    return diff


def check_onnx(
    net: torch.nn.Module, path: Path, input_name: str, item_shape: torch.Size, batch: int
) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((batch, *item_shape)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {input_name: x})[:1]
    with torch.no_grad():
        y_torch = net(torch.from_numpy(x)).numpy()
    return float(np.abs(np.asarray(y_onnx) - y_torch).max())
