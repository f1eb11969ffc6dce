"""TF Serving REST JSON <-> tensors: row ``instances`` / columnar ``inputs``, ``{"b64": ...}``, examples.

Follows tensorflow_serving/util/json_tensor.cc: a JSON value becomes a tensor of the signature's dtype
and of the JSON's own shape (never checked against the SignatureDef's shape); numbers must fit the
dtype's kind (any number for float/double, integers for int, booleans for bool, strings or
``{"b64": ...}`` for string); row format batches every instance along a new first dimension.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import tensorflow as tf
from tensorflow_serving.apis import input_pb2

from serving.server.errors import ServingError
from serving.server.servable import Signature
from serving.server.tensors import dtype_name

_FLOAT_MAX_INT = {tf.float32: 2**24 - 1, tf.float64: 2**53 - 1}  # json_tensor.cc IsLosslessDecimal
_KINDS = {"float": "iuf", "double": "iuf", "bool": "b"}  # numpy kinds a JSON array may hold per dtype


def _invalid(message: str) -> ServingError:
    return ServingError.invalid_argument(message)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _b64_decode(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _invalid("Unable to base64 decode") from e


def _to_bytes(value: Any, dtype: str) -> Any:
    if isinstance(value, list):
        return [_to_bytes(v, dtype) for v in value]
    if isinstance(value, str):
        return value.encode()
    if _is_b64(value):
        return _b64_decode(value)
    raise _invalid(f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: {dtype}")


def _leaf_ok(value: Any, dtype: str) -> bool:
    if dtype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dtype in ("float", "double") or isinstance(value, int)


def to_array(value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """One input's JSON value as a numpy array of the signature's dtype and the JSON's shape."""
    dtype = dtype_name(spec.dtype.as_datatype_enum)
    if spec.dtype == tf.string:
        arr = np.array(_to_bytes(value, dtype), dtype=object)
        if arr.dtype != object or any(isinstance(v, list) for v in arr.ravel()):
            raise _invalid(f"JSON Value: {_json_text(value)} is not a dense tensor: its lists differ in size")
        return arr
    try:
        arr = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise _invalid(f"JSON Value: {_json_text(value)} is not a dense tensor: its lists differ in size") from e
    if arr.size and arr.dtype.kind not in _KINDS.get(dtype, "iu"):
        bad = next((v for v in _leaves(value) if not _leaf_ok(v, dtype)), value)
        raise _invalid(f"JSON Value: {_json_text(bad)} Type: {_json_type(bad)} is not of expected type: {dtype}")
    limit = _FLOAT_MAX_INT.get(spec.dtype)
    if limit is not None and arr.size and arr.dtype.kind in "iu" and np.abs(arr).max() > limit:
        raise _invalid(f"Cannot convert JSON value: {_json_text(value)} to {dtype} without loss of precision.")
    if dtype == "int32" and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
        raise _invalid(f"JSON Value: {_json_text(value)} is not of expected type: int32")
    return arr.astype(spec.dtype.as_numpy_dtype, copy=False)


def _instances(rows: Any, sig: Signature) -> dict[str, np.ndarray]:
    """Row format (FillTensorMapFromInstancesList): one tensor per input, batched over the rows."""
    if not isinstance(rows, list):
        raise _invalid("Excepting 'instances' to be an list/array")
    if not rows:
        raise _invalid("No values in 'instances' array")
    names = sorted(sig.inputs)
    if not _named(rows[0]):
        if len(names) > 1:
            raise _invalid(
                "instances is a plain list, but expecting list of objects as multiple input tensors required "
                "as per tensorinfo_map"
            )
        for i, row in enumerate(rows):
            if _named(row):
                raise _invalid(f"Expecting value/list but got object at item {i} of input list")
        return {names[0]: _column(sig, names[0], rows)}
    for i, row in enumerate(rows):
        if not _named(row):
            raise _invalid(f"Expecting object but got list at item {i} of input list")
        for key in row:
            if key not in sig.inputs:
                raise _invalid(
                    f"Failed to process element: {i} key: {key} of 'instances' list. "
                    f"Error: JSON object: does not have named input: {key}"
                )
        if len(row) != len(names):
            raise _invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_json_text(row)} "
                f"must only have keys: {','.join(names)}"
            )
    return {k: _column(sig, k, [row[k] for row in rows]) for k in names}


def _column(sig: Signature, alias: str, rows: list) -> np.ndarray:
    try:
        return to_array(rows, sig.inputs[alias])
    except ServingError as e:
        raise _invalid(f"Failed to process element of 'instances' list, key: {alias}. Error: {e.message}") from e


def _inputs(value: Any, sig: Signature) -> dict[str, np.ndarray]:
    """Columnar format (FillTensorMapFromInputsMap): keys other than the signature's inputs are ignored."""
    if not _named(value):
        if len(sig.inputs) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                "per tensorinfo_map"
            )
        alias = next(iter(sig.inputs))
        return {alias: to_array(value, sig.inputs[alias])}
    arrays = {}
    for alias in sorted(sig.inputs):
        if alias not in value:
            raise _invalid(f"Missing named input: {alias} in 'inputs' object.")
        arrays[alias] = to_array(value[alias], sig.inputs[alias])
    return arrays


def decode_predict(body: dict, sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs of a :predict body and whether it used the row (``instances``) format."""
    if "instances" in body and "inputs" in body:
        raise _invalid(
            f"JSON Value: {_json_text(body)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if "instances" in body:
        return _instances(body["instances"], sig), True
    if "inputs" in body:
        return _inputs(body["inputs"], sig), False
    raise _invalid("Missing 'inputs' or 'instances' key")


def float32_json(values: Any) -> Any:
    """float32 values as JSON numbers the way WriteDecimal writes them: the shortest text that reads back
    as the same float32 (0.1, not 0.10000000149011612)."""
    return np.asarray(values, dtype=np.float32).astype(str).astype(np.float64).tolist()


def _json_value(alias: str, value: np.ndarray) -> Any:
    if value.dtype == np.float32:
        return float32_json(value)
    if value.dtype != object:
        return value.tolist()
    flat = [_json_string(alias, v) for v in value.ravel()]
    return np.array(flat, dtype=object).reshape(value.shape).tolist()


def _json_string(alias: str, v: Any) -> Any:
    raw = v if isinstance(v, bytes) else str(v).encode()
    if not alias.endswith("_bytes"):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode()}


def encode_predict(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar), one output unnamed."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if row_format:
        _check_batch(outputs)
    values = {k: _json_value(k, v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    n = len(next(iter(values.values())))
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(n)]}


def _check_batch(outputs: dict[str, np.ndarray]) -> None:
    """Row format needs every output batched alike (MakeRowFormatJsonFromTensors)."""
    batch = 0
    for alias in sorted(outputs):
        value = outputs[alias]
        if value.ndim == 0:
            raise _invalid(f"Tensor name: {alias} has no shape information ")
        if value.shape[0] < 1:
            raise _invalid(f"Tensor name: {alias} has invalid batch size: {value.shape[0]}")
        if batch and value.shape[0] != batch:
            raise _invalid(f"Tensor name: {alias} has inconsistent batch size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]


def _feature_kind(value: Any, name: str) -> str:
    if isinstance(value, int):  # booleans too, as 1 / 0
        return "int64"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) or _is_b64(value):
        return "bytes"
    raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")


def _feature(value: Any, name: str) -> tf.train.Feature:
    """A feature from a JSON value or list (AddValueToFeature): one kind per feature."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return tf.train.Feature()
    kind = _feature_kind(values[0], name)
    for v in values:
        if _feature_kind(v, name) != kind:
            raise _invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=_to_bytes(values, "string")))
    if kind == "int64":
        if any(not isinstance(v, bool) and not -(2**63) <= v < 2**63 for v in values):
            raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _example(obj: Any) -> tf.train.Example:
    if not isinstance(obj, dict):
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(obj)}")
    return tf.train.Example(features=tf.train.Features(feature={k: _feature(v, k) for k, v in obj.items()}))


def decode_examples(body: dict) -> input_pb2.Input:
    """The Input of a :classify/:regress body (``examples`` plus optional ``context``)."""
    request_input = input_pb2.Input()
    context = _example(body["context"]) if "context" in body else None
    examples = body.get("examples")
    if "examples" not in body:
        raise _invalid(
            f"JSON Value: {_json_text(body)} When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise _invalid(f"JSON Value: {_json_text(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _invalid(f"JSON Value: {_json_text(body)} 'examples' value is an empty array")
    parsed = [_example(e) for e in examples]
    if context is not None:
        target = request_input.example_list_with_context
        target.context.CopyFrom(context)
    else:
        target = request_input.example_list
    target.examples.extend(parsed)
    return request_input
