"""A tiny SavedModel with the export's signature layout, for the server's tests and benchmarks.

Signatures: ``serving_default`` (raw features ``media`` string, ``slot_id`` int64, ``bid_floor``
float32 -> ``ctr``, ``cvr``, ``ctcvr`` and their ``*_raw``), ``predict_examples`` (serialized
tf.Example under ``examples``), ``tensorflow/serving/regress`` and ``tensorflow/serving/classify``.
``bias`` shifts every logit, so versions built with different biases answer differently.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.server.inference import WARMUP_FILE

FEATURES = {
    "media": tf.io.FixedLenFeature([], tf.string),
    "slot_id": tf.io.FixedLenFeature([], tf.int64),
    "bid_floor": tf.io.FixedLenFeature([], tf.float32),
}
OUTPUTS = ("ctr", "cvr", "ctcvr", "ctr_raw", "cvr_raw", "ctcvr_raw")
_RAW_SPECS = {name: tf.TensorSpec([None], spec.dtype, name=name) for name, spec in FEATURES.items()}
_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")


class ToyCtrModel(tf.Module):
    """sigmoid of simple arithmetic over three raw features; outputs shaped like the real export."""

    def __init__(self, bias: float, depth: int = 0) -> None:
        super().__init__()
        self.bias = tf.Variable(bias, dtype=tf.float32)
        self.depth = depth

    def _score(self, media: tf.Tensor, slot_id: tf.Tensor, bid_floor: tf.Tensor) -> dict[str, tf.Tensor]:
        bucket = tf.cast(tf.strings.to_hash_bucket_fast(media, 7), tf.float32) / 7.0
        logit = self.bias + 0.3 * bucket + 0.01 * tf.cast(slot_id % 10, tf.float32) + 0.5 * tf.math.log1p(bid_floor)
        for _ in range(self.depth):  # extra per-call graph work, like a deeper model's many small ops
            logit = logit + 1e-3 * tf.tanh(logit)
        ctr_raw, cvr_raw = tf.sigmoid(logit - 2.0), tf.sigmoid(logit - 1.0)
        raw = {"ctr_raw": ctr_raw, "cvr_raw": cvr_raw, "ctcvr_raw": ctr_raw * cvr_raw}
        calibrated = {name[: -len("_raw")]: 0.9 * value for name, value in raw.items()}
        return calibrated | raw

    @tf.function(input_signature=[_RAW_SPECS["media"], _RAW_SPECS["slot_id"], _RAW_SPECS["bid_floor"]])
    def serving_default(self, media, slot_id, bid_floor):
        return self._score(media, slot_id, bid_floor)

    def _parse(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(examples, FEATURES)
        return self._score(features["media"], features["slot_id"], features["bid_floor"])

    @tf.function(input_signature=[_EXAMPLES_SPEC])
    def predict_examples(self, examples):
        return self._parse(examples)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._parse(inputs)["ctcvr"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        ctr = self._parse(inputs)["ctr"]
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(ctr)[0], 1])
        return {"classes": classes, "scores": tf.stack([1.0 - ctr, ctr], axis=1)}


def candidates(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random raw-feature rows as numpy arrays keyed by input name."""
    rng = np.random.default_rng(seed)
    return {
        "media": np.array([f"media_{i}".encode() for i in rng.integers(0, 20, n)], dtype=object),
        "slot_id": rng.integers(0, 1000, n).astype(np.int64),
        "bid_floor": rng.uniform(0.0, 5.0, n).astype(np.float32),
    }


def example(media: str, slot_id: int, bid_floor: float) -> tf.train.Example:
    """One tf.Example with the toy model's features."""
    feature = {
        "media": tf.train.Feature(bytes_list=tf.train.BytesList(value=[media.encode()])),
        "slot_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[slot_id])),
        "bid_floor": tf.train.Feature(float_list=tf.train.FloatList(value=[bid_floor])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def save_toy_model(
    path: str, *, bias: float = 0.0, depth: int = 0, warmup_requests: int = 2, model_name: str = "toy"
) -> str:
    """Write the toy SavedModel to ``path`` (a ``<base>/<version>`` directory) with warmup records.

    ``depth`` adds that many elementwise op pairs per call, to stand in for a heavier model.
    """
    module = ToyCtrModel(bias, depth)
    signatures = {
        "serving_default": module.serving_default,
        "predict_examples": module.predict_examples,
        "tensorflow/serving/regress": module.regress,
        "tensorflow/serving/classify": module.classify,
    }
    tf.saved_model.save(module, path, signatures=signatures)
    if warmup_requests:
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(path, WARMUP_FILE)) as writer:
            for i in range(warmup_requests):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                for name, value in candidates(4, seed=i).items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
    return path
