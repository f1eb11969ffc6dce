"""Requests and expected answers of TF Serving's own tests (tensorflow_model_server_test.py and its
base), rebuilt here for the conformance suite: the Predict request VerifyPredictRequest sends, and the
metadata half_plus_two_model_metadata.json expects."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

DEFAULT_SIGNATURE = "serving_default"


def verify_predict_request(
    model_name: str = "default",
    specify_output: bool = True,
    batch_input: bool = False,
    signature_name: str = DEFAULT_SIGNATURE,
) -> predict_pb2.PredictRequest:
    """The request VerifyPredictRequest sends: x = [2.0] (shape [1], or [1, 1] with batch_input)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.float_val.append(2.0)
    x.tensor_shape.dim.add(size=1)
    if batch_input:
        x.tensor_shape.dim.add(size=1)
    if specify_output:
        request.output_filter.append("y")
    return request


def _shape(*dims: int) -> dict:
    if not dims:
        return {"dim": [], "unknown_rank": True}
    return {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}


def _tensor(dtype: str, name: str, *dims: int) -> dict:
    return {"dtype": dtype, "tensor_shape": _shape(*dims), "name": name}


def _signature(inputs: dict, outputs: dict, method: str) -> dict:
    return {"inputs": inputs, "outputs": outputs, "method_name": f"tensorflow/serving/{method}", "defaults": {}}


def half_plus_two_metadata(model_name: str = "default", version: int = 123) -> dict:
    """half_plus_two_model_metadata.json (plus ``defaults: {}``, which SignatureDef has had since TF 2.12)."""
    examples = {"inputs": _tensor("DT_STRING", "tf_example:0")}

    def regress(inputs: dict, output: str) -> dict:
        return _signature(inputs, {"outputs": _tensor("DT_FLOAT", output, -1, 1)}, "regress")

    signatures = {
        "regress_x2_to_y3": regress({"inputs": _tensor("DT_FLOAT", "x2:0", -1, 1)}, "y3:0"),
        "serving_default": _signature(
            {"x": _tensor("DT_FLOAT", "x:0", -1, 1)}, {"y": _tensor("DT_FLOAT", "y:0", -1, 1)}, "predict"
        ),
        "classify_x_to_y": _signature(examples, {"scores": _tensor("DT_FLOAT", "y:0", -1, 1)}, "classify"),
        "regress_x_to_y2": regress(examples, "y2:0"),
        "regress_x_to_y": regress(examples, "y:0"),
    }
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }


def sorted_object(obj):
    """SortedObject of TF Serving's test: nested lists and dicts compared without order."""
    if isinstance(obj, dict):
        return sorted((k, sorted_object(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return sorted(sorted_object(x) for x in obj)
    return obj


def call_rest(url: str, body: dict | bytes | None = None) -> tuple[int, dict | str]:
    """(HTTP status, parsed JSON or text) of a GET (no body) or a POST (a JSON object or raw bytes)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw
