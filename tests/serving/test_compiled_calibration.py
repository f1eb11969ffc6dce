"""AdaCalib compiled to lookup tables for serving: same function as the layer, far fewer ops, exported."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from tfads.calibration.compiled import CompiledCalibration, compile_calibration
from serving.export import check_export, export_model
from tfads.calibration.combined import combined_model
from tfads.calibration import AdaCalib, compute_calibration_stats
from tfads.core.manifest import load_manifest
from tfads.data import feature_spec, parse_examples
from tfads.model_io import load_trained_model


def _stats(rng: np.random.Generator, n: int = 20_000, values: int = 12):
    scenario = rng.integers(0, values, n)
    p = 1 / (1 + np.exp(-(rng.normal(-3, 0.8, n) + 0.3 * (scenario % 4))))
    y = (rng.random(n) < p * (1 + 0.2 * (scenario % 3))).astype(float)
    return compute_calibration_stats(p, y, {"scenario": scenario.astype(str)})


def _randomized(layer: AdaCalib, rng: np.random.Generator) -> AdaCalib:
    """Non-zero network weights, so the compiled tables must carry what the networks compute."""
    for w in layer.trainable_weights:
        w.assign(w + rng.normal(0, 0.3, w.shape).astype(np.float32))
    return layer


@pytest.mark.parametrize("selection", ["soft", "hard"])
def test_compiled_tables_equal_the_layer_on_a_dense_sweep(selection):
    rng = np.random.default_rng(3)
    layer = AdaCalib(_stats(rng), selection=selection)
    probe = {"prediction": tf.constant([0.05]), "scenario": tf.constant(["0"])}
    layer(probe)
    _randomized(layer, rng)
    compiled = CompiledCalibration(layer)
    p = np.concatenate([np.geomspace(1e-7, 0.999999, 400), rng.uniform(0, 1, 400)]).astype(np.float32)
    values = np.array([str(v) for v in rng.integers(0, 14, len(p))])  # 12 and 13 were never seen
    want = layer({"prediction": tf.constant(p[:, None]), "scenario": tf.constant(values[:, None])}).numpy()
    got = compiled(tf.constant(p[:, None]), {"scenario": tf.constant(values[:, None])}).numpy()
    assert got.shape == want.shape == (len(p), 1)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    ints = compiled(tf.constant(p[:10]), {"scenario": tf.constant([3] * 10)}).numpy()
    np.testing.assert_allclose(ints, compiled(tf.constant(p[:10]), {"scenario": tf.constant(["3"] * 10)}).numpy())


def test_calibrated_export_serves_the_tables(trained_model_dir, manifest_path, tmp_path):
    rng = np.random.default_rng(5)
    manifest = load_manifest(manifest_path)
    base = load_trained_model(trained_model_dir, float32_matmuls=True)  # as `tfads export` serves it
    with open(manifest.vocab_path("scenario")) as f:
        scenarios = [line.strip() for line in f if line.strip()][:40]
    stats = compute_calibration_stats(rng.uniform(0.005, 0.2, 30_000), (rng.random(30_000) < 0.05).astype(float),
                                      {"scenario": rng.choice(scenarios, 30_000)})
    layers = {task: AdaCalib(stats) for task in ("ctr", "cvr")}
    model = combined_model(base, layers)
    for layer in layers.values():
        _randomized(layer, rng)
    base_only, compiled = compile_calibration(model)
    assert base_only is base and set(compiled) == {"ctr", "cvr"}
    assert compile_calibration(base) is None

    path = export_model(model, manifest, str(tmp_path / "models"))
    assert check_export(model, manifest, path, atol=1e-5) <= 1e-5  # fed raw fields only
    # the served pCTCVR, what an oCPA bid multiplies, is calibrated pCTR x calibrated pCVR, as in Keras
    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(256)
    serialized = next(iter(records))
    served = tf.saved_model.load(path).signatures["predict_examples"](examples=serialized)
    keras_out = model(parse_examples(serialized, manifest, feature_spec(manifest, with_labels=False)), training=False)
    ctcvr = served["ctcvr"].numpy()
    np.testing.assert_allclose(ctcvr, served["ctr"].numpy() * served["cvr"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(ctcvr, keras_out["ctcvr"].numpy().reshape(-1), atol=1e-6)
    assert not np.allclose(ctcvr, served["ctcvr_raw"].numpy())
    inputs = tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]
    assert set(inputs) == set(manifest.input_dtypes) and "scenario" not in inputs  # computed inside (decision 0027)
    ops = {n.op for f in tf.saved_model.load(path).signatures["serving_default"].graph.as_graph_def().library.function
           for n in f.node_def}
    assert "Softplus" not in ops and "Cumsum" not in ops  # the keypoint networks are not in the serving graph
    assert "UpperBound" in ops  # ... their tables are (tf.searchsorted)
