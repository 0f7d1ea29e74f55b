"""Linear layers with their weights packed once for oneDNN, for CPU decoding.

A decode step multiplies a few rows of activations (one per running sequence) by every weight
matrix of the model. Torch's `F.linear` hands that to MKL's sgemm, which copies the whole
weight matrix into its blocked layout on every call: at 16 streams that copy
(`mkl_blas_def_sgemm_scopy_right16_bdz`) was 27% of a decode step here (py-spy), as much as
the arithmetic. oneDNN takes a weight packed once into its blocked layout (what
`torch.compile`'s freezing pass does for CPU linears); after packing, each step only reads it.
Same float32 arithmetic, summed in another order: the served greedy tokens of the benchmark's
prompts were identical with and without packing.

Packing is checked once against `F.linear` on the first layer; a torch build without oneDNN,
or one whose result differs, keeps the stock layers (and logs why).
"""

from __future__ import annotations

import logging
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("ray.serve")

# Relative error a packed layer may show against F.linear on a random input: float32 sums in
# another order differ by ~1e-6 relative; a wrong layout differs by order one.
TOLERANCE = 1e-4


class PackedLinear(nn.Module):
    """`nn.Linear` for inference only, its weight held in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # The layout is chosen for `batch_hint` rows per call; any number of rows works.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed"


def _packable(module: nn.Module) -> TypeGuard[nn.Linear]:
    return type(module) is nn.Linear and module.weight.dtype == torch.float32 and (
        module.weight.device.type == "cpu")


def _matches(linear: nn.Linear, packed: PackedLinear) -> bool:
    x = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0))
    expected = F.linear(x, linear.weight, linear.bias)
    err = float((packed(x) - expected).abs().max()) / max(float(expected.abs().max()), 1e-12)
    return err < TOLERANCE


def pack_linears(model: nn.Module, batch_hint: int) -> int:
    """Replace the model's float32 CPU `nn.Linear` layers in place; returns how many."""
    targets = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if _packable(child)]
    if not targets:
        return 0
    if not torch.backends.mkldnn.is_available():
        log.warning("torch has no oneDNN: linear layers stay unpacked")
        return 0
    with torch.inference_mode():
        try:
            first = PackedLinear(targets[0][2], batch_hint)
            ok = _matches(targets[0][2], first)
        except RuntimeError as exc:
            log.warning("oneDNN packing failed (%s): linear layers stay unpacked", exc)
            return 0
        if not ok:
            log.warning("oneDNN-packed linear differs from F.linear: layers stay unpacked")
            return 0
        parent, name, _ = targets[0]
        setattr(parent, name, first)  # checked above: not packed a second time
        for parent, name, child in targets[1:]:
            setattr(parent, name, PackedLinear(child, batch_hint))
        _own_the_rest(model)
    return len(targets)


def _own_the_rest(model: nn.Module) -> None:
    """Copy what is left unpacked (embeddings, norms) out of the checkpoint's memory map.

    transformers maps the safetensors file and each tensor is a view into one mapping, so one
    remaining view (the embedding) would keep every original weight resident beside its packed
    copy: 1.44 GiB where 1.0 GiB is needed (SmolLM2-135M, in-process).
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
