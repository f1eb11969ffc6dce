"""Models over user behaviour histories: training, save/load, export, and the served history broadcast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

# history_manifest (the session logs built with two histories) and din_model_dir (a DIN model trained on
# them) are session fixtures in tests/conftest.py, shared with tests/serving/test_history_bidding.py.


def _config(small_experiment, pooling: str, backbone: str = "dcnv2"):
    from tfads.core.experiment import HistoryConfig

    model = dataclasses.replace(small_experiment.model, backbone=backbone,
                                history=HistoryConfig(pooling=pooling, din_units=[8, 4]))
    return dataclasses.replace(small_experiment, model=model)


def _batch(manifest, rows: int = 64) -> dict[str, tf.Tensor]:
    from tfads.data import feature_spec, parse_examples

    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(4096)
    batch = parse_examples(next(iter(records)), manifest, feature_spec(manifest, with_labels=False))
    # the rows with the longest histories first, so the checks below see real histories
    order = tf.argsort(batch["hist_ad_length"], direction="DESCENDING")[:rows]
    return {name: tf.gather(batch[name], order) for name in manifest.model_inputs}


def test_inputs_are_padded_histories_with_lengths(history_manifest):
    batch = _batch(history_manifest)
    assert batch["hist_ad"].shape[1] == 8 and batch["hist_category"].shape[1] == 5
    lengths = batch["hist_ad_length"].numpy()
    assert lengths.max() == 8 and lengths.min() >= 0
    assert (batch["hist_ad"].numpy()[np.arange(8)[None, :] >= lengths[:, None]] == 0).all()  # padding


@pytest.mark.parametrize("pooling, backbone", [("mean", "dnn"), ("max", "star"), ("sum", "dcnv2"),
                                               ("din", "shared_bottom"), ("none", "dcnv2")])
def test_every_pooling_builds_with_every_backbone_and_ignores_padding(history_manifest, small_experiment,
                                                                      pooling, backbone):
    from tfads.models.esmm import build_model

    model = build_model(history_manifest, _config(small_experiment, pooling, backbone).model)
    batch = _batch(history_manifest)
    before = model(batch)["ctr"].numpy()
    # different values in the padded positions: same predictions
    lengths = batch["hist_ad_length"].numpy()[:, None]
    junk = np.where(np.arange(8)[None, :] >= lengths, 987654321, batch["hist_ad"].numpy())
    after = model({**batch, "hist_ad": tf.constant(junk)})["ctr"].numpy()
    np.testing.assert_allclose(after, before, rtol=1e-6)
    # the history itself changes predictions (unless the model does not read it)
    shorter = model({**batch, "hist_ad_length": tf.zeros_like(batch["hist_ad_length"])})["ctr"].numpy()
    assert (np.abs(shorter - before).max() > 1e-7) == (pooling != "none")


def test_trained_din_model_saves_loads_and_exports(history_manifest, din_model_dir, tmp_path):
    from serving.export import check_export, export_model
    from tfads.model_io import load_trained_model

    model = load_trained_model(din_model_dir, float32_matmuls=True)
    assert any("hist_category_din" == layer.name for layer in model.layers)
    version = export_model(model, history_manifest, str(tmp_path / "models"), version=1)
    assert check_export(model, history_manifest, version) < 1e-5
    batch = _batch(history_manifest, rows=16)
    loaded = tf.saved_model.load(version)
    served = loaded.signatures["serving_default"](**batch)["ctr"].numpy()
    np.testing.assert_allclose(served, model(batch)["ctr"].numpy()[:, 0], atol=1e-6)


def test_one_history_for_many_candidates_equals_per_candidate_rows(history_manifest, din_model_dir, tmp_path):
    """A request sends the user's history once (batch 1) with B candidates; the graph broadcasts it."""
    from serving.export import export_model
    from tfads.model_io import load_trained_model

    model = load_trained_model(din_model_dir, float32_matmuls=True)
    signature = tf.saved_model.load(export_model(model, history_manifest, str(tmp_path / "m"), version=1)).signatures[
        "serving_default"]
    batch = _batch(history_manifest, rows=10)
    names = ["hist_category", "hist_ad", "hist_category_length", "hist_ad_length"]
    once = {**batch, **{n: batch[n][:1] for n in names}}
    copied = {**batch, **{n: tf.repeat(batch[n][:1], 10, axis=0) for n in names}}
    np.testing.assert_allclose(signature(**once)["ctr"].numpy(), signature(**copied)["ctr"].numpy(), atol=1e-7)


def test_evaluate_calibrate_and_export_take_a_history_model(history_manifest, din_model_dir, tmp_path):
    """The command line end to end on data with histories: evaluate (scored rows keep the lengths, not the
    lists), calibrate (AdaCalib over the history model) and export (the calibrated version serves the lists)."""
    import json

    from tfads import cli
    from tfads.model_io import load_trained_model
    from tfads.predict import predict_split

    data = history_manifest.path
    rows = predict_split(load_trained_model(din_model_dir), history_manifest, "test")
    assert "hist_ad_length" in rows and "hist_ad" not in rows and rows["ctr"].between(0, 1).all()
    assert cli.main(["evaluate", "--model-dir", din_model_dir, "--data", data, "--out", str(tmp_path / "eval")]) == 0
    assert 0.5 < json.load(open(tmp_path / "eval" / "metrics.json"))["ctr"]["AUC"] <= 1
    assert cli.main(["calibrate", "--model-dir", din_model_dir, "--data", data, "--out", str(tmp_path / "cal"),
                     "--epochs", "1"]) == 0
    assert cli.main(["export", "--model-dir", str(tmp_path / "cal"), "--data", data,
                     "--model-base-path", str(tmp_path / "models")]) == 0
    signature = tf.saved_model.load(str(tmp_path / "models" / "1")).signatures["serving_default"]
    assert {"hist_ad", "hist_ad_length", "hist_category"} <= set(signature.structured_input_signature[1])
