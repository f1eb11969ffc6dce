"""AutoHERI: the gated CTR -> CVR towers (tfads.layers.heri), the architecture steps (tfads.autoheri), the config
and the search -> prune -> retrain job (tfads.jobs.autoheri) through to an export."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np
import pytest

import tfads  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from tfads.autoheri import ArchitectureSteps, edges_from_gates, heri_layer
from tfads.core.experiment import HeriConfig, ModelConfig
from tfads.core.manifest import Manifest, load_manifest
from tfads.data import make_dataset
from tfads.layers import HeriTowers
from tfads.layers.heri import binary_entropy
from tfads.models import build_model, compile_model
from tfads.models.esmm import loss_weights

RNG = np.random.default_rng(5)
X_CTR = tf.constant(RNG.normal(size=(16, 6)), tf.float32)
X_CVR = tf.constant(RNG.normal(size=(16, 4)), tf.float32)


def _towers_model(layer: HeriTowers) -> keras.Model:
    inputs = [keras.Input((6,)), keras.Input((4,))]
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("mode, edges", [("search", []), ("fixed", [[0, 1], [1, 0]])])
def test_config_and_savedmodel_round_trip(mode, edges, tmp_path) -> None:
    layer = HeriTowers([8, 5], mode=mode, edges=edges, entropy_weight=0.3, name="heri")
    model = _towers_model(layer)
    if mode == "search":
        layer.gate_logits.assign(RNG.normal(size=(2, 2)))  # the searched gates are saved with the weights
    config = layer.get_config()
    assert HeriTowers.from_config(config).get_config() == config
    assert config["edges"] == edges and config["units"] == [8, 5]
    expected = model([X_CTR, X_CVR])
    model.save(tmp_path / "m")
    loaded = keras.models.load_model(tmp_path / "m", compile=False)
    for got, want in zip(loaded([X_CTR, X_CVR]), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_allclose(loaded.get_layer("heri").gates().numpy(), layer.gates().numpy())


def test_gates_are_in_the_unit_interval_and_the_entropy_penalty_is_least_at_0_and_1() -> None:
    layer = HeriTowers([4, 4, 3], entropy_weight=0.5)
    layer([X_CTR, X_CVR])
    assert layer.gate_logits.shape == (3, 3) and not layer.gate_logits.trainable
    np.testing.assert_allclose(layer.gates().numpy(), 0.5)  # every edge starts half open
    assert float(layer.entropy_penalty()) == pytest.approx(0.5 * math.log(2.0), rel=1e-6)  # the maximum
    penalties = []
    for scale in (0.5, 2.0, 8.0, 40.0):
        layer.gate_logits.assign(scale * np.sign(RNG.normal(size=(3, 3))))
        g = layer.gates().numpy()
        assert np.all((g > 0) & (g < 1)) or scale == 40.0  # float32 saturates only far out
        penalties.append(float(layer.entropy_penalty()))
    assert penalties == sorted(penalties, reverse=True) and penalties[-1] < 1e-12
    z = np.linspace(-6, 6, 13)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(binary_entropy(tf.constant(z)).numpy(), -p * np.log(p) - (1 - p) * np.log(1 - p))


def _cvr_gradients(layer: HeriTowers) -> tuple[list, list]:
    """Gradients of the CVR output's sum w.r.t. the CTR tower's and the CVR tower's weights."""
    with tf.GradientTape(persistent=True) as tape:
        _, cvr = layer([X_CTR, X_CVR])
        total = tf.reduce_sum(cvr)
    ctr_vars = [w for d in layer.ctr_layers for w in d.trainable_weights]
    cvr_vars = [w for d in layer.cvr_layers for w in d.trainable_weights]
    return tape.gradient(total, ctr_vars), tape.gradient(total, cvr_vars)


def test_fixed_mode_without_edges_is_a_plain_cvr_tower() -> None:
    layer = HeriTowers([8, 5], mode="fixed", edges=[])
    _, cvr = layer([X_CTR, X_CVR])
    h = X_CVR.numpy()
    for dense in layer.cvr_layers:  # a plain ReLU MLP on the CVR tower's own input
        h = np.maximum(h @ dense.kernel.numpy() + dense.bias.numpy(), 0.0)
    np.testing.assert_allclose(cvr.numpy(), h, rtol=1e-5, atol=1e-6)
    assert [d.kernel.shape[0] for d in layer.cvr_layers] == [4, 8]  # no column reads the CTR tower
    to_ctr, to_cvr = _cvr_gradients(layer)
    assert all(g is None for g in to_ctr) and all(g is not None for g in to_cvr)
    assert layer.arch_variables == [] and float(layer.entropy_penalty()) == 0.0


@pytest.mark.parametrize("mode, edges", [("fixed", [[1, 1]]), ("search", [])])
def test_an_edge_carries_cvr_gradients_into_the_ctr_tower(mode, edges) -> None:
    layer = HeriTowers([8, 5], mode=mode, edges=edges)
    to_ctr, _ = _cvr_gradients(layer)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in to_ctr)
    if mode == "fixed":  # CVR layer 1 reads its own layer 0 (8 wide) and CTR layer 1 (5 wide)
        assert [d.kernel.shape[0] for d in layer.cvr_layers] == [4, 8 + 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": []}, "`units` must be a non-empty list"),
        ({"units": [4], "mode": "joint"}, "`mode` must be one of"),
        ({"units": [4, 4], "mode": "fixed", "edges": [[0, 2]]}, "tower layer indices in \\[0, 2\\)"),
        ({"units": [4, 4], "mode": "fixed", "edges": [[0, 1], [0, 1]]}, "lists an edge twice"),
        ({"units": [4, 4], "edges": [[0, 1]]}, "`edges` is for mode 'fixed'"),
        ({"units": [4], "entropy_weight": -1.0}, "`entropy_weight` must be >= 0"),
    ],
)
def test_layer_errors_name_the_argument(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        HeriTowers(**kwargs)


@pytest.mark.parametrize(
    "heri, message",
    [
        ({"mode": "search", "edges": [[0, 1]]}, "heri.edges is for mode fixed"),
        ({"mode": "fixed", "edges": [[0, -1]]}, "distinct \\[i, j\\] pairs"),
        ({"threshold": 1.0}, "heri.threshold must be in \\(0, 1\\)"),
        ({"arch_learning_rate": 0.0}, "heri.arch_learning_rate must be > 0"),
        ({"entropy_weight": -0.1}, "heri.entropy_weight must be >= 0"),
    ],
)
def test_heri_config_errors(heri, message) -> None:
    with pytest.raises(ValueError, match=message):
        HeriConfig(enabled=True, **heri)


def test_model_config_checks_the_edges_against_the_tower_layers() -> None:
    with pytest.raises(ValueError, match="index the 2 tower layers"):
        ModelConfig(tower_units=[8, 4], heri=HeriConfig(enabled=True, mode="fixed", edges=[[2, 0]]))
    ModelConfig(tower_units=[8, 4], heri=HeriConfig(enabled=False, mode="fixed", edges=[[2, 0]]))  # off: unused


def _heri_experiment(small_experiment, **heri):
    model = dataclasses.replace(
        small_experiment.model, tower_units=[8, 8], heri=HeriConfig(enabled=True, **heri),
        adasparse=dataclasses.replace(small_experiment.model.adasparse, enabled=False),
    )
    return dataclasses.replace(small_experiment, model=model)


def test_architecture_steps_move_only_the_gates_and_weight_steps_no_gate(manifest_path, small_experiment) -> None:
    config = _heri_experiment(small_experiment, mode="search", arch_learning_rate=0.05)
    manifest = load_manifest(manifest_path)
    keras.utils.set_random_seed(3)
    model = build_model(manifest, config.model)
    compile_model(model, config.model, 0.01)
    layer = heri_layer(model)
    train_ds = make_dataset(manifest.split_files("train"), manifest, 256)
    batch = next(iter(train_ds))
    gates_at = next(k for k, v in enumerate(model.weights) if v is layer.gate_logits)

    def moved_by(step) -> list[int]:
        before = [v.numpy() for v in model.weights]
        step()
        return [k for k, (a, v) in enumerate(zip(before, model.weights, strict=True)) if not np.array_equal(a, v)]

    moved = moved_by(lambda: model.train_on_batch(*batch))
    assert moved and gates_at not in moved
    steps = ArchitectureSteps(model, layer, train_ds, loss_weights(config.model), learning_rate=0.05)
    valid_batch = next(iter(make_dataset(manifest.split_files("valid"), manifest, 256)))
    assert moved_by(lambda: steps.step(*valid_batch)) == [gates_at]
    assert np.all(np.abs(layer.gate_logits.numpy()) > 0.01)  # Adam's first step moves every gate by about the rate


def test_click_only_data_builds_plain_towers(manifest_path, small_experiment, caplog) -> None:
    manifest = load_manifest(manifest_path)
    data = {**manifest.data, "label_roles": {"click": "click", "conversion": None}, "labels": ["click"]}
    config = _heri_experiment(small_experiment, mode="search")
    with caplog.at_level(logging.INFO, logger="tfads.models.esmm"):
        model = build_model(Manifest(manifest.path, data), config.model)
    assert model.output_names == ["ctr"] and heri_layer(model) is None
    assert "no conversion label" in caplog.text


def test_edges_from_gates_keeps_the_gates_above_the_threshold() -> None:
    gates = np.array([[0.7, 0.2], [0.5, 0.51]])
    assert edges_from_gates(gates, 0.5) == [[0, 0], [1, 1]]
    assert edges_from_gates(gates, 0.9) == []


def test_search_prune_retrain_writes_edges_and_a_model_that_exports(manifest_path, small_experiment, tmp_path) -> None:
    """The job end to end for a few steps: the search run, its gates (moved by the architecture steps) pruned at
    the threshold, the retrained model with exactly those edges, and its export."""
    from serving.export import check_export, export_model
    from tfads.jobs.autoheri import AUTOHERI_RECORD, run_autoheri
    from tfads.train import load_trained_model

    config = _heri_experiment(small_experiment, mode="fixed", edges=[[0, 0]], threshold=0.5)  # the job searches
    train = dataclasses.replace(config.train, epochs=1, steps_per_epoch=12, validation_steps=2, steps_per_execution=4)
    out = str(tmp_path / "autoheri")
    record = run_autoheri(dataclasses.replace(config, train=train), manifest_path, out, verbose=0)

    with open(os.path.join(out, AUTOHERI_RECORD)) as f:
        assert json.load(f) == record
    gates = np.array(record["gates"])
    assert gates.shape == (2, 2) and np.all((gates > 0) & (gates < 1)) and np.all(gates != 0.5)
    assert record["edges"] == edges_from_gates(gates, 0.5)
    search = heri_layer(load_trained_model(record["search"]["model_dir"]))
    np.testing.assert_allclose(search.gates().numpy(), gates, rtol=1e-6)

    model = load_trained_model(out, float32_matmuls=True)
    layer = heri_layer(model)
    assert layer.mode == "fixed" and layer.edges == record["edges"] and not layer.arch_variables
    manifest = load_manifest(manifest_path)
    version = export_model(model, manifest, str(tmp_path / "models"), version=1, warmup_examples=2)
    assert check_export(model, manifest, version) <= 1e-5
