"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) infer codec, with Triton's binary extension.

Pure bytes/dicts <-> numpy, no web framework. A request body is a JSON header, optionally followed
by raw little-endian tensor bytes; the ``Inference-Header-Content-Length`` HTTP header gives the
JSON length. Each binary tensor carries ``parameters.binary_data_size`` and the raw sections follow
in the order the tensors are listed in the JSON. Responses use the same layout, which is what
``tritonclient.http.InferResult`` decodes. Error messages never echo tensor data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.errors import InvalidInput, MedserveError, PayloadTooLarge
from serving.protocol.datatypes import DATATYPES, UNSUPPORTED
from serving.protocol.datatypes import NAMES as _NAMES
from serving.protocol.headers import INFERENCE_HEADER_LENGTH as HEADER_LENGTH


class TensorSpecLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output the model produces
    binary_output_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def _q(name: object) -> str:
    """Quote a name of the model's own (from its manifest) for an error message. Names a
    client sent are never quoted back: errors point at them by position (`inputs[0]`)."""
    return repr(str(name))


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def datatype_of(array: np.ndarray) -> str:
    """OIP datatype name of ``array``'s dtype (byte order ignored)."""
    name = _NAMES.get(np.dtype(array.dtype).newbyteorder("="))
    if name is None:
        raise MedserveError(f"numpy dtype {array.dtype.str} has no supported OIP datatype")
    return name


def _dtype(where: str, datatype: object) -> np.dtype:
    if not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'datatype' must be a string")
    if datatype in UNSUPPORTED:
        raise InvalidInput(f"{where}: datatype {datatype} is not supported")
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype; supported: {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def _params(where: str, obj: dict[str, Any]) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    if "shared_memory_region" in params:
        raise InvalidInput(f"{where}: shared memory is not supported")
    return params


def _flag(where: str, params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: parameter '{key}' must be a boolean")
    return value


def _flatten(data: list[Any]) -> list[Any]:
    """Flatten nested JSON lists iteratively (no recursion limit on deep nesting)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _from_json(where: str, data: object, dtype: np.dtype, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list")
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"{where}: 'data' has {len(flat)} elements, shape needs {count}")
    allowed: tuple[type, ...] = {"b": (bool,), "f": (int, float)}.get(dtype.kind, (int,))
    if any(type(v) not in allowed for v in flat):
        kind = {"b": "booleans", "f": "numbers"}.get(dtype.kind, "integers")
        raise InvalidInput(f"{where}: 'data' must contain only {kind}")
    if dtype.kind in "iu" and flat:
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise InvalidInput(f"{where}: 'data' has values out of range for {_NAMES[dtype]}")
    return np.array(flat, dtype=dtype)


def _parse_input(
    index: int, spec: object, raw: memoryview, offset: int
) -> tuple[str, np.ndarray, int]:
    """Decode one input; binary data is read at ``offset``. Returns name, array, next offset."""
    if not isinstance(spec, dict):
        raise InvalidInput(f"inputs[{index}] must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}]: 'name' must be a non-empty string")
    where = f"inputs[{index}]"
    shape = spec.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    if "datatype" not in spec:
        raise InvalidInput(f"{where}: 'datatype' is missing")
    dtype, count = _dtype(where, spec["datatype"]), math.prod(shape)
    size = _params(where, spec).get("binary_data_size")
    if size is None and "data" not in spec:
        raise InvalidInput(f"{where}: has neither 'data' nor binary_data_size")
    if size is None:
        array = _from_json(where, spec["data"], dtype, count)
    elif "data" in spec:
        raise InvalidInput(f"{where}: give either 'data' or binary_data_size, not both")
    elif type(size) is not int or size != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: binary_data_size must be {count * dtype.itemsize} bytes "
            f"for shape {_dims(shape)} {spec['datatype']}"
        )
    elif offset + size > len(raw):
        raise InvalidInput(f"{where}: binary data is truncated")
    else:
        wire = np.uint8 if dtype.kind == "b" else dtype.newbyteorder("<")
        # astype copies: the array owns its data, in native order, with BOOL bytes as 0/1
        array = np.frombuffer(raw, dtype=wire, count=count, offset=offset).astype(dtype)
        offset += size
    try:
        return name, array.reshape(shape), offset
    except (ValueError, OverflowError):
        raise InvalidInput(f"{where}: shape {_dims(shape)} is not supported") from None


# JSON is for small tensors: a 224x224 image batch of 8 is ~8 MB of JSON text; anything larger
# belongs in the binary tensor extension, which costs no parsing.
MAX_JSON_BYTES = 16 << 20


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an OIP v2 infer request; ``header_length`` is ``Inference-Header-Content-Length``."""
    end = len(body) if header_length is None else header_length
    if type(end) is not int or not 0 <= end <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer within the {len(body)}-byte body")
    if end > MAX_JSON_BYTES:  # parsed JSON costs ~30x its text: bound it before parsing
        raise PayloadTooLarge(f"the JSON part of an infer request is limited to "
                              f"{MAX_JSON_BYTES >> 20} MiB; send large tensors as binary data "
                              "(the binary tensor extension)")
    try:
        doc = json.loads(bytes(body[:end]))
    except (ValueError, RecursionError):
        raise InvalidInput("request header is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request header must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("request 'id' must be a string")
    parameters = _params("request", doc)
    binary_default = _flag("request", parameters, "binary_data_output", False)
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidInput("request 'inputs' must be a non-empty list")
    raw, offset = memoryview(body), end
    inputs: dict[str, np.ndarray] = {}
    for index, spec in enumerate(specs):
        name, array, offset = _parse_input(index, spec, raw, offset)
        if name in inputs:
            raise InvalidInput(f"inputs[{index}]: this input name is given more than once")
        inputs[name] = array
    if offset != len(body):
        raise InvalidInput(
            f"binary inputs declare {offset - end} bytes but the body has "
            f"{len(body) - end} bytes after the JSON header"
        )
    outputs = _parse_outputs(doc.get("outputs"), binary_default)
    return InferRequest(request_id, inputs, outputs, binary_default, parameters)


def _parse_outputs(specs: object, binary_default: bool) -> list[RequestedOutput] | None:
    if specs is None or specs == []:
        return None
    if not isinstance(specs, list):
        raise InvalidInput("request 'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        where = f"outputs[{index}]"
        if any(o.name == spec["name"] for o in outputs):
            raise InvalidInput(f"{where} is requested more than once")
        params = _params(where, spec)
        if params.get("classification"):
            raise InvalidInput(f"{where}: classification outputs are not supported")
        binary = _flag(where, params, "binary_data", binary_default)
        outputs.append(RequestedOutput(spec["name"], binary))
    return outputs


def validate_inputs(
    inputs: dict[str, np.ndarray], specs: Sequence[TensorSpecLike], max_batch: int | None = None
) -> None:
    """Check names, datatypes and shapes of ``inputs`` against the model's specs (-1: any size),
    and a batch axis (a leading -1) against ``max_batch``: one request larger than what the
    deployment batches would hold its replica for as long as many (413)."""
    expected = {spec.name for spec in specs}
    for spec in specs:
        if spec.name not in inputs:
            expect = f"{spec.datatype} {_dims(spec.shape)}"
            raise InvalidInput(f"missing input {_q(spec.name)} (expected {expect})")
    if set(inputs) - expected:
        names = ", ".join(_q(n) for n in sorted(expected))
        raise InvalidInput(f"an input name the model does not have; its inputs: {names}")
    for spec in specs:
        array, where = inputs[spec.name], f"input {_q(spec.name)}"
        got = datatype_of(array)
        if got != spec.datatype:
            raise InvalidInput(f"{where}: expected datatype {spec.datatype}, got {got}")
        want = list(spec.shape)
        if len(want) != array.ndim or any(
            w not in (-1, g) for w, g in zip(want, array.shape, strict=True)
        ):
            raise InvalidInput(f"{where}: expected shape {_dims(want)}, got {_dims(array.shape)}")
        if max_batch is not None and want[0] == -1 and array.shape[0] > max_batch:
            raise PayloadTooLarge(f"{where}: a batch of {array.shape[0]} exceeds the model's "
                                  f"max_batch_size {max_batch}; send smaller batches")


def select_outputs(
    outputs: dict[str, np.ndarray], request: InferRequest
) -> list[tuple[str, np.ndarray, bool]]:
    """Pick the requested outputs in request order, each with whether to send it as binary."""
    if request.outputs is None:
        return [(name, array, request.binary_output_default) for name, array in outputs.items()]
    for index, wanted in enumerate(request.outputs):
        if wanted.name not in outputs:
            raise InvalidInput(f"outputs[{index}]: not an output of the model; its outputs: "
                               f"{', '.join(_q(n) for n in outputs)}")
    return [(o.name, outputs[o.name], o.binary) for o in request.outputs]


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, dict[str, str]]:
    """Encode an infer response; returns the body and the HTTP headers to set."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            wire = DATATYPES[datatype].newbyteorder("<")
            data = np.ascontiguousarray(array, dtype=wire).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers
