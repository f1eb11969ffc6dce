"""`tfads export`: atomic version dirs, TF Serving signatures, warmup requests, model card, assets."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

import tfads  # noqa: F401
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.export import WARMUP_FILE, check_export, export_model, next_version
from tfads.core.manifest import load_manifest
from tfads.train import load_trained_model


@pytest.fixture(scope="module")
def exported(trained_model_dir, manifest_path, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "ctr")
    manifest = load_manifest(manifest_path)
    model = load_trained_model(trained_model_dir, float32_matmuls=True)  # what `tfads export` serves
    first = export_model(model, manifest, base)
    second = export_model(model, manifest, base, card={"note": "second"})
    return model, manifest, base, first, second


def test_versions_are_numbered_and_nothing_half_written_is_visible(exported):
    _, _, base, first, second = exported
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert next_version(base) == 3
    with pytest.raises(FileExistsError):
        export_model(exported[0], exported[1], base, version=2)


def test_signatures_names_and_dtypes(exported):
    _, manifest, _, first, _ = exported
    loaded = tf.saved_model.load(first)
    assert set(loaded.signatures) == {"serving_default", "predict_examples", "regress", "classify"}
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    expected = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
    assert {k: v.dtype for k, v in inputs.items()} == {k: expected[d] for k, d in manifest.input_dtypes.items()}
    assert "scenario" not in inputs and {"media", "slot"} <= set(inputs)  # raw fields only (decision 0027)
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert set(outputs) == {"ctr", "cvr", "ctcvr", "ctr_raw", "cvr_raw", "ctcvr_raw"}
    assert set(loaded.signatures["regress"].structured_outputs) == {"outputs"}
    assert set(loaded.signatures["classify"].structured_outputs) == {"scores", "classes"}
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(open(os.path.join(first, "saved_model.pb"), "rb").read())
    methods = {k: v.method_name for k, v in proto.meta_graphs[0].signature_def.items()}
    assert methods["regress"] == "tensorflow/serving/regress"
    assert methods["classify"] == "tensorflow/serving/classify"
    assert methods["serving_default"] == "tensorflow/serving/predict"


def test_saved_model_matches_keras_and_carries_its_vocabularies(exported):
    model, manifest, _, first, _ = exported
    assert check_export(model, manifest, first) <= 1e-5
    for name, feature in manifest.features.items():
        if feature.get("vocab"):
            assert filecmp.cmp(os.path.join(first, "assets", f"{name}.txt"), manifest.vocab_path(name), shallow=False)


def test_warmup_requests_and_model_card(exported):
    _, manifest, _, first, second = exported
    records = list(tf.data.TFRecordDataset(os.path.join(first, WARMUP_FILE)))
    assert len(records) == 2
    log = prediction_log_pb2.PredictionLog.FromString(records[1].numpy())
    request = log.predict_log.request
    assert set(request.inputs) == set(manifest.input_dtypes)
    loaded = tf.saved_model.load(first)
    feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in feed.items()})
    assert np.all(np.isfinite(out["ctr"].numpy()))
    card = json.load(open(os.path.join(second, "model_card.json")))
    assert card["version"] == 2 and card["note"] == "second"
    assert card["date_range"] == manifest.data["date_range"]
