"""PredictionService semantics over one Servable: Predict, Classify, Regress, MultiInference, warmup."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving.server.errors import ServingError
from serving.server.servable import CLASSIFY_METHOD, REGRESS_METHOD, Servable, Signature
from serving.server.tensors import from_ndarray, to_ndarray

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit on warmup records


def fill_model_spec(spec: model_pb2.ModelSpec, servable: Servable, signature_name: str) -> None:
    """Response model_spec: name, the resolved version and signature, as TF Serving fills it."""
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Run a PredictRequest against ``servable``."""
    sig = servable.signature(request.model_spec.signature_name)
    inputs = {alias: to_ndarray(proto, alias) for alias, proto in request.inputs.items()}
    outputs = sig.run(inputs, tuple(request.output_filter))
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(from_ndarray(value))
    return response


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """Serialized tf.Examples of an Input; context features are merged into every example."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(request_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = tf.train.Example()
            merged.CopyFrom(context)
            for key, feature in example.features.feature.items():
                merged.features.feature[key].CopyFrom(feature)
            examples.append(merged)
    else:
        examples = []
    if not examples:
        raise ServingError.invalid_argument("Input is empty.")
    return np.array([e.SerializeToString() for e in examples], dtype=object)


def _examples_signature(servable: Servable, name: str, method: str) -> Signature:
    """A classify/regress signature: its method_name, or (TF2 exports) one string input + the outputs."""
    sig = servable.signature(name)
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    expected_outputs = {"classes", "scores"} if method == CLASSIFY_METHOD else {"outputs"}
    string_input = len(sig.inputs) == 1 and next(iter(sig.inputs.values())).dtype == tf.string
    shaped_like = string_input and bool(set(sig.outputs) & expected_outputs)
    if sig.method_name != method and not shaped_like:
        raise ServingError.failed_precondition(
            f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}"
        )
    if not string_input:
        raise ServingError.invalid_argument(f"Expected one input Tensor of serialized tf.Examples in {sig.name}")
    return sig


def _run_examples(sig: Signature, request_input: input_pb2.Input) -> tuple[dict[str, np.ndarray], int]:
    examples = serialized_examples(request_input)
    return sig.run({next(iter(sig.inputs)): examples}), len(examples)


def _classification_result(sig: Signature, request_input: input_pb2.Input) -> classification_pb2.ClassificationResult:
    outputs, n = _run_examples(sig, request_input)
    scores, classes = outputs.get("scores"), outputs.get("classes")
    for name, value in (("scores", scores), ("classes", classes)):
        if value is not None and (value.ndim not in (1, 2) or value.shape[0] != n):
            raise ServingError.invalid_argument(
                f"Expected {name} output batch size of {n}, got shape {list(value.shape)}"
            )
    scores = scores.reshape(n, -1) if scores is not None else None
    classes = classes.reshape(n, -1) if classes is not None else None
    result = classification_pb2.ClassificationResult()
    width = (scores if scores is not None else classes).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(width):
            cls = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                cls.label = label.decode() if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[i, j])
    return result


def _regression_result(sig: Signature, request_input: input_pb2.Input) -> regression_pb2.RegressionResult:
    outputs, n = _run_examples(sig, request_input)
    values = outputs["outputs"] if "outputs" in outputs else next(iter(outputs.values()))
    if values.shape not in ((n,), (n, 1)):
        raise ServingError.invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
        )
    result = regression_pb2.RegressionResult()
    for v in values.reshape(n).tolist():
        result.regressions.add(value=v)
    return result


def classify(
    servable: Servable, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    """Run a ClassificationRequest against ``servable``."""
    sig = _examples_signature(servable, request.model_spec.signature_name, CLASSIFY_METHOD)
    response = classification_pb2.ClassificationResponse(result=_classification_result(sig, request.input))
    fill_model_spec(response.model_spec, servable, sig.name)
    return response


def regress(servable: Servable, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    """Run a RegressionRequest against ``servable``."""
    sig = _examples_signature(servable, request.model_spec.signature_name, REGRESS_METHOD)
    response = regression_pb2.RegressionResponse(result=_regression_result(sig, request.input))
    fill_model_spec(response.model_spec, servable, sig.name)
    return response


def check_multi_inference(request: inference_pb2.MultiInferenceRequest) -> model_pb2.ModelSpec:
    """Validate task specs like TF Serving; return the first task's spec (which picks the servable)."""
    if not request.tasks:
        raise ServingError.invalid_argument("Expected at least one task")
    first = request.tasks[0].model_spec
    seen: set[str] = set()
    for task in request.tasks:
        spec = task.model_spec
        if spec.name != first.name:
            raise ServingError.invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        if spec.version != first.version or spec.version_label != first.version_label:
            raise ServingError.invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model version."
            )
        if spec.signature_name in seen:
            raise ServingError.invalid_argument(f"Duplicate evaluation of signature: {spec.signature_name}")
        seen.add(spec.signature_name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError.invalid_argument(f"Unsupported signature method_name: {task.method_name}")
    return first


def multi_inference(
    servable: Servable, request: inference_pb2.MultiInferenceRequest
) -> inference_pb2.MultiInferenceResponse:
    """Run every classify/regress task of a MultiInferenceRequest over the shared input."""
    check_multi_inference(request)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        sig = _examples_signature(servable, task.model_spec.signature_name, task.method_name)
        result = response.results.add()
        fill_model_spec(result.model_spec, servable, sig.name)
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(sig, request.input))
        else:
            result.regression_result.CopyFrom(_regression_result(sig, request.input))
    return response


def replay_warmup(servable: Servable) -> int:
    """Replay ``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecords); return the count."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    handlers = {
        "predict_log": lambda log: predict(servable, log.request),
        "classify_log": lambda log: classify(servable, log.request),
        "regress_log": lambda log: regress(servable, log.request),
        "multi_inference_log": lambda log: multi_inference(servable, log.request),
    }
    try:
        records = list(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1).as_numpy_iterator())
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
    except (tf.errors.OpError, message.DecodeError) as e:
        raise ServingError.invalid_argument(f"Failed to read warmup data from {path}: {e}") from e
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ServingError.invalid_argument(
            f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
        )
    for count, log in enumerate(logs, start=1):
        kind = log.WhichOneof("log_type")
        if kind not in handlers:
            raise ServingError.invalid_argument(f"Unsupported log_type for warmup: {kind} in {path}")
        try:
            handlers[kind](getattr(log, kind))
        except ServingError as e:
            raise ServingError(e.code, f"Warmup request {count} in {path} failed: {e.message}") from e
    return len(logs)
