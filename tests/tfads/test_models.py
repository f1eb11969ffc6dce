"""Model assembly: every backbone builds, keeps the ESMM identity and survives SavedModel save/load."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import tfads  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from tfads.calibration import PlattScaling
from tfads.data import make_dataset, with_derived
from tfads.layers.adasparse import AdaSparsePruner
from tfads.core.manifest import load_manifest
from tfads.metrics import auc, logloss
from tfads.models import build_model
from tfads.models.esmm import LogitAUC
from tfads.predict import predict_split
from tfads.train import load_trained_model

VARIANTS = {
    "dnn+adasparse-binarization-mlp-pruner": {
        "backbone": "dnn",
        "adasparse": {"form": "binarization", "pruner_hidden_units": 8, "pruner_input": "domain"},
    },
    "dcnv2-lowrank-parallel+fusion-on-embedding": {
        "backbone": "dcnv2",
        "cross": {"projection_dim": 8, "structure": "parallel"},
        "adasparse": {"form": "fusion", "on_embedding": True},
    },
    "dcn-mix+scaling": {
        "backbone": "dcnv2",
        "cross": {"layers": 2, "num_experts": 3, "expert_rank": 8},
        "adasparse": {"form": "scaling"},
    },
    "dcnv2+dense-numeric+fused-embeddings": {
        "backbone": "dcnv2",
        "numeric_encoding": "dense",
        "fused_embeddings": True,
        "embedding_init_std": 0.01,
    },
    "dcnv2+adasparse+bfloat16-matmuls": {"backbone": "dcnv2", "matmul_dtype": "bfloat16"},
    "star": {"backbone": "star", "adasparse": {"enabled": False}},
    "shared_bottom": {"backbone": "shared_bottom", "adasparse": {"enabled": False}},
}


def _variant(base, overrides):
    model = base.model
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(model, key), **value)
        model = dataclasses.replace(model, **{key: value})
    return model


@pytest.fixture(scope="module")
def batch(manifest_path):
    manifest = load_manifest(manifest_path)
    features, _, _ = next(iter(make_dataset(manifest.split_files("test"), manifest, 64)))
    return manifest, features


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_backbone_round_trip_and_esmm_identity(name, batch, small_experiment, tmp_path):
    manifest, features = batch
    config = _variant(small_experiment, VARIANTS[name])
    model = build_model(manifest, config)
    out = model(features, training=False)
    pruners = [m for m in model.submodules if isinstance(m, AdaSparsePruner)]
    assert bool(pruners) == config.adasparse.enabled
    assert all(p.hidden_units == config.adasparse.pruner_hidden_units for p in pruners)
    assert set(out) == {"ctr", "cvr", "ctcvr"}
    np.testing.assert_allclose(out["ctcvr"].numpy(), (out["ctr"] * out["cvr"]).numpy(), rtol=1e-6)
    for v in out.values():
        assert v.shape == (64, 1) and np.all((v.numpy() > 0) & (v.numpy() < 1))
    model.save(tmp_path / "m")
    loaded = keras.models.load_model(tmp_path / "m", compile=False)
    again = loaded(features, training=False)
    for k in out:
        np.testing.assert_allclose(again[k].numpy(), out[k].numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "backbone, moe, per_scene_gates",
    [
        ("mmoe", {"use": "tasks", "gate_input": "features_domain"}, False),
        ("ple", {"use": "scenes", "gate_input": "features"}, True),
    ],
)
def test_moe_backbones_train_save_reload_and_export(
    backbone, moe, per_scene_gates, batch, manifest_path, small_experiment, tmp_path
):
    """A short epoch of MMoE (a gate per ESMM task, reading x0 and the domain embedding) and PLE (one group for
    both towers, per-scene gates): the rebuilt model and the export agree. (The gates
    reading the domain embedding alone: tests/tfads/test_moe_layers.py.)"""
    from serving.export import check_export, export_model
    from tfads.core.experiment import MoEConfig
    from tfads.train import train

    moe = MoEConfig(num_experts=2, specific_experts=1, shared_experts=1, levels=2, expert_units=[8], **moe)
    model_cfg = dataclasses.replace(
        small_experiment.model,
        backbone=backbone,
        moe=moe,
        adasparse=dataclasses.replace(small_experiment.model.adasparse, enabled=False),
    )
    train_cfg = dataclasses.replace(small_experiment.train, epochs=1, steps_per_epoch=12, validation_steps=2)
    model_dir = str(tmp_path / "model")
    train(dataclasses.replace(small_experiment, model=model_cfg, train=train_cfg), manifest_path, model_dir, verbose=0)
    manifest, features = batch
    model = load_trained_model(model_dir, float32_matmuls=True)
    layer = model.get_layer(backbone)
    assert (layer.num_domains > 0) == per_scene_gates
    assert len(tf.nest.flatten(layer.output)) == (2 if moe.use == "tasks" else 1)  # a gate per task, or one for both
    expected = model(features, training=False)
    np.testing.assert_allclose(expected["ctcvr"].numpy(), (expected["ctr"] * expected["cvr"]).numpy(), rtol=1e-6)
    version = export_model(model, manifest, str(tmp_path / "models"), version=1, warmup_examples=2)
    assert check_export(model, manifest, version) <= 1e-5


def test_trained_model_beats_constant_predictor(trained_model_dir, manifest_path):
    manifest = load_manifest(manifest_path)
    model = load_trained_model(trained_model_dir)
    calib, test = (predict_split(model, manifest, split) for split in ("calib", "test"))
    y, p = test["click"].to_numpy(), test["ctr"].to_numpy()
    constant = logloss(y, np.full(len(y), manifest.data["splits"]["train"]["ctr"]))
    assert auc(y, p) > 0.6
    # The session model (24k rows, 2 epochs) ranks the next day well, but its level there is off by the
    # fixture's day drift: raw log loss / constant's was 0.966-1.012 over 15 runs (1.012 failed CI). What it
    # learned is a likelihood gain: its scores rescaled by Platt on the calib day beat the constant (0.967-0.981
    # over 14 runs); and its own level is close (a wrong level or an overconfident model costs more than 3 %).
    platt = PlattScaling().fit(calib["ctr"].to_numpy(), calib["click"].to_numpy())
    assert logloss(y, platt.predict(p)) < constant
    assert logloss(y, p) < 1.03 * constant
    assert json.load(open(os.path.join(trained_model_dir, "history.json")))["history"]["val_ctr_auc"]


def test_feature_layer_maps_unseen_values_to_oov(batch, small_experiment):
    manifest, features = batch
    model = build_model(manifest, small_experiment.model)
    unseen = dict(features)
    unseen["media"] = tf.fill(tf.shape(features["media"]), "never-seen")  # so is the derived scenario
    unseen["city"] = tf.fill(tf.shape(features["city"]), "atlantis")
    out = model(unseen, training=False)
    assert np.all(np.isfinite(out["ctr"].numpy()))
    scenario_ids = keras.Model(model.inputs, model.get_layer("scenario_lookup").output)(unseen).numpy()
    assert np.all(scenario_ids == 0)  # the OOV id


def test_adasparse_schedules_follow_the_form():
    from tfads.core.experiment import AdaSparseConfig
    from tfads.layers import AlphaAnnealer, SparsityLambdaScheduler
    from tfads.train import adasparse_callbacks

    assert adasparse_callbacks(AdaSparseConfig(form="scaling"), 100) == []  # no hard step: nothing to anneal
    assert adasparse_callbacks(AdaSparseConfig(enabled=False), 100) == []
    inputs = keras.Input((4,))
    no_pruner = keras.Model(inputs, keras.layers.Dense(1)(inputs))  # e.g. a STAR / MMoE / PLE backbone
    assert adasparse_callbacks(AdaSparseConfig(), 100, model=no_pruner) == []
    config = AdaSparseConfig(form="fusion", alpha_anneal_epochs=0.5, lambda_growth_epochs=0.25)
    callbacks = adasparse_callbacks(config, 100)
    annealer = next(c for c in callbacks if isinstance(c, AlphaAnnealer))
    assert annealer.total_steps == 50  # half of one epoch of 100 steps, whatever the epochs cap
    growth = next(c for c in callbacks if isinstance(c, SparsityLambdaScheduler))
    assert growth.growth_steps == 25  # a quarter of an epoch, whatever the size of the data


def test_fused_table_holds_every_id_feature_at_its_offset(batch, small_experiment):
    manifest, features = batch
    cfg = dataclasses.replace(small_experiment.model, fused_embeddings=True, numeric_encoding="dense")
    model = build_model(manifest, cfg)
    table = model.get_layer("fused_embedding").embeddings.numpy()
    tables = [x.name for x in model.layers if isinstance(x, keras.layers.Embedding) and "bucket" not in x.name]
    assert tables == ["fused_embedding"]
    blocks, offset = [], 0
    values = with_derived(features, manifest)  # the model computes scenario from media and slot
    for name, spec in manifest.features.items():
        if spec["kind"] == "numeric":
            continue
        layer = model.get_layer(f"{name}_hash" if spec["kind"] == "hashed" else f"{name}_lookup")
        x = (
            values[name]
            if spec["kind"] == "hashed" or spec["dtype"] == "string"
            else tf.strings.as_string(values[name])
        )
        blocks.append(table[offset + layer(x).numpy()])
        offset += layer.num_bins if spec["kind"] == "hashed" else layer.vocabulary_size()
    assert offset == table.shape[0]
    x0 = keras.Model(model.inputs, model.get_layer("fused_x0").output)(features).numpy()
    np.testing.assert_allclose(x0, np.concatenate(blocks, axis=1), rtol=1e-6)


def test_logit_auc_matches_exact_auc_and_serialises():
    rng = np.random.default_rng(0)
    y = (rng.random(20_000) < 0.05).astype(np.float32)
    p = 1 / (1 + np.exp(-(rng.normal(-4, 1.5, y.size) + 1.2 * y)))
    metric = LogitAUC()
    for chunk in np.array_split(np.arange(y.size), 7):
        metric.update_state(y[chunk, None], p[chunk, None])
    assert float(metric.result()) == pytest.approx(auc(y, p), abs=2e-3)
    again = LogitAUC.from_config(metric.get_config())
    assert again.logit_range == metric.logit_range and again.num_thresholds == metric.num_thresholds


def test_uncompressed_shards_read_like_gzipped_ones(manifest_path, tmp_path):
    """Shards named without ``.gz`` are read uncompressed; mixing both kinds is refused."""
    import gzip

    manifest = load_manifest(manifest_path)
    gzipped = manifest.split_files("test")
    plain = []
    for i, path in enumerate(gzipped):
        plain.append(str(tmp_path / f"part-{i}.tfrecord"))
        with tf.io.gfile.GFile(path, "rb") as f:
            (tmp_path / f"part-{i}.tfrecord").write_bytes(gzip.decompress(f.read()))
    a, b = (next(iter(make_dataset(files, manifest, 64, for_training=False))) for files in (gzipped, plain))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    with pytest.raises(ValueError, match="mixed gzipped and uncompressed"):
        make_dataset(gzipped + plain, manifest, 64)


def test_block_shuffle_yields_every_record_once_in_full_batches(manifest_path):
    manifest = load_manifest(manifest_path)
    files = manifest.split_files("train")
    name = next(n for n, f in manifest.features.items() if f["kind"] == "numeric")
    kwargs = {"shuffle": True, "shuffle_buffer": 64, "seed": 1, "for_training": False}
    blocks = list(make_dataset(files, manifest, 50, shuffle_block=8, **kwargs))
    records = list(make_dataset(files, manifest, 50, **kwargs))
    sizes = [len(b["click"]) for b in blocks]
    assert sizes[:-2] == [50] * (len(sizes) - 2)  # rebatch may split the epoch's remainder in two
    values = [np.sort(np.concatenate([b[name].numpy() for b in run])) for run in (blocks, records)]
    np.testing.assert_array_equal(*values)
    with pytest.raises(ValueError, match="shuffle_block"):
        make_dataset(files, manifest, 50, shuffle_block=0)


def test_in_range_early_stopping_keeps_only_in_range_validations_once_one_is():
    from tfads.layers import InRangeEarlyStopping

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    stopper = InRangeEarlyStopping(0.15, 0.25, monitor="val_auc", mode="max", patience=2, restore_best_weights=True)
    stopper.set_model(model)
    stopper.on_train_begin()
    # (auc, pruned share): out of range at first (no stop however long), then in range, then a better one out of it
    run = [(0.70, 0.0), (0.72, 0.02), (0.71, 0.05), (0.69, 0.08), (0.66, 0.16), (0.68, 0.20), (0.80, 0.40),
           (0.67, 0.21), (0.65, 0.22)]
    stopped = None
    for epoch, (score, share) in enumerate(run):
        model.stop_training = False
        stopper.on_epoch_end(epoch, {"val_auc": score, "val_pruner_0_pruned_share": share})
        if model.stop_training:
            stopped = epoch
            break
    assert stopper.reached and stopper.best_epoch == 5 and stopper.best == 0.68
    assert stopped == 7  # two validations past the best in range; the 0.80 out of range never counted
    plain = InRangeEarlyStopping(0.15, 0.25, monitor="val_auc", mode="max", patience=1)
    plain.set_model(model)
    plain.on_train_begin()
    for epoch, score in enumerate([0.7, 0.6]):  # no pruner logs: plain early stopping
        model.stop_training = False
        plain.on_epoch_end(epoch, {"val_auc": score})
    assert model.stop_training and plain.best == 0.7
