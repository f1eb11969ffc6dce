"""TF Serving REST JSON <-> tensors: row ``instances`` / columnar ``inputs``, ``{"b64": ...}``, examples."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import input_pb2

from serving.server.errors import ServingError
from serving.server.servable import Signature
from serving.server.tensors import dtype_name


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _to_bytes(value: Any, alias: str) -> Any:
    if isinstance(value, list):
        return [_to_bytes(v, alias) for v in value]
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as e:
            raise ServingError.invalid_argument(f"input '{alias}': invalid base64 string: {e}") from e
    if isinstance(value, str):
        return value.encode()
    raise ServingError.invalid_argument(f"JSON Value: {value!r} Is not of expected type: string (input '{alias}')")


def to_array(value: Any, spec: tf.TensorSpec, alias: str) -> np.ndarray:
    """One input's JSON value as a numpy array of the signature's dtype."""
    try:
        if spec.dtype == tf.string:
            return np.array(_to_bytes(value, alias), dtype=object)
        if _contains_str(value):
            raise ValueError("string value")
        return np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        raise ServingError.invalid_argument(
            f"input '{alias}': JSON value is not a well-formed {dtype_name(spec.dtype.as_datatype_enum)} tensor: {e}"
        ) from e


def _contains_str(value: Any) -> bool:
    if isinstance(value, list):
        return any(_contains_str(v) for v in value)
    return isinstance(value, (str, dict))


def _named(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _sole_input(sig: Signature, what: str) -> str:
    if len(sig.inputs) != 1:
        raise ServingError.invalid_argument(
            f"{what} is a plain list, but expecting list of objects as multiple input tensors required as per "
            f"tensorinfo_map ({', '.join(sorted(sig.inputs))})"
        )
    return next(iter(sig.inputs))


def decode_predict(body: dict, sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs of a :predict body and whether it used the row (``instances``) format."""
    if ("instances" in body) == ("inputs" in body):
        if "instances" in body:
            raise ServingError.invalid_argument(
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists"
            )
        raise ServingError.invalid_argument("Missing 'inputs' or 'instances' key")
    if "inputs" in body:
        value = body["inputs"]
        if _named(value):
            return {k: _convert(sig, k, v) for k, v in value.items()}, False
        alias = _sole_input(sig, "'inputs'")
        return {alias: to_array(value, sig.inputs[alias], alias)}, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise ServingError.invalid_argument("'instances' must be a non-empty list")
    if not _named(rows[0]):
        alias = _sole_input(sig, "'instances'")
        return {alias: to_array(rows, sig.inputs[alias], alias)}, True
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if not _named(row) or set(row) != keys:
            raise ServingError.invalid_argument(
                f"Expecting object with keys {sorted(keys)} at item {i} of 'instances' list"
            )
    return {k: _convert(sig, k, [row[k] for row in rows]) for k in keys}, True


def _convert(sig: Signature, alias: str, value: Any) -> np.ndarray:
    if alias not in sig.inputs:  # reported by Signature.check_inputs with TF Serving's message
        return np.array(value, dtype=object)
    return to_array(value, sig.inputs[alias], alias)


def _json_value(alias: str, value: np.ndarray) -> Any:
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
    values = {k: _json_value(k, v) for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    sizes = {k: len(v) if isinstance(v, list) else 0 for k, v in values.items()}
    n = max(sizes.values())
    for alias, size in sizes.items():
        if size != n:
            raise ServingError.invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {size} expecting: {n}"
            )
    return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(n)]}


def _feature(value: Any, name: str) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=_to_bytes(values, name)))
    if all(isinstance(v, (bool, int)) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    raise ServingError.invalid_argument(f"feature '{name}': values must all be strings, integers or numbers")


def _example(obj: Any, where: str) -> tf.train.Example:
    if not isinstance(obj, dict):
        raise ServingError.invalid_argument(f"{where} must be a JSON object of feature name to value(s)")
    return tf.train.Example(features=tf.train.Features(feature={k: _feature(v, k) for k, v in obj.items()}))


def decode_examples(body: dict) -> input_pb2.Input:
    """The Input of a :classify/:regress body (``examples`` plus optional ``context``)."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ServingError.invalid_argument("'examples' must be a non-empty list")
    parsed = [_example(e, f"examples[{i}]") for i, e in enumerate(examples)]
    request_input = input_pb2.Input()
    if "context" in body:
        target = request_input.example_list_with_context
        target.context.CopyFrom(_example(body["context"], "'context'"))
    else:
        target = request_input.example_list
    target.examples.extend(parsed)
    return request_input
