"""MONAI bundles (the MONAI Model Zoo's format): what the bundle says about itself, and its
network loaded the way MONAI loads it.

A bundle is a folder: `configs/metadata.json` (version, task, intended use, and
`network_data_format`: the input and output tensors, their channels and `channel_def`),
`configs/inference.json` (the `network_def`, pre- and post-processing) and the network as
`models/model.ts` (TorchScript) or `models/model.pt` (a state dict of `network_def`). The
version folder of a `monai_bundle` model is the bundle itself; the manifest's weights file is
the model file inside it, so its sha256 covers what is run.

The output goes through the activation of the bundle's own post-processing (`Activationsd`
with `softmax` or `sigmoid`), so a classifier answers probabilities as its authors computed
them; a bundle without one answers its network's output as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.errors import ModelLoadError
from serving.repository.json_files import read_json

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
MODEL_FILES = (Path("models/model.ts"), Path("models/model.pt"))


@dataclass(frozen=True)
class TensorFormat:
    name: str
    num_channels: int
    spatial_shape: list[int]
    kind: str  # network_data_format's "format": classes, segmentation, hounsfield, ...
    modality: str | None
    channel_def: dict[int, str]


@dataclass(frozen=True)
class BundleInfo:
    root: Path
    version: str
    task: str
    description: str
    intended_use: str | None
    input: TensorFormat
    output: TensorFormat

    @property
    def model_file(self) -> Path:
        """The bundle's network, relative to its root: TorchScript first, as MONAI Deploy."""
        for rel in MODEL_FILES:
            if (self.root / rel).is_file():
                return rel
        raise ModelLoadError(f"{self.root}: a bundle needs models/model.ts or models/model.pt")


def _json(path: Path) -> dict[str, Any]:
    return read_json(path, "MONAI bundle")


def _tensor(path: Path, section: Any, what: str) -> TensorFormat:
    if not isinstance(section, dict) or len(section) != 1:
        raise ModelLoadError(f"{path}: network_data_format must describe exactly one {what}")
    ((name, spec),) = section.items()
    try:
        channels = {int(k): str(v) for k, v in (spec.get("channel_def") or {}).items()}
        return TensorFormat(
            name=str(name), num_channels=int(spec["num_channels"]),
            spatial_shape=[int(d) for d in spec.get("spatial_shape") or []],
            kind=str(spec.get("format", "")), modality=spec.get("modality"),
            channel_def=dict(sorted(channels.items())),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ModelLoadError(f"{path}: network_data_format {what} {name!r} needs num_channels "
                             "and integer spatial_shape") from None


def read_bundle(root: Path) -> BundleInfo:
    path = root / METADATA
    meta = _json(path)
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, dict):
        raise ModelLoadError(f"{path}: no network_data_format")
    intended = meta.get("intended_use")
    return BundleInfo(
        root=root, version=str(meta.get("version", "")), task=str(meta.get("task", "")),
        description=" ".join(str(meta.get("description", "")).split()),
        intended_use=" ".join(str(intended).split()) if intended else None,
        input=_tensor(path, fmt.get("inputs"), "input"),
        output=_tensor(path, fmt.get("outputs"), "output"),
    )


class _Activated(nn.Module):
    def __init__(self, net: nn.Module, activation: str) -> None:
        super().__init__()
        self.net = net
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.softmax(y, dim=1) if self.activation == "softmax" else torch.sigmoid(y)


def _activation(config: dict[str, Any]) -> str | None:
    """The activation of the bundle's post-processing, read from the config (not run: its
    other transforms, such as argmax or saving files, are not part of serving)."""
    post = config.get("postprocessing")
    transforms = post.get("transforms", []) if isinstance(post, dict) else []
    for t in transforms:
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("Activationsd"):
            if t.get("softmax") is True:
                return "softmax"
            if t.get("sigmoid") is True:
                return "sigmoid"
    return None


def load_bundle_network(root: Path, model_file: Path, device: str) -> nn.Module:
    """The bundle's network in eval mode: `models/model.ts` with `torch.jit.load`, or
    `network_def` instantiated by MONAI's ConfigParser with `models/model.pt` loaded."""
    from monai.bundle import ConfigParser

    config = _json(root / INFERENCE)
    try:
        if model_file.suffix == ".ts":
            net: nn.Module = torch.jit.load(str(model_file), map_location=device)
        else:
            parser = ConfigParser()
            parser.read_meta(str(root / METADATA))
            parser.read_config(str(root / INFERENCE))
            parser["bundle_root"] = str(root)
            net = parser.get_parsed_content("network_def", instantiate=True)
            state = torch.load(model_file, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]  # CheckpointLoader's {"model": state_dict}
            net.load_state_dict(state, strict=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # ConfigParser, torch.load and load_state_dict raise many kinds
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{model_file}: cannot load the bundle's network ({text})") from None
    activation = _activation(config)
    net = net if activation is None else _Activated(net, activation)
    return net.to(device).eval()
