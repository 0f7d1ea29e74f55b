"""Network architectures, demo weights and the weights loader.

The loader is the one a platform engineer uses for real trained weights: point a manifest at a
state_dict, safetensors or TorchScript file plus its sha256. Demo weights are made from a seed
with numpy's PCG64 generator (bit-identical on every platform, unlike torch's vectorised RNG
paths) so the committed checksums hold on every machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DenseNet121, UNet
from safetensors.torch import load_file, save_file
from torch import nn

from serving.errors import ModelLoadError
from serving.repository.monai_bundle import load_bundle_network
from serving.schema.base import Weights
from serving.schema.imaging import Architecture


class Classifier(nn.Module):
    """Multi-label head: independent sigmoid per finding (ChestX-ray14 labels co-occur)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class NoduleCenterNet(nn.Module):
    """3D UNet feature extractor with a 1x1x1 head: objectness logit and diameter channel."""

    def __init__(self, channels: list[int], strides: list[int], num_res_units: int) -> None:
        super().__init__()
        self.unet = UNet(
            spatial_dims=3, in_channels=1, out_channels=channels[0], channels=channels,
            strides=strides, num_res_units=num_res_units,
        )
        self.head = nn.Conv3d(channels[0], 2, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.unet(x)))


class CenterNetDetector(nn.Module):
    """Dense 3D detector: channel 0 is a nodule-centre heatmap, channel 1 a diameter in mm."""

    def __init__(self, net: nn.Module, diameter_scale_mm: float) -> None:
        super().__init__()
        self.net = net
        self.diameter_scale_mm = diameter_scale_mm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        heat = torch.sigmoid(out[:, :1])
        diameter = nn.functional.softplus(out[:, 1:2]) * self.diameter_scale_mm
        return torch.cat([heat, diameter], dim=1)


def _param(arch: Architecture, key: str, default: Any) -> Any:
    return arch.params.get(key, default)


def build_backbone(arch: Architecture) -> nn.Module:
    if arch.name == "densenet121":
        return DenseNet121(
            spatial_dims=int(_param(arch, "spatial_dims", 2)),
            in_channels=int(_param(arch, "in_channels", 1)),
            out_channels=int(_param(arch, "out_channels", 14)),
        )
    return NoduleCenterNet(
        list(_param(arch, "channels", [8, 16, 32])),
        list(_param(arch, "strides", [2, 2])),
        int(_param(arch, "num_res_units", 1)),
    )


def wrap(arch: Architecture, backbone: nn.Module) -> nn.Module:
    if arch.name == "densenet121":
        return Classifier(backbone)
    return CenterNetDetector(backbone, float(_param(arch, "diameter_scale_mm", 8.0)))


# Detection heads start at a low prior probability of "nodule here" (RetinaNet/CenterNet
# initialisation), so demo weights propose a few candidates rather than saturate everywhere.
HEAD_PRIOR = 0.05
HEAD_WEIGHT_BOUND = 0.1  # small head weights, as in RetinaNet's head initialisation


def demo_state_dict(arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights with fan-in scaling, norms at identity."""
    rng = np.random.Generator(np.random.PCG64(seed))
    state = build_backbone(arch).state_dict()
    out: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        t = state[name]
        leaf = name.rsplit(".", 1)[-1]
        if name == "head.bias":
            arr = np.array([-math.log((1 - HEAD_PRIOR) / HEAD_PRIOR), 0.0])
        elif name == "head.weight":
            arr = rng.uniform(-HEAD_WEIGHT_BOUND, HEAD_WEIGHT_BOUND, size=t.shape)
        elif leaf in ("running_mean", "num_batches_tracked") or leaf == "bias":
            arr = np.zeros(t.shape)
        elif leaf == "running_var" or t.ndim == 1:
            arr = np.ones(t.shape)  # norm scales
        else:
            fan_in = math.prod(t.shape[1:])
            bound = math.sqrt(6.0 / fan_in)  # He-uniform: keeps ReLU activations in range
            arr = rng.uniform(-bound, bound, size=t.shape)
        out[name] = torch.from_numpy(arr).to(t.dtype).contiguous()
    return out


def save_demo_weights(arch: Architecture | None, weights: Weights, path: Path) -> None:
    if arch is None:
        raise ModelLoadError(f"{path}: demo weights need the manifest's architecture")
    if weights.demo_seed is None:
        raise ModelLoadError(f"{path}: no demo_seed in the manifest; supply real weights")
    if weights.format != "safetensors":
        raise ModelLoadError(f"{path}: demo weights are written as safetensors only")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = demo_state_dict(arch, weights.demo_seed)
    save_file(state, str(path), metadata={"medserve_demo_seed": str(weights.demo_seed)})


def load_network(
    arch: Architecture | None, weights: Weights, path: Path, device: str
) -> nn.Module:
    """Build the wrapped network from a verified weights file, in eval mode on `device`.

    A TorchScript file with no architecture in the manifest is the whole network (its output
    is the manifest's output tensor); with one, it is that architecture's backbone."""
    if weights.format == "onnx":
        raise ModelLoadError(f"{path}: an ONNX model runs on ONNX Runtime, not torch")
    if weights.format == "monai_bundle":  # the version folder is the bundle: models/<file>
        return load_bundle_network(path.parents[1], path, device)
    if arch is None and weights.format != "torchscript":
        raise ModelLoadError(f"{path}: {weights.format} weights need an architecture")
    try:
        if weights.format == "torchscript":
            backbone: nn.Module = torch.jit.load(str(path), map_location=device)
            if arch is None:
                return backbone.eval()
        else:
            assert arch is not None
            backbone = build_backbone(arch)
            state: Any
            if weights.format == "safetensors":
                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "state_dict" in state:
                    state = state["state_dict"]  # Lightning / MONAI bundle checkpoints
            backbone.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot load {weights.format} weights ({exc})") from None
    return wrap(arch, backbone).to(device).eval()


def freeze_for_inference(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """Trace and freeze: folds batch norms into convolutions and runs the whole graph in C++.

    Measured here on 2 cores (benchmarks/imaging.py context): +10% throughput when idle and
    ~1.5x when other Python threads compete for the CPU, because the frozen graph does not
    return to the interpreter between layers.
    """
    with torch.no_grad():
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
