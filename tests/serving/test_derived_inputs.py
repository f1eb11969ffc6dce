"""Served models take raw fields only (decision 0027): the embedded server answers Predict / Regress requests
that carry no derived feature with the Keras model's scores, for the default schema and for a user's schema
whose derived feature has another name, another separator, an int part and a part that is no feature."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from serving.export import export_model
from serving.local_server import embedded_server, model_config_text
from tests.serving.answers import keras_answers, raw_rows, served_answers
from tests.own_logs import RENAMED, click_only_schema, rewrite_click_only
from tfads.core.manifest import load_manifest
from tfads.data import feature_spec, with_derived

SURFACE = "surface_day"  # the user's derived feature: site :: placement :: weekday
SEPARATOR = " :: "


def test_session_model_served_from_raw_fields_scores_as_keras(ab_server, trained_model_dir, manifest_path):
    from tfads.model_io import load_trained_model

    manifest = load_manifest(manifest_path)
    raw, examples = raw_rows(manifest)
    assert "scenario" not in raw  # the Beam job wrote it; requests do not carry it
    model = load_trained_model(trained_model_dir, float32_matmuls=True)  # what the export serves
    want = keras_answers(model, raw, manifest.heads)
    for version in (1, 2):
        predicted, regressed = served_answers(ab_server, "ctr", version, raw, examples, manifest.heads)
        for head in manifest.heads:
            np.testing.assert_allclose(predicted[head], want[head], atol=1e-5, rtol=0)
        np.testing.assert_allclose(regressed, want["ctr"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def surface_data(logs_dir, tmp_path_factory) -> tuple[str, str]:
    """Click-only renamed logs built with a schema whose derived feature is SURFACE = site :: placement :: weekday;
    ``placement`` is joined but is no feature itself. Returns (schema path, manifest path)."""
    from tfads.jobs.dataset import build_dataset

    work = tmp_path_factory.mktemp("surface")
    rewrite_click_only(logs_dir, str(work / "logs"))
    path = click_only_schema(str(work / "schema.yaml"))
    schema = yaml.safe_load(open(path))
    placement = RENAMED["slot"]
    schema["fields"][placement] = {"type": "string"}  # no feature: only a part of the derived one
    (old,) = schema["derived"]
    schema["derived"] = {SURFACE: {"concat": [RENAMED["media"], placement, "weekday"], "separator": SEPARATOR,
                                   "feature": "categorical", "domain_aware": True, "calibration": True}}
    schema["domain"] = SURFACE
    assert old != SURFACE
    with open(path, "w") as f:
        yaml.safe_dump(schema, f, sort_keys=False)
    return path, build_dataset(str(work / "logs"), str(work / "data"), schema=path)


def test_users_derived_feature_is_computed_in_graph_and_served(surface_data, small_experiment, tmp_path):
    from tfads.calibration import AdaCalib, compute_calibration_stats
    from tfads.calibration.combined import combined_model
    from tfads.model_io import load_trained_model
    from tfads.train import train

    schema_path, manifest_path = surface_data
    manifest = load_manifest(manifest_path)
    placement = RENAMED["slot"]
    assert manifest.derived[SURFACE].concat == [RENAMED["media"], placement, "weekday"]
    assert placement in manifest.input_dtypes and placement not in manifest.features
    assert manifest.input_dtypes["weekday"] == "int64" and SURFACE not in manifest.input_dtypes

    # the derived column the Beam job wrote equals the graph's, byte for byte, on every example
    beam = {SURFACE: tf.io.FixedLenFeature([], tf.string)}
    files = [f for s in ("train", "valid", "calib", "test") for f in manifest.split_files(s)]
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192):
        parsed = tf.io.parse_example(records, {**feature_spec(manifest, with_labels=False), **beam})
        written = parsed.pop(SURFACE).numpy().tolist()
        assert with_derived(parsed, manifest)[SURFACE].numpy().tolist() == written
    assert SEPARATOR.encode() in written[0]

    config = dataclasses.replace(small_experiment, schema=schema_path,
                                 train=dataclasses.replace(small_experiment.train, epochs=1))
    train(config, manifest_path, str(tmp_path / "model"), verbose=0)
    model = load_trained_model(str(tmp_path / "model"), float32_matmuls=True)
    assert sorted(model.input) == sorted(manifest.input_dtypes)

    # a calibrated model on the derived field: its export too takes raw fields only
    rng = np.random.default_rng(0)
    values = [line.strip() for line in open(manifest.vocab_path(SURFACE)) if line.strip()]
    stats = compute_calibration_stats(rng.uniform(0.005, 0.2, 20_000), (rng.random(20_000) < 0.05).astype(float),
                                      {SURFACE: rng.choice(values, 20_000)})
    layer = AdaCalib(stats)
    calibrated = combined_model(model, {"ctr": layer})
    for w in layer.trainable_weights:  # non-zero networks, so the calibrated scores differ from the raw ones
        w.assign(w + rng.normal(0, 0.3, w.shape).astype(np.float32))

    base = tmp_path / "models" / "ctr"
    export_model(model, manifest, str(base), version=1, warmup_examples=4)
    export_model(calibrated, manifest, str(base), version=2, warmup_examples=4)
    for version in ("1", "2"):
        signature = tf.saved_model.load(str(base / version)).signatures["serving_default"]
        assert set(signature.structured_input_signature[1]) == set(manifest.input_dtypes)

    raw, examples = raw_rows(manifest)
    heads = ("ctr", "ctr_raw")
    config_file = tmp_path / "models.config"
    config_file.write_text(model_config_text("ctr", str(base), {"plain": 1, "calibrated": 2}))
    with embedded_server([f"--model_config_file={config_file}"], ["ctr"]) as target:
        for version, keras_model in ((1, model), (2, calibrated)):
            want = keras_answers(keras_model, raw, ("ctr",))["ctr"]
            predicted, regressed = served_answers(target, "ctr", version, raw, examples, heads)
            np.testing.assert_allclose(predicted["ctr"], want, atol=1e-5, rtol=0)
            np.testing.assert_allclose(regressed, want, atol=1e-5, rtol=0)
    assert np.max(np.abs(predicted["ctr"] - predicted["ctr_raw"])) > 1e-4  # version 2 did calibrate
