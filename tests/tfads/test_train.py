"""Training runs for real: resume after a kill, warm start on one scenario, two workers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import tfads  # noqa: F401
import tensorflow as tf

from tests.conftest import free_port

PY = sys.executable


def _write_config(tmp_path, small_experiment, **train_overrides) -> str:
    data = small_experiment.to_dict()
    data["train"].update(train_overrides)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _train_cmd(config, manifest_path, model_dir, *extra):
    return [
        PY,
        "-m",
        "tfads.cli",
        "train",
        "--config",
        config,
        "--data",
        manifest_path,
        "--model-dir",
        model_dir,
        *extra,
    ]


def _wait_for(predicate, proc, timeout=300.0):
    """Poll a condition on the file system while ``proc`` runs (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for training progress"
        time.sleep(0.05)


def test_killed_run_resumes_from_last_epoch(tmp_path, manifest_path, small_experiment):
    config = _write_config(
        tmp_path, small_experiment, epochs=6, steps_per_epoch=3, validation_steps=2, early_stopping_patience=100
    )
    model_dir = str(tmp_path / "run")
    backup = os.path.join(model_dir, "backup")
    proc = subprocess.Popen(
        _train_cmd(config, manifest_path, model_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(
            lambda: os.path.isdir(backup) and any("checkpoint" in f for _, _, fs in os.walk(backup) for f in fs), proc
        )
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.exists(os.path.join(model_dir, "history.json")), "the run finished before it was killed"
    subprocess.run(_train_cmd(config, manifest_path, model_dir), check=True, capture_output=True)
    record = json.load(open(os.path.join(model_dir, "history.json")))
    assert record["epochs"][0] >= 1, "the resumed run started again from epoch 0"
    assert record["epochs"][-1] == 5
    leftovers = [f for _, _, files in os.walk(backup) for f in files]
    assert not leftovers, f"a finished run leaves no backup checkpoint, found {leftovers}"


def test_warm_start_fine_tunes_one_scenario(tmp_path, manifest_path, trained_model_dir, small_experiment):
    from tfads.core.manifest import load_manifest
    from tfads.train import load_trained_model

    scenario = _largest_scenario(load_manifest(manifest_path))
    config = _write_config(tmp_path, small_experiment, epochs=1, learning_rate=1e-9, validation_steps=2)
    model_dir = str(tmp_path / "ft")
    subprocess.run(
        _train_cmd(config, manifest_path, model_dir, "--init-from", trained_model_dir, "--scenarios", scenario),
        check=True,
        capture_output=True,
    )
    base = load_trained_model(trained_model_dir)
    tuned = load_trained_model(model_dir)
    # learning rate ~0: the fine-tuned embeddings (one fused table, or one per feature) start from and stay
    # at the pre-trained ones
    tables = [layer.name for layer in base.layers if layer.name.endswith("_embedding") and layer.weights]
    assert tables
    for name in tables:
        for a, b in zip(base.get_layer(name).get_weights(), tuned.get_layer(name).get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def _largest_scenario(manifest) -> str:
    with open(manifest.vocab_path("scenario")) as f:
        return f.readline().strip()


def test_two_workers_on_loopback_match_single_worker(tmp_path, manifest_path, small_experiment):
    config = _write_config(tmp_path, small_experiment, epochs=2, steps_per_epoch=15, validation_steps=4)
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(
            subprocess.Popen(
                _train_cmd(config, manifest_path, str(tmp_path / "multi")),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    multi = json.load(open(tmp_path / "multi" / "history.json"))
    assert multi["workers"] == 2
    subprocess.run(_train_cmd(config, manifest_path, str(tmp_path / "single")), check=True, capture_output=True)
    single = json.load(open(tmp_path / "single" / "history.json"))
    # Compared on validation loss (the same validation day; the two workers each read a data shard of it): the
    # last epoch's training losses average different batches (data order, sharding) and differed by up to
    # 12.5 % in three runs, the validation losses by 0.2-0.9 %.
    multi_val, single_val = multi["history"]["val_loss"][-1], single["history"]["val_loss"][-1]
    assert abs(multi_val - single_val) < 0.03 * single_val


def test_fast_options_train_with_several_steps_per_execution_and_export_in_float32(
    tmp_path, manifest_path, small_experiment
):
    import dataclasses

    from serving.export import check_export, export_model
    from tfads.core.manifest import load_manifest
    from tfads.train import load_trained_model, train

    fast_model = dataclasses.replace(
        small_experiment.model, numeric_encoding="dense", fused_embeddings=True, matmul_dtype="bfloat16"
    )
    config = dataclasses.replace(
        small_experiment,
        model=fast_model,
        train=dataclasses.replace(
            small_experiment.train, epochs=1, steps_per_epoch=7, steps_per_execution=3, shuffle_block=4
        ),
    )
    result = train(config, manifest_path, str(tmp_path / "fast"), verbose=0)
    assert int(result.model.optimizer.iterations.numpy()) == 7  # 3 + 3 + 1: the last execution is shorter
    assert result.history["val_ctr_auc"], "validation ran over the whole valid split"
    features = {k: tf.constant(v) for k, v in _some_features(manifest_path).items()}
    trained = result.model(features, training=False)["ctr"].numpy()
    again = load_trained_model(str(tmp_path / "fast"))(features, training=False)["ctr"].numpy()
    np.testing.assert_allclose(again, trained, atol=1e-6)

    served = load_trained_model(str(tmp_path / "fast"), float32_matmuls=True)
    np.testing.assert_allclose(served(features, training=False)["ctr"].numpy(), trained, rtol=0.05, atol=1e-3)
    path = export_model(served, load_manifest(manifest_path), str(tmp_path / "export"))
    assert check_export(served, load_manifest(manifest_path), path) <= 1e-5
    graph = tf.saved_model.load(path).signatures["serving_default"].graph
    ops = [op for f in graph.as_graph_def().library.function for op in f.node_def]
    assert {op.attr["T"].type for op in ops if op.op == "MatMul"} == {tf.float32.as_datatype_enum}


def _some_features(manifest_path) -> dict:
    from tfads.data import make_dataset
    from tfads.core.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    features, _, _ = next(iter(make_dataset(manifest.split_files("test"), manifest, 32)))
    return {k: v.numpy() for k, v in features.items()}


def test_steps_per_execution_falls_back_to_one_when_step_counts_are_unknown(manifest_path):
    from tfads.core.experiment import TrainConfig
    from tfads.core.manifest import load_manifest
    from tfads.train import execution_steps

    manifest = load_manifest(manifest_path)
    valid_steps = -(-manifest.split_count("valid") // 64)
    assert execution_steps(TrainConfig(batch_size=64, steps_per_execution=4), manifest, 10) == (4, valid_steps)
    assert execution_steps(TrainConfig(steps_per_execution=4, scenarios=["a|b"]), manifest, None) == (1, None)
    assert execution_steps(TrainConfig(steps_per_execution=4, validation_steps=3), manifest, 10) == (4, 3)


def test_deterministic_runs_with_one_seed_give_identical_weights(tmp_path, manifest_path, small_experiment):
    from tfads.train import load_trained_model

    config = _write_config(tmp_path, small_experiment, epochs=1, steps_per_epoch=12, validation_steps=2)
    dirs = [str(tmp_path / f"run{i}") for i in range(2)]
    for model_dir in dirs:
        subprocess.run(
            _train_cmd(config, manifest_path, model_dir, "--deterministic", "--seed", "3"),
            check=True,
            capture_output=True,
        )
    first, second = (load_trained_model(d).get_weights() for d in dirs)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_validation_periods_cut_the_epochs_cap():
    from tfads.core.experiment import TrainConfig
    from tfads.train import validation_periods

    assert validation_periods(TrainConfig(epochs=20), 100) == (20, 100)
    assert validation_periods(TrainConfig(epochs=20, validations_per_epoch=4), 100) == (80, 25)
    # 4 x 26 steps: never short of an epoch
    assert validation_periods(TrainConfig(epochs=3, validations_per_epoch=4), 101) == (12, 26)
    assert validation_periods(TrainConfig(epochs=3, validations_per_epoch=4), None) == (3, None)  # scenario filter


def test_early_stopped_run_keeps_the_best_validation(tmp_path, manifest_path, small_experiment):
    """A run of the default protocol (early stopping, the cap far away) stops `patience` validations past the best
    and ends with the best validation's weights, the best among the validations with every AdaSparse layer inside
    [r_min, r_max] (restore-best alone once kept an early quarter-epoch at ~0 % pruned, decision 0026)."""
    import dataclasses

    from tfads.core.experiment import load_experiment
    from tfads.core.manifest import load_manifest
    from tfads.train import execution_steps, train, train_valid_datasets

    protocol = load_experiment().train
    assert protocol.epochs >= 10, "the default's epochs is a cap, not a planned length"
    config = dataclasses.replace(
        small_experiment,
        train=dataclasses.replace(
            small_experiment.train,
            epochs=protocol.epochs,
            validations_per_epoch=protocol.validations_per_epoch,
            early_stopping_patience=protocol.early_stopping_patience,
            deterministic=True,
        ),
    )
    result = train(config, manifest_path, str(tmp_path / "es"), verbose=0)
    scores, history = result.history["val_ctr_auc"], result.history
    assert result.epochs_run < protocol.epochs, f"early stopping never stopped: {scores}"
    # stopped `patience` validations past the best
    patience_epochs = protocol.early_stopping_patience / protocol.validations_per_epoch
    assert result.best_epoch == pytest.approx(result.epochs_run - patience_epochs)
    shares = {k: v for k, v in history.items() if k.startswith("val_") and k.endswith("_pruned_share")}
    assert len(shares) == len(small_experiment.model.deep_units), sorted(history)
    ada = config.model.adasparse
    in_range = [all(ada.r_min - 0.01 <= v[i] <= ada.r_max + 0.01 for v in shares.values()) for i in range(len(scores))]
    assert in_range[result.kept], f"kept validation {result.kept} is out of range: {shares}"
    assert scores[result.kept] == max(s for s, ok in zip(scores, in_range, strict=True) if ok)
    manifest = load_manifest(manifest_path)
    _, valid_ds, _ = train_valid_datasets(config.train, manifest)
    valid_steps = execution_steps(config.train, manifest, 1)[1]
    kept = result.model.evaluate(valid_ds, steps=valid_steps, verbose=0, return_dict=True)["ctr_auc"]
    assert kept == pytest.approx(scores[result.kept], abs=1e-4), "the kept weights are not the kept validation's"


def test_click_only_model_early_stops_on_its_validation_auc(tmp_path, small_experiment):
    """A model with the pCTR head alone logs ``val_ctr_auc`` like an ESMM model (Keras would call it ``val_auc``
    and early stopping would never see its metric)."""
    import dataclasses

    from benchmarks import criteo_like
    from tfads.train import summary_line, train

    data = str(tmp_path / "data")
    criteo_like.make(data, 4000, shards=1, compression="none")
    config = dataclasses.replace(small_experiment, train=dataclasses.replace(small_experiment.train, epochs=2))
    result = train(config, os.path.join(data, "manifest.json"), str(tmp_path / "model"), verbose=0)
    pruned = {f"{v}pruner_{i}_pruned_share" for v in ("", "val_") for i in range(len(config.model.deep_units))}
    assert set(result.history) == {"loss", "ctr_auc", "val_loss", "val_ctr_auc"} | pruned  # no ctcvr, no val_auc
    assert "val_ctr_auc=" in summary_line(result.history)
