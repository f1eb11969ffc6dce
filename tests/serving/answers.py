"""Answers of one model version to the same rows through the embedded server (Predict on raw tensors, Regress on
tf.Examples) and through Keras, for tests that compare them."""

from __future__ import annotations

import numpy as np

import tfads  # noqa: F401  (before TensorFlow)
import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

from tfads.core.manifest import Manifest
from tfads.data import feature_spec

ROWS = 256


def raw_rows(manifest: Manifest) -> tuple[dict[str, np.ndarray], list[bytes]]:
    """The first ROWS test examples: their raw inputs, and re-serialised tf.Examples holding only those."""
    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(ROWS)
    parsed = tf.io.parse_example(next(iter(records)), feature_spec(manifest, with_labels=False))
    raw = {k: v.numpy() for k, v in parsed.items()}
    assert set(raw) == set(manifest.input_dtypes) and not set(raw) & set(manifest.derived)
    examples = []
    for i in range(len(next(iter(raw.values())))):
        feature = {}
        for name, values in raw.items():
            v = values[i]
            if values.dtype == object:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
            elif values.dtype.kind == "i":
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
            else:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return raw, examples


def served_answers(target: str, model: str, version: int, raw: dict[str, np.ndarray], examples: list[bytes],
            heads: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Predict (serving_default, raw tensors) and Regress (tf.Examples) answers of one version."""
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.version.value = model, version
        for name, values in raw.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
        response = stub.Predict(request, timeout=60)
        predicted = {k: tf.make_ndarray(response.outputs[k]).reshape(-1) for k in heads}
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name, regress.model_spec.version.value = model, version
        regress.model_spec.signature_name = "regress"
        regress.input.example_list.examples.extend(tf.train.Example.FromString(e) for e in examples)
        regressed = stub.Regress(regress, timeout=60)
    return predicted, np.array([r.value for r in regressed.result.regressions])


def keras_answers(model, raw: dict[str, np.ndarray], heads: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = model({k: tf.constant(v) for k, v in raw.items()}, training=False)
    return {k: out[k].numpy().reshape(-1) for k in heads}
