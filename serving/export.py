"""``tfads export``: write a trained (optionally calibrated) model as a TF Serving version directory.

Layout: ``<model_base_path>/<version>/`` holding the SavedModel (signatures below), its vocabulary
assets, ``assets.extra/tf_serving_warmup_requests`` and ``model_card.json``. The version is built in
a hidden temporary directory beside it and renamed into place, so a half-written version is never
visible to a polling server. A calibrated model (``tfads calibrate``) serves its AdaCalib layers as
precomputed per-value tables (``tfads.calibration.compiled``): same outputs, a fraction of the ops.

Signatures (every one takes raw fields only: derived features such as scenario = media|slot are
computed inside the SavedModel, decision 0027):
  serving_default          raw field tensors by name (batch dimension; ``manifest.input_dtypes``) -> ctr,
                           cvr, ctcvr (calibrated) and ctr_raw, cvr_raw, ctcvr_raw (uncalibrated); ctr and
                           ctr_raw only for a click-only model
  predict_examples         ``examples``: serialized tf.Example of the raw fields -> the same outputs
  regress                  method tensorflow/serving/regress: ``inputs`` (tf.Example) -> ``outputs`` (pCTR)
  classify                 method tensorflow/serving/classify: ``inputs`` -> ``scores`` [1-p, p], ``classes``
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from typing import Any

import numpy as np

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tfads.calibration.compiled import compile_calibration
from tfads.data import DTYPES, derived_parts, feature_spec, parse_examples
from tfads.calibration.combined import calibrated_tasks
from tfads.core.manifest import Manifest
from tfads.core.names import CTCVR, CTR, CVR, RAW_SUFFIX
from tfads.layers.derived import add_derived

log = logging.getLogger(__name__)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_CARD = "model_card.json"


class ServingModule(tf.Module):
    """Wraps a Keras model with TF Serving signatures; the model's own preprocessing layers compute the
    derived features and do the vocabulary lookups, so serving takes raw values exactly as logged.

    The SavedModel tracks only what the signatures capture: the served Keras model's variables and lookup
    tables (with their vocabulary assets) and the compiled calibration tables. Not the Keras model object:
    TF Serving reads no Keras metadata, and Keras' own serialisation of it (every layer's call traced for
    both ``training`` values, every nested config written) took most of an export's time.
    """

    def __init__(self, model: keras.Model, manifest: Manifest) -> None:
        super().__init__()
        # a calibrated model serves its base and its AdaCalib layers as precomputed per-value tables (same outputs)
        base, self.compiled = compile_calibration(model) or (model, {})
        self._hold(base)
        self.served_state = _variables_and_tables(base)
        self.manifest = manifest
        self.feature_names = list(manifest.model_inputs)  # raw fields (and histories) only
        self.derived = derived_parts(manifest)  # a calibration field may be derived (scenario)
        self.heads = manifest.heads  # ctr, and cvr / ctcvr when the data has a conversion label
        self.example_spec = feature_spec(manifest, with_labels=False)
        specs = {name: tf.TensorSpec([None, *shape], DTYPES[dtype], name=name)
                 for name, (dtype, shape) in manifest.model_inputs.items()}
        self.serving_default = tf.function(self._serve_features).get_concrete_function(**specs)
        examples = tf.TensorSpec([None], tf.string, name="examples")
        inputs = tf.TensorSpec([None], tf.string, name="inputs")
        # one traced graph over tf.Example serves predict_examples, regress and classify
        self._examples_fn = tf.function(self._serve_examples)
        self.predict_examples = self._examples_fn.get_concrete_function(examples)
        self.regress = tf.function(self._regress).get_concrete_function(inputs)
        self.classify = tf.function(self._classify).get_concrete_function(inputs)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _hold(self, served: keras.Model) -> None:
        """Keep the Keras model the signatures call without making it a SavedModel child."""
        self.served = served

    def _outputs(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        features = {k: features[k] for k in self.feature_names}
        out = self._calibrated_outputs(features) if self.compiled else self.served(features, training=False)
        result = {k: tf.reshape(out[k], [-1]) for k in self.heads}
        for k in self.heads:
            result[k + RAW_SUFFIX] = tf.reshape(out[k + RAW_SUFFIX], [-1]) if k + RAW_SUFFIX in out else result[k]
        return result

    def _calibrated_outputs(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        raw = self.served(features, training=False)
        values = add_derived(features, self.derived)  # the base model's own function (tfads.layers.derived)
        out = {k + RAW_SUFFIX: raw[k] for k in self.heads}
        for task in calibrated_tasks(self.heads):
            calibrate = self.compiled.get(task)
            out[task] = calibrate(raw[task], {f: values[f] for f in calibrate.fields}) if calibrate else raw[task]
        if CTCVR in self.heads:
            out[CTCVR] = out[CTR] * out[CVR]
        return out

    def _serve_features(self, **features: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(features)

    def _serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(parse_examples(examples, self.manifest, self.example_spec))

    def _regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._examples_fn(inputs)["ctr"]}

    def _classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        p = self._examples_fn(inputs)["ctr"]
        scores = tf.stack([1.0 - p, p], axis=1)
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(p)[0], 1])
        return {"scores": scores, "classes": classes}


def _variables_and_tables(model: keras.Model) -> list[tf.Variable | tf.saved_model.experimental.TrackableResource]:
    """Every variable (weights, and metric state a layer updates) and resource (e.g. each StringLookup's
    vocabulary table) reachable from ``model``."""
    layers = (model, *model.submodules)  # submodules include a layer's metrics (not checkpointed)
    variables = [v for layer in layers for v in layer.variables]
    tables = [o for o in tf.train.TrackableView(model).descendants()
              if isinstance(o, tf.saved_model.experimental.TrackableResource)]
    return list({id(o): o for o in [*variables, *tables]}.values())


def next_version(model_base_path: str) -> int:
    """One more than the highest integer version under ``model_base_path`` (1 if none)."""
    if not tf.io.gfile.isdir(model_base_path):
        return 1
    versions = [int(d.rstrip("/")) for d in tf.io.gfile.listdir(model_base_path) if re.fullmatch(r"\d+/?", d)]
    return max(versions, default=0) + 1


def version_paths(model_base_path: str, version: int | None) -> tuple[int, str, str]:
    """``(version, final path, empty hidden temporary path)`` of a new version (default: the next one); the
    version is written to the temporary path and renamed to the final one.

    Raises:
      FileExistsError: if that version already exists.
    """
    version = version or next_version(model_base_path)
    final = os.path.join(model_base_path, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} already exists; pick another --version")
    tmp = os.path.join(model_base_path, f".tmp-{version}-{os.getpid()}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    return version, final, tmp


def export_model(
    model: keras.Model,
    manifest: Manifest,
    model_base_path: str,
    *,
    version: int | None = None,
    model_name: str = "ctr",
    card: dict[str, Any] | None = None,
    warmup_examples: int = 32,
) -> str:
    """Export ``model`` as ``<model_base_path>/<version>/`` atomically; return the version path.

    Raises:
      FileExistsError: if that version already exists.
    """
    version, final, tmp = version_paths(model_base_path, version)
    module = ServingModule(model, manifest)
    signatures = {
        "serving_default": module.serving_default,
        "predict_examples": module.predict_examples,
        "regress": module.regress,
        "classify": module.classify,
    }
    tf.saved_model.save(module, tmp, signatures=signatures)
    _set_method_names(
        tmp, {"regress": tf.saved_model.REGRESS_METHOD_NAME, "classify": tf.saved_model.CLASSIFY_METHOD_NAME}
    )
    _write_warmup(tmp, manifest, model_name, warmup_examples)
    card = {
        "model_name": model_name,
        "version": version,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "date_range": manifest.data.get("date_range"),
        "signatures": sorted(signatures),
        **(card or {}),
    }
    with tf.io.gfile.GFile(os.path.join(tmp, MODEL_CARD), "w") as f:
        json.dump(card, f, indent=2, default=str)
    tf.io.gfile.rename(tmp, final)
    log.info("exported %s version %d to %s", model_name, version, final)
    return final


def _set_method_names(path: str, methods: dict[str, str]) -> None:
    """TF2's saver marks every signature as Predict; TF Serving's Regress/Classify APIs need the
    regress/classify method names, so set them in saved_model.pb."""
    pb_path = os.path.join(path, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb_path, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(pb_path, "wb") as f:
        f.write(proto.SerializeToString())


def _write_warmup(path: str, manifest: Manifest, model_name: str, count: int) -> None:
    """Warmup requests: Predict calls on ``serving_default`` built from real test examples."""
    spec = feature_spec(manifest, with_labels=False)
    records = tf.data.TFRecordDataset(manifest.split_files("test")[:1], compression_type="GZIP").batch(count)
    batch = parse_examples(next(iter(records)), manifest, spec)
    tf.io.gfile.makedirs(os.path.join(path, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(path, WARMUP_FILE)) as writer:
        for size in (1, count):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
            )
            for name in manifest.model_inputs:
                request.inputs[name].CopyFrom(tf.make_tensor_proto(batch[name][:size].numpy()))
            writer.write(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString()
            )


def check_export(
    model: keras.Model, manifest: Manifest, version_path: str, *, rows: int = 2048, atol: float = 1e-5
) -> float:
    """Largest |SavedModel - Keras| over the outputs on test rows; raises if above ``atol``."""
    spec = feature_spec(manifest, with_labels=False)
    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(rows)
    serialized = next(iter(records))
    features = parse_examples(serialized, manifest, spec)
    loaded = tf.saved_model.load(version_path)
    by_features = loaded.signatures["serving_default"](**features)
    by_examples = loaded.signatures["predict_examples"](examples=serialized)
    expected = model(features, training=False)
    worst = 0.0
    for k in manifest.heads:
        want = np.reshape(expected[k].numpy(), -1)
        for got in (by_features[k], by_examples[k]):
            worst = max(worst, float(np.max(np.abs(got.numpy() - want))))
    if worst > atol:
        raise AssertionError(f"export check failed: SavedModel differs from Keras by {worst:.2e} > {atol}")
    return worst
