"""What an ONNX file says about itself, checked before anything is served: the graph is valid,
ONNX Runtime has a kernel for every operator, and its tensors are the manifest's.

A vendor's ONNX export carries its graph, so the manifest needs no architecture; it still
names the OIP tensors, and they must match the graph's (one input, one output, the same
element type, the same fixed dimensions). Every problem is a ModelLoadError naming the file,
raised at `medserve models check` or import time, never at request time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from serving.errors import ModelLoadError
from serving.protocol.datatypes import NAMES
from serving.schema.imaging import TensorSpec

# ONNX Runtime's own messages name operators and shapes, never data; they help the engineer.
_WHY_MAX = 300


def graph_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as OIP tensor specs (-1 for a symbolic dimension)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_short(exc)})") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(path, v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_spec(path, v) for v in model.graph.output]


def _spec(path: Path, value: Any) -> TensorSpec:
    tensor = value.type.tensor_type
    try:
        datatype = NAMES[np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type))]
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{path}: tensor {value.name!r} has a type OIP cannot carry") from None
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in tensor.shape.dim]
    if not dims:
        raise ModelLoadError(f"{path}: tensor {value.name!r} has no shape")
    return TensorSpec(name=value.name, datatype=datatype, shape=dims)


def check_matches(path: Path, graph: list[TensorSpec], declared: list[TensorSpec],
                  what: str) -> None:
    """The manifest's tensors are the graph's: count, element type, and fixed dimensions (a -1
    on either side matches anything)."""
    if len(graph) != len(declared):
        raise ModelLoadError(f"{path}: the graph has {len(graph)} {what}s, the manifest "
                             f"{len(declared)}")
    for g, d in zip(graph, declared, strict=True):
        fixed = len(g.shape) == len(d.shape) and all(
            a == b or -1 in (a, b) for a, b in zip(g.shape, d.shape, strict=True))
        if g.datatype != d.datatype or not fixed:
            raise ModelLoadError(
                f"{path}: {what} {g.name!r} is {g.datatype} {g.shape} in the graph, but the "
                f"manifest declares {d.datatype} {d.shape}")


def session(path: Path, threads: int = 1, gpu: bool = False) -> Any:
    """An ONNX Runtime session on the CPU provider, or CUDA first where asked and available;
    fails with the file's name when the runtime lacks an operator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime's Fail, NotImplemented, InvalidGraph...
        raise ModelLoadError(f"{path}: ONNX Runtime cannot run it ({_short(exc)})") from None


def check_onnx(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Everything that can be known before serving: valid graph, tensors as declared, every
    operator runnable here."""
    graph_in, graph_out = graph_tensors(path)
    check_matches(path, graph_in, inputs, "input")
    check_matches(path, graph_out, outputs, "output")
    session(path)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _WHY_MAX else text[: _WHY_MAX - 3] + "..."
