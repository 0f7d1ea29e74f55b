"""OIP v2 codec, checked against tritonclient's own request builder and response parser."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from serving.errors import InvalidInput, MedserveError, PayloadTooLarge
from serving.protocol.oip import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    datatype_of,
    encode_infer_response,
    parse_infer_request,
    select_outputs,
    validate_inputs,
)

SHAPES = [(), (0,), (1,), (7,), (2, 3), (2, 0, 4), (1, 1, 5, 3)]
MARKER = "PATIENT-SECRET-7731"


def random_array(datatype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        if array.size >= 2:  # always include the extremes of the range
            array.flat[0], array.flat[-1] = info.min, info.max
        return array
    array = np.asarray(rng.standard_normal(size=shape) * 1e3, dtype=dtype)
    if array.size >= 3:
        array.flat[0], array.flat[1], array.flat[2] = np.nan, np.inf, -0.0
    return array


def triton_body(
    arrays: dict[str, np.ndarray], binary: bool | dict[str, bool], outputs=None, **kwargs
) -> tuple[bytes, int | None]:
    inputs = []
    for name, array in arrays.items():
        item = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        as_binary = binary if isinstance(binary, bool) else binary[name]
        inputs.append(item.set_data_from_numpy(array, binary_data=as_binary))
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs, **kwargs)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def triton_parse(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    length = headers.get("Inference-Header-Content-Length")
    return httpclient.InferResult.from_response_body(
        body, False, None if length is None else int(length)
    )


# --- requests built by tritonclient -------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_request_round_trip(datatype: str, shape: tuple[int, ...], binary: bool) -> None:
    arrays = {"x": random_array(datatype, shape, seed=len(shape) * 31 + len(datatype))}
    body, header_length = triton_body(arrays, binary, request_id="req-1")
    assert (header_length is not None) == binary
    request = parse_infer_request(body, header_length)
    assert request.id == "req-1"
    got = request.inputs["x"]
    assert_same(got, arrays["x"])
    assert got.flags.writeable and got.flags.c_contiguous
    assert not np.shares_memory(got, np.frombuffer(body, np.uint8))  # a copy, not a body view
    assert got.dtype.byteorder in "=|"


def test_mixed_binary_and_json_inputs_keep_their_order() -> None:
    arrays = {
        "a": random_array("FP32", (2, 3), 1),
        "b": random_array("INT64", (4,), 2),
        "c": random_array("UINT8", (3, 2, 2), 3),
        "d": random_array("BOOL", (5,), 4),
    }
    modes = {"a": True, "b": False, "c": True, "d": True}
    body, header_length = triton_body(arrays, modes)
    request = parse_infer_request(body, header_length)
    assert list(request.inputs) == list(arrays)
    for name, array in arrays.items():
        assert_same(request.inputs[name], array)


def test_requested_outputs_and_parameters() -> None:
    arrays = {"x": random_array("FP32", (2,), 0)}
    outputs = [
        httpclient.InferRequestedOutput("probs", binary_data=True),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    body, header_length = triton_body(arrays, True, outputs, priority=3, timeout=1000)
    request = parse_infer_request(body, header_length)
    assert request.outputs == [RequestedOutput("probs", True), RequestedOutput("label", False)]
    assert request.binary_output_default is False
    assert request.parameters["priority"] == 3 and request.parameters["timeout"] == 1000
    assert request.id is None


def test_no_requested_outputs_means_all_outputs_in_binary() -> None:
    body, header_length = triton_body({"x": random_array("FP32", (2,), 0)}, False)
    request = parse_infer_request(body, header_length)
    assert request.outputs is None
    assert request.binary_output_default is True  # tritonclient asks for binary_data_output


def test_nested_json_data_is_accepted() -> None:
    array = random_array("INT32", (2, 3), 5)
    doc = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": array.tolist()}]}
    request = parse_infer_request(json.dumps(doc).encode(), None)
    assert_same(request.inputs["x"], array)
    assert request.outputs is None and request.binary_output_default is False


def test_binary_bool_bytes_are_normalised() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "m",
                    "shape": [3],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 3},
                }
            ]
        }
    ).encode()
    request = parse_infer_request(header + bytes([0, 1, 7]), len(header))
    assert_same(request.inputs["m"], np.array([False, True, True]))
    assert request.inputs["m"].view(np.uint8).tolist() == [0, 1, 1]


# --- responses parsed by tritonclient ----------------------------------------------------


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_response_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    as_bin = random_array(datatype, shape, seed=7)
    as_json = random_array(datatype, shape, seed=8)
    body, headers = encode_infer_response(
        "m", "3", "req-9", [("bin", as_bin, True), ("js", as_json, False)]
    )
    header_length = int(headers["Inference-Header-Content-Length"])
    assert headers["Content-Type"] == "application/octet-stream"
    assert header_length + as_bin.nbytes == len(body)
    result = triton_parse(body, headers)
    assert_same(result.as_numpy("bin"), as_bin)
    assert_same(result.as_numpy("js"), as_json)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "m",
        "3",
        "req-9",
    )
    for output, array in zip(response["outputs"], (as_bin, as_json), strict=True):
        assert output["datatype"] == datatype
        assert output["shape"] == list(array.shape)


def test_json_only_response() -> None:
    arrays = {name: random_array(name, (2, 2), 3) for name in ("FP16", "BOOL", "UINT64")}
    body, headers = encode_infer_response(
        "m", "1", None, [(name, array, False) for name, array in arrays.items()]
    )
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    assert "id" not in doc
    assert all(type(v) is bool for v in doc["outputs"][1]["data"])
    result = triton_parse(body, headers)
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_big_endian_and_non_contiguous_outputs_go_out_little_endian() -> None:
    base = random_array("FP32", (4, 6), 11)
    strided = base[:, ::2]
    swapped = base.astype(">f4")
    body, headers = encode_infer_response(
        "m", "1", None, [("s", strided, True), ("b", swapped, True), ("j", swapped, False)]
    )
    result = triton_parse(body, headers)
    assert_same(result.as_numpy("s"), strided)
    assert_same(result.as_numpy("b"), base)
    assert_same(result.as_numpy("j"), base)


@pytest.mark.parametrize("binary", [True, False])
def test_end_to_end_through_select_outputs(binary: bool) -> None:
    image = random_array("FP32", (1, 1, 8, 8), 21)
    requested = [
        httpclient.InferRequestedOutput("mask", binary_data=binary),
        httpclient.InferRequestedOutput("score", binary_data=not binary),
    ]
    body, header_length = triton_body({"image": image}, binary, requested, request_id="r")
    request = parse_infer_request(body, header_length)
    model_out = {
        "score": request.inputs["image"].mean(axis=(2, 3)),
        "mask": request.inputs["image"] > 0,
        "unused": np.zeros(3, np.int8),
    }
    selected = select_outputs(model_out, request)
    assert [(name, flag) for name, _, flag in selected] == [("mask", binary), ("score", not binary)]
    body, headers = encode_infer_response("seg", "1", request.id, selected)
    result = triton_parse(body, headers)
    assert_same(result.as_numpy("mask"), image > 0)
    assert_same(result.as_numpy("score"), image.mean(axis=(2, 3)))
    assert result.as_numpy("unused") is None


def test_select_outputs_defaults_and_unknown_name() -> None:
    outs = {"a": np.zeros(1, np.float32), "b": np.ones(2, np.int64)}
    every = InferRequest(None, {}, None, True, {})
    assert [(n, f) for n, _, f in select_outputs(outs, every)] == [("a", True), ("b", True)]
    unknown = InferRequest(None, {}, [RequestedOutput("PATIENT-X", True)], False, {})
    with pytest.raises(InvalidInput, match=r"^outputs\[0\]: .*its outputs: 'a', 'b'$") as err:
        select_outputs(outs, unknown)
    assert "PATIENT-X" not in err.value.message  # a client's name is never echoed


def test_datatype_of() -> None:
    for name, dtype in DATATYPES.items():
        assert datatype_of(np.zeros(2, dtype=dtype)) == name
        assert datatype_of(np.zeros(2, dtype=dtype.newbyteorder(">"))) == name
    with pytest.raises(MedserveError):
        datatype_of(np.array(["text"]))


# --- malformed requests -------------------------------------------------------------------


def one_input(**fields) -> bytes:
    spec = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} | fields
    return json.dumps({"inputs": [spec]}).encode()


def binary_request(shape: list[int], payload: bytes, size: int | None = None) -> tuple[bytes, int]:
    params = {"binary_data_size": len(payload) if size is None else size}
    doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "parameters": params}]}
    header = json.dumps(doc).encode()
    return header + payload, len(header)


def without(key: str) -> bytes:
    spec = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    del spec[key]
    return json.dumps({"inputs": [spec]}).encode()


FOUR_FLOATS = np.arange(4, dtype=np.float32).tobytes()
BINARY_BODY, BINARY_HEADER_LENGTH = binary_request([4], FOUR_FLOATS)

MALFORMED: dict[str, tuple[bytes, int | None, str]] = {
    "bad json": (b'{"inputs": [', None, "not valid JSON"),
    "not utf8": (b"\xff\xfe\x00", None, "not valid JSON"),
    "json array": (b"[1, 2]", None, "JSON object"),
    "no inputs": (b"{}", None, "'inputs'"),
    "empty inputs": (b'{"inputs": []}', None, "'inputs'"),
    "inputs not list": (b'{"inputs": {"x": 1}}', None, "'inputs'"),
    "input not object": (b'{"inputs": [3]}', None, r"inputs\[0\]"),
    "missing name": (without("name"), None, "'name'"),
    "missing shape": (without("shape"), None, "'shape'"),
    "missing datatype": (without("datatype"), None, "'datatype'"),
    "missing data": (without("data"), None, "neither 'data'"),
    "negative dim": (one_input(shape=[-1]), None, "non-negative"),
    "float dim": (one_input(shape=[2.0]), None, "non-negative"),
    "bool dim": (one_input(shape=[True, True]), None, "non-negative"),
    "shape not list": (one_input(shape=2), None, "'shape'"),
    "count too small": (one_input(shape=[3]), None, "has 2 elements, shape needs 3"),
    "count too large": (one_input(shape=[1]), None, "has 2 elements, shape needs 1"),
    "nested count": (one_input(shape=[2, 2], data=[[1.0, 2.0], [3.0]]), None, "3 elements"),
    "data not list": (one_input(data=1.0), None, "'data' must be a list"),
    "string element": (one_input(data=[1.0, MARKER]), None, "only numbers"),
    "null element": (one_input(data=[1.0, None]), None, "only numbers"),
    "bool in float": (one_input(data=[1.0, True]), None, "only numbers"),
    "float in int": (one_input(datatype="INT32", data=[1, 2.5]), None, "only integers"),
    "int in bool": (one_input(datatype="BOOL", data=[1, 0]), None, "only booleans"),
    "out of range": (one_input(datatype="UINT8", data=[1, 256]), None, "out of range for UINT8"),
    "negative unsigned": (one_input(datatype="UINT64", data=[-1, 0]), None, "out of range"),
    "bytes datatype": (one_input(datatype="BYTES", data=["a", "b"]), None, "BYTES"),
    "bf16 datatype": (one_input(datatype="BF16"), None, "BF16"),
    "unknown datatype": (one_input(datatype=MARKER), None, "unknown datatype"),
    "datatype not str": (one_input(datatype=4), None, "'datatype' must be a string"),
    "duplicate input": (
        json.dumps({"inputs": [json.loads(one_input())["inputs"][0]] * 2}).encode(),
        None,
        "more than once",
    ),
    "data and binary": (
        one_input(parameters={"binary_data_size": 8}),
        None,
        "either 'data' or binary_data_size",
    ),
    "shared memory": (one_input(parameters={"shared_memory_region": "r"}), None, "shared memory"),
    "parameters not object": (one_input(parameters=[1]), None, "'parameters'"),
    "id not string": (b'{"id": 5, "inputs": []}', None, "'id'"),
    "binary size vs shape": (*binary_request([3], FOUR_FLOATS), "must be 12 bytes"),
    "binary size not int": (*binary_request([4], FOUR_FLOATS, size="16"), "must be 16 bytes"),
    "truncated binary": (BINARY_BODY[:-3], BINARY_HEADER_LENGTH, "truncated"),
    "trailing bytes": (
        BINARY_BODY + b"\x00",
        BINARY_HEADER_LENGTH,
        "declare 16 bytes but the body has 17",
    ),
    "binary without header length": (BINARY_BODY[:BINARY_HEADER_LENGTH], None, "truncated"),
    "binary body but no header length": (BINARY_BODY, None, "not valid JSON"),
    "header length > body": (one_input(), len(one_input()) + 1, "Header-Content-Length"),
    "negative header length": (one_input(), -1, "Header-Content-Length"),
    "header length cuts json": (one_input(), 10, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_raises_invalid_input(case: str) -> None:
    body, header_length, message = MALFORMED[case]
    with pytest.raises(InvalidInput, match=message) as info:
        parse_infer_request(body, header_length)
    assert info.value.status_code == 400
    assert MARKER not in info.value.message


def test_binary_section_without_binary_inputs_is_rejected() -> None:
    header = one_input()
    with pytest.raises(InvalidInput, match="declare 0 bytes but the body has 4"):
        parse_infer_request(header + b"abcd", len(header))


def test_binary_size_must_add_up_across_inputs() -> None:
    arrays = {"a": random_array("FP32", (3,), 1), "b": random_array("INT16", (5,), 2)}
    body, header_length = triton_body(arrays, True)
    assert parse_infer_request(body, header_length).inputs.keys() == arrays.keys()
    for cut in (1, arrays["b"].nbytes, arrays["b"].nbytes + 1):
        with pytest.raises(InvalidInput):
            parse_infer_request(body[:-cut], header_length)


@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"name": "y"}, "'outputs' must be a list"),
        ([{"nom": "y"}], "string 'name'"),
        ([{"name": "y"}, {"name": "y"}], "more than once"),
        ([{"name": "y", "parameters": {"binary_data": "yes"}}], "must be a boolean"),
        ([{"name": "y", "parameters": {"classification": 3}}], "classification"),
        ([{"name": "y", "parameters": {"shared_memory_region": "r"}}], "shared memory"),
    ],
)
def test_malformed_outputs(outputs: object, message: str) -> None:
    doc = json.loads(one_input()) | {"outputs": outputs}
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(json.dumps(doc).encode(), None)


def test_bad_binary_data_output_flag() -> None:
    doc = json.loads(one_input()) | {"parameters": {"binary_data_output": 1}}
    with pytest.raises(InvalidInput, match="binary_data_output"):
        parse_infer_request(json.dumps(doc).encode(), None)


# --- validate_inputs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


IMAGE = Spec("image", "FP32", (-1, 1, 224, 224))
AGE = Spec("age", "INT64", (-1,))


def test_validate_inputs_accepts_any_size_for_minus_one() -> None:
    for batch in (0, 1, 5):
        inputs = {
            "age": np.zeros(batch, np.int64),
            "image": np.zeros((batch, 1, 224, 224), np.float32),
        }
        validate_inputs(inputs, [IMAGE, AGE])


def _check(inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_inputs(inputs, [IMAGE, AGE])
    assert message in info.value.message
    assert info.value.status_code == 400


def test_validate_inputs_rejections() -> None:
    age = np.zeros(2, np.int64)
    wrong_dim = np.zeros((2, 3, 224, 224), np.float32)
    _check(
        {"image": wrong_dim, "age": age},
        "input 'image': expected shape [-1, 1, 224, 224], got [2, 3, 224, 224]",
    )
    _check({"image": np.zeros((1, 224, 224), np.float32), "age": age}, "got [1, 224, 224]")
    _check(
        {"image": np.zeros((2, 1, 224, 224), np.float64), "age": age},
        "input 'image': expected datatype FP32, got FP64",
    )
    _check({"image": np.zeros((2, 1, 224, 224), np.float32)}, "missing input 'age'")
    extra = {"image": np.zeros((2, 1, 224, 224), np.float32), "age": age, "Jane Doe": age}
    _check(extra, "an input name the model does not have; its inputs: 'age', 'image'")
    with pytest.raises(InvalidInput) as info:
        validate_inputs(extra, [IMAGE, AGE])
    assert "Jane" not in info.value.message  # a client's name is never echoed


def test_a_batch_larger_than_the_deployment_takes_is_413_before_any_inference() -> None:
    batch = {"image": np.zeros((9, 1, 224, 224), np.float32)}
    validate_inputs({"image": batch["image"][:8]}, [IMAGE], max_batch=8)
    with pytest.raises(PayloadTooLarge, match="a batch of 9 exceeds the model's max_batch_size 8"):
        validate_inputs(batch, [IMAGE], max_batch=8)


def test_a_json_header_past_its_limit_is_413_before_parsing() -> None:
    """A gzip body of 254 KB expands to 255 MiB of `0,`: parsed, that is gigabytes of ints."""
    from serving.protocol.oip import MAX_JSON_BYTES

    bomb = b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [' + (
        b"0," * (MAX_JSON_BYTES // 2)) + b"0]}]}"
    with pytest.raises(PayloadTooLarge, match="send large tensors as binary data"):
        parse_infer_request(bomb, None)
    small = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                    "data": [1.0, 2.0]}]}).encode()
    assert parse_infer_request(small, None).inputs["x"].tolist() == [1.0, 2.0]
