"""Linear layers with their weights packed once for oneDNN, for CPU decoding.

A decode step multiplies a few rows of activations (one per running sequence) by every weight
matrix of the model. Torch's `F.linear` hands that to MKL's sgemm, which copies the whole
weight matrix into its blocked layout on every call: at 16 streams that copy
(`mkl_blas_def_sgemm_scopy_right16_bdz`) was 27% of a decode step here (py-spy), as much as
the arithmetic. oneDNN takes a weight packed once into its blocked layout (what
`torch.compile`'s freezing pass does for CPU linears); after packing, each step only reads it.
Same float32 arithmetic, summed in another order: the served greedy tokens of the benchmark's
prompts were identical with and without packing.

Sibling projections a decoder layer applies to the same input one after another (query, key
and value; the MLP's gate and up) are packed as one matrix, so each layer makes two matmul calls
where it made five: fewer, wider calls (a 16-stream decode step on one thread, in-process:
96.7 -> 89.9 ms, the same greedy tokens for all 49 prompts of the LLM benchmark).

Packing is checked once against `F.linear`, on the first sibling group (or linear); a
torch build without oneDNN, or one whose result differs, keeps the stock layers (and logs why).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("ray.serve")

# Relative error a packed layer may show against F.linear on a random input: float32 sums in
# another order differ by ~1e-6 relative; a wrong layout differs by order one.
TOLERANCE = 1e-4
# Children that read the same input, called in this order (Llama, Mistral, Qwen and Gemma
# layers name them so).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class PackedLinear(nn.Module):
    """`nn.Linear` for inference only, its weight held in oneDNN's blocked layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # The layout is chosen for `batch_hint` rows per call; any number of rows works.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = None if bias is None else bias.detach()

    @classmethod
    def of(cls, linear: nn.Linear, batch_hint: int) -> PackedLinear:
        return cls(linear.weight, linear.bias, batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN-packed"


class SiblingGroup:
    """Linears that read one input, packed as one: the first call computes every output."""

    def __init__(self, linears: Sequence[nn.Linear], batch_hint: int) -> None:
        weight = torch.cat([linear.weight.detach() for linear in linears])
        biases = [linear.bias for linear in linears]
        bias = None if all(b is None for b in biases) else torch.cat([
            linear.weight.new_zeros(linear.out_features) if b is None else b.detach()
            for linear, b in zip(linears, biases, strict=True)])
        self.packed = PackedLinear(weight, bias, batch_hint)
        self.sizes = [linear.out_features for linear in linears]
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] = ()

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # The same tensor object as the last call's: the siblings' outputs are already here.
        # (A layer makes a new input tensor per forward, and this holds it, so its id stays.)
        if x is not self._input:
            self._outputs = self.packed(x).split(self.sizes, dim=-1)
            self._input = x
        out = self._outputs[index]
        if index == len(self.sizes) - 1:  # the last sibling: let go of the input and outputs
            self._input, self._outputs = None, ()
        return out


class Sibling(nn.Module):
    """One linear of a `SiblingGroup`, in the place of the `nn.Linear` it was."""

    def __init__(self, group: SiblingGroup, index: int, in_features: int) -> None:
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = in_features, group.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x, self.index)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"oneDNN-packed with its siblings ({self.index + 1} of {len(self.group.sizes)})")


def _packable(module: object) -> TypeGuard[nn.Linear]:
    return type(module) is nn.Linear and module.weight.dtype == torch.float32 and (
        module.weight.device.type == "cpu")


def _matches(linears: Sequence[nn.Linear], packed: Sequence[nn.Module]) -> bool:
    x = torch.randn(3, 5, linears[0].in_features, generator=torch.Generator().manual_seed(0))
    for linear, module in zip(linears, packed, strict=True):
        expected = F.linear(x, linear.weight, linear.bias)
        err = float((module(x) - expected).abs().max()) / max(float(expected.abs().max()), 1e-12)
        if not err < TOLERANCE:
            return False
    return True


def _units(model: nn.Module) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """(parent, child names) to pack as one: sibling groups, then every other packable linear."""
    units: list[tuple[nn.Module, tuple[str, ...]]] = []
    grouped: set[int] = set()
    for parent in model.modules():
        for names in SIBLINGS:
            children = [getattr(parent, name, None) for name in names]
            if all(_packable(c) for c in children) and len(
                    {c.in_features for c in children if isinstance(c, nn.Linear)}) == 1:
                units.append((parent, names))
                grouped.update(id(c) for c in children)
    return units + [(parent, (name,)) for parent in model.modules()
                    for name, child in parent.named_children()
                    if _packable(child) and id(child) not in grouped]


def _packed(linears: Sequence[nn.Linear], batch_hint: int) -> list[nn.Module]:
    if len(linears) == 1:
        return [PackedLinear.of(linears[0], batch_hint)]
    group = SiblingGroup(linears, batch_hint)
    return [Sibling(group, i, linears[0].in_features) for i in range(len(linears))]


def pack_linears(model: nn.Module, batch_hint: int) -> int:
    """Replace the model's float32 CPU `nn.Linear` layers in place; returns how many."""
    units = _units(model)
    if not units:
        return 0
    if not torch.backends.mkldnn.is_available():
        log.warning("torch has no oneDNN: linear layers stay unpacked")
        return 0
    replaced = 0
    with torch.inference_mode():
        for i, (parent, names) in enumerate(units):
            linears = [getattr(parent, name) for name in names]
            if i == 0:  # checked once, on the first unit (a sibling group where there is one)
                try:
                    modules = _packed(linears, batch_hint)
                    ok = _matches(linears, modules)
                except RuntimeError as exc:
                    log.warning("oneDNN packing failed (%s): linear layers stay unpacked", exc)
                    return 0
                if not ok:
                    log.warning("oneDNN-packed linear differs from F.linear: layers stay unpacked")
                    return 0
            else:
                modules = _packed(linears, batch_hint)
            for name, module in zip(names, modules, strict=True):
                setattr(parent, name, module)
            replaced += len(names)
        _own_the_rest(model)
    return replaced


def _own_the_rest(model: nn.Module) -> None:
    """Copy what is left unpacked (embeddings, norms) out of the checkpoint's memory map.

    transformers maps the safetensors file and each tensor is a view into one mapping, so one
    remaining view (the embedding) would keep every original weight resident beside its packed
    copy: 1.44 GiB where 1.0 GiB is needed (SmolLM2-135M, in-process).
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
