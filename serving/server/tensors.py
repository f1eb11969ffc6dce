"""TensorProto <-> numpy conversion with fast paths for the dtypes ad models use."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.server.errors import ServingError

# dtype enum -> (typed repeated field, numpy dtype)
_FIELDS: dict[int, tuple[str, type]] = {
    types_pb2.DT_FLOAT: ("float_val", np.float32),
    types_pb2.DT_DOUBLE: ("double_val", np.float64),
    types_pb2.DT_INT32: ("int_val", np.int32),
    types_pb2.DT_INT64: ("int64_val", np.int64),
    types_pb2.DT_BOOL: ("bool_val", np.bool_),
    types_pb2.DT_STRING: ("string_val", object),
}


def dtype_name(dtype: int) -> str:
    """TF's DataTypeString: DT_FLOAT -> ``float``, DT_STRING -> ``string``."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str = "") -> np.ndarray:
    """Decode a TensorProto like TF's ``Tensor::FromProto`` (what TF Serving does with a request tensor).

    Typed value fields: extra values are ignored, missing ones repeat the last value, none at all
    gives zeros (empty strings). ``tensor_content`` must hold exactly the shape's bytes. Anything
    undecodable is INVALID_ARGUMENT ``tensor parsing error: <alias>``.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    spec = _FIELDS.get(proto.dtype)
    if spec is None:
        try:
            return tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise ServingError.invalid_argument(f"tensor parsing error: {alias}") from e
    field, np_dtype = spec
    size = math.prod(shape)
    if proto.tensor_content and np_dtype is not object:
        if len(proto.tensor_content) != size * np.dtype(np_dtype).itemsize:
            raise ServingError.invalid_argument(f"tensor parsing error: {alias}")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    values = getattr(proto, field)
    n = len(values)
    if np_dtype is object:
        arr = np.array(list(values[:size]), dtype=object)
    else:
        arr = np.array(values[:size] if n > size else values, dtype=np_dtype)
    if n >= size:
        return arr.reshape(shape)
    fill = arr[-1] if n else (b"" if np_dtype is object else np_dtype())
    out = np.full(shape, fill, dtype=arr.dtype)
    out.ravel()[:n] = arr
    return out


# numpy dtype -> (dtype enum, typed field) for the fast encoding path
_BY_NUMPY = {np.dtype(np_dtype): (enum, field) for enum, (field, np_dtype) in _FIELDS.items() if np_dtype is not object}


def from_ndarray(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode a numpy array into a TensorProto using typed fields, as TF Serving responds."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel())
    else:
        fast = _BY_NUMPY.get(arr.dtype)
        if fast is None:
            return tf.make_tensor_proto(arr)
        proto = tensor_pb2.TensorProto(dtype=fast[0])
        getattr(proto, fast[1]).extend(arr.ravel().tolist())
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    return proto
