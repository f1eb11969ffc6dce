"""Online learning: exactly-once resume after kills, the validation gate, frozen embeddings, export
picked up by the embedded server, recalibration of a calibrated model, and the reservoir /
calibration-statistics bookkeeping."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from tfads.calibration.stats import CalibStats, compute_calibration_stats
from tfads.core.manifest import load_manifest
from tfads.jobs.online import (
    OnlineConfig,
    OnlineLearner,
    OnlineState,
    Reservoir,
    StateStore,
    embedding_layers,
    list_shards,
)
from tfads.jobs.online.calibration import refresh_stats
from tfads.jobs.online.evaluation import ctr_metrics, split_holdout
from tfads.jobs.online.faults import CRASH_EXIT_CODE, ENV
from tfads.jobs.online.recalibration import calibrated_scores
from tfads.jobs.online.reservoir import read_records
from tfads.jobs.online.updater import calib_path

REPO = Path(__file__).resolve().parents[2]
FAST = OnlineConfig(reservoir_size=500, old_eval_examples=500, batch_size=256, holdout_fraction=0.3,
                    gate_metric="logloss", gate_margin=0.05, max_idle_polls=1)


def write_shards(records: list[bytes], stream: Path, sizes: list[int]) -> list[str]:
    """Publish consecutive slices of ``records`` as shards (hidden temp name, then rename)."""
    stream.mkdir(parents=True, exist_ok=True)
    names, start = [], 0
    for i, size in enumerate(sizes):
        name = f"hour-{i:02d}.tfrecord.gz"
        with tf.io.TFRecordWriter(str(stream / f".{name}"), options="GZIP") as writer:
            for record in records[start:start + size]:
                writer.write(record)
        os.rename(stream / f".{name}", stream / name)
        names.append(name)
        start += size
    return names


@pytest.fixture(scope="module")
def newest_records(manifest_path) -> list[bytes]:
    manifest = load_manifest(manifest_path)
    return read_records(manifest.split_files("test"))


@pytest.fixture(scope="module")
def learner(trained_model_dir, manifest_path, tmp_path_factory) -> OnlineLearner:
    root = tmp_path_factory.mktemp("online")
    return OnlineLearner(trained_model_dir, load_manifest(manifest_path), str(root / "state"),
                         str(root / "export"), FAST)


@contextlib.contextmanager
def polling_server(base: str) -> Iterator:
    """The embedded server on ``base`` (model ``ctr``, polling every second), its stubs once SERVING."""
    from serving.server import ModelServer, parse_flags
    from serving.server.testing import Stubs

    flags = ["--port=0", "--model_name=ctr", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"]
    with ModelServer(parse_flags(flags)) as server:
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        stubs.wait_serving()
        yield stubs


def test_update_keeps_embeddings_and_new_version_is_served(learner, newest_records, tmp_path):
    from serving.server.testing import predict_request

    base = learner.export_base
    assert sorted(os.listdir(base)) == ["1"]  # the starting model, exported at step 0
    with polling_server(base) as stubs:
        stubs.wait_for_states("ctr", {1: "AVAILABLE"})
        frozen = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in embedding_layers(learner.model)}
        trained_before = [w.numpy().copy() for w in learner.model.trainable_weights]

        shard = write_shards(newest_records, tmp_path / "stream", [3000])[0]
        record = learner.update(shard, str(tmp_path / "stream" / shard))

        assert record["accepted"], record["gate"]
        assert learner.state.serving_version == 2 and sorted(os.listdir(base)) == ["1", "2"]
        assert frozen and all(
            np.array_equal(a, w.numpy()) for layer in embedding_layers(learner.model)
            for a, w in zip(frozen[layer.name], layer.weights, strict=True)
        )
        trained_after = [w.numpy() for w in learner.model.trainable_weights]
        assert any(not np.array_equal(a, b) for a, b in zip(trained_before, trained_after, strict=True))
        stubs.wait_for_states("ctr", {2: "AVAILABLE"})
        request = predict_request("ctr", {"examples": np.array(newest_records[:4], dtype=object)},
                                  signature_name="predict_examples")
        response = stubs.predict.Predict(request, timeout=30)
        assert response.model_spec.version.value == 2
        assert tf.make_ndarray(response.outputs["ctr"]).shape == (4,)


def test_gate_blocks_a_broken_update(learner, newest_records, tmp_path):
    version, weights_step = learner.state.serving_version, learner.state.weights_step
    serving = [w.copy() for w in learner.serving_weights]
    learner.config = dataclasses.replace(FAST, learning_rate_scale=1e4)  # a learning rate of ~10: broken
    try:
        shard = write_shards(newest_records[3000:], tmp_path / "stream", [2000])[0]
        record = learner.update(shard, str(tmp_path / "stream" / shard))
    finally:
        learner.config = FAST
    assert not record["accepted"], record["gate"]
    assert learner.state.serving_version == version and learner.state.weights_step == weights_step
    assert not os.path.exists(os.path.join(learner.export_base, str(version + 1)))
    assert all(np.array_equal(a, b) for a, b in zip(serving, learner.model.get_weights(), strict=True))
    assert learner.state.consumed[-1] == shard  # consumed (and replayable history), but not served


def _run_online(args: list[str], crash: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if crash:
        env[ENV] = crash
    return subprocess.run([sys.executable, "-m", "tfads.cli", "online", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_kills_mid_shard_and_between_shards_resume_exactly_once(
    trained_model_dir, manifest_path, newest_records, tmp_path
):
    stream, state_dir = tmp_path / "stream", tmp_path / "state"
    shards = write_shards(newest_records, stream, [300, 300, 300])
    config = tmp_path / "online.yaml"  # reject every update: no exports beyond step 0 keeps this test fast
    config.write_text("reservoir_size: 300\nold_eval_examples: 300\nbatch_size: 256\nholdout_fraction: 0.3\n"
                      "gate_margin: -1.0\n")
    args = ["--model-dir", trained_model_dir, "--data", manifest_path, "--stream", str(stream),
            "--export-base", str(tmp_path / "export"), "--state-dir", str(state_dir), "--config", str(config),
            "--once"]
    store = StateStore(str(state_dir))
    # run 1: shard 1 committed, killed after training on shard 2 (mid-shard)
    # run 2: shard 2 again, committed, killed right after that commit (between shards)
    for crash, committed in (("after_train:2", 1), ("after_commit:1", 2)):
        result = _run_online(args, crash)
        assert result.returncode == CRASH_EXIT_CODE, result.stderr[-3000:]
        assert store.current() == committed
    result = _run_online(args, None)
    assert result.returncode == 0, result.stderr[-3000:]
    state = store.load()
    assert state.step == 3 and state.consumed == shards
    assert [r["shard"] for r in state.history] == shards
    train_rows = sum(r["train_examples"] for r in state.history)
    initial = json.loads((state_dir / "steps" / "000000" / "state.json").read_text())  # kept: serving weights
    assert state.reservoir_seen == initial["reservoir_seen"] + train_rows  # each shard offered exactly once
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]
    assert (state_dir / "metrics.json").exists() and (state_dir / "online_auc.png").exists()


@pytest.fixture(scope="module")
def calibrated_model_dir(trained_model_dir, manifest_path, small_experiment, tmp_path_factory) -> str:
    """The session model + AdaCalib on scenario, combined and saved as `tfads calibrate` does (statistics
    computed in process instead of by the Beam job; two bin counts and one fitting epoch keep it small)."""
    from tfads.calibration.combined import combined_model
    from tfads.jobs.calibrate import fit_calibration_layers
    from tfads.model_io import save_trained_model
    from tfads.predict import predict_split
    from tfads.train import load_trained_model

    manifest = load_manifest(manifest_path)
    base = load_trained_model(trained_model_dir)
    calib = predict_split(base, manifest, "calib")
    fields = [n for n, f in manifest.features.items() if f.get("calibration")]
    stats = {}
    for task, label, rows in (("ctr", "click", calib), ("cvr", "conversion", calib[calib["click"] == 1])):
        stats[task] = compute_calibration_stats(rows[task], rows[label], {f: rows[f] for f in fields}, (4, 8),
                                                task=task)
    layers = fit_calibration_layers(calib, stats, ["scenario"], epochs=1)
    out = str(tmp_path_factory.mktemp("calibrated"))
    save_trained_model(combined_model(base, layers), out, manifest_path, small_experiment,
                       calibration={t: layer.get_config() for t, layer in layers.items()})
    return out


def with_extra_clicks(records: list[bytes], rate: float, seed: int = 0) -> list[bytes]:
    """The records with ``rate`` of them turned into clicks: a base-rate shift the model never saw."""
    rng = np.random.default_rng(seed)
    out = []
    for record in records:
        example = tf.train.Example.FromString(record)
        if rng.uniform() < rate:
            example.features.feature["click"].int64_list.value[:] = [1]
        out.append(example.SerializeToString())
    return out


def test_recalibrated_export_follows_a_base_rate_shift(calibrated_model_dir, manifest_path, newest_records, tmp_path):
    from serving.server.testing import predict_request

    config = dataclasses.replace(FAST, calibration_decay=0.0, recalibration_epochs=1)  # the new shard's counts only
    learner = OnlineLearner(calibrated_model_dir, load_manifest(manifest_path), str(tmp_path / "state"),
                            str(tmp_path / "export"), config)
    assert set(learner.layers) == {"ctr", "cvr"} and learner.calib["ctr"] is not None  # seeded from the layers
    records = with_extra_clicks(newest_records[:3000], 0.05)
    clicks = np.array([tf.train.Example.FromString(r).features.feature["click"].int64_list.value[0] for r in records])
    shard = write_shards(records, tmp_path / "stream", [3000])[0]
    record = learner.update(shard, str(tmp_path / "stream" / shard))

    assert record["accepted"] and record["recalibrated"], record["gate"]
    refreshed = CalibStats.read(calib_path(learner.store.step_dir(1), "ctr"))
    assert learner.layers["ctr"].stats.global_stats == refreshed.global_stats  # the served layer's statistics
    assert refreshed.global_stats.impressions == 3000 and refreshed.global_stats.positives == clicks.sum()
    # the record reports the served calibration on the shard's held-out rows (a few dozen clicks: too few
    # for a tight PCOC bound; the served export is checked on all the shard's rows below)
    held = split_holdout(records, config.holdout_fraction)[1]
    served = ctr_metrics(calibrated_scores(learner.layers, learner.score(held)))
    assert record["calibrated"]["served_after"]["newest"] == pytest.approx(served, rel=1e-6)
    assert record["candidate"]["newest"]["PCOC"] < 0.8  # the uncalibrated candidate under-predicts the shift
    with polling_server(learner.export_base) as stubs:
        stubs.wait_for_states("ctr", {2: "AVAILABLE"})
        request = predict_request("ctr", {"examples": np.array(records, dtype=object)},
                                  signature_name="predict_examples")
        response = stubs.predict.Predict(request, timeout=60)
    assert response.model_spec.version.value == 2
    ctr, raw = (tf.make_ndarray(response.outputs[k]) for k in ("ctr", "ctr_raw"))
    assert raw.mean() / clicks.mean() < 0.8  # the base model under-predicts the shifted shard ...
    assert abs(ctr.mean() / clicks.mean() - 1) < 0.2  # ... its refitted calibration does not
    assert json.loads((tmp_path / "export" / "2" / "model_card.json").read_text())["calibration"]["ctr"]


def test_reservoir_is_bounded_uniform_and_round_trips(tmp_path):
    reservoir = Reservoir(200)
    reservoir.add((str(i).encode() for i in range(5000)), np.random.default_rng(0))
    assert len(reservoir) == 200 and reservoir.seen == 5000
    kept = np.array([int(r) for r in reservoir.records])
    assert 1500 < kept.mean() < 3500  # a uniform sample of 0..4999, not the first or last rows
    reservoir.write(str(tmp_path))
    back = Reservoir.read(str(tmp_path), 200, reservoir.seen)
    assert back.records == reservoir.records and back.seen == 5000
    assert len(set(back.sample(50, np.random.default_rng(1)))) == 50


def test_calibration_counts_merge_incrementally():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.2, 4000)
    y = (rng.uniform(size=4000) < p).astype(float)
    field = {"scenario": np.where(np.arange(4000) % 2 == 0, "a", "b")}
    old = compute_calibration_stats(p[:2000], y[:2000], {"scenario": field["scenario"][:2000]})
    merged = refresh_stats(old, p[2000:], y[2000:], {"scenario": field["scenario"][2000:]}, decay=1.0)
    assert merged.global_stats.impressions == 4000 and merged.global_stats.positives == int(y.sum())
    a = merged.fields["scenario"]["a"]
    assert a.impressions == 2000 and a.positives == int(y[::2].sum())
    assert a.tables[4].boundaries[1:-1] == old.fields["scenario"]["a"].tables[4].boundaries[1:-1]
    assert sum(a.tables[8].impressions) == pytest.approx(2000)
    halved = refresh_stats(old, p[2000:], 1.0 - y[2000:], {"scenario": field["scenario"][2000:]}, decay=0.5)
    assert halved.global_stats.impressions == 3000  # 0.5 x 2000 old + 2000 new
    assert halved.global_stats.rate > merged.global_stats.rate  # follows the (flipped) new traffic


def test_stream_listing_skips_hidden_and_unfinished(tmp_path):
    for name in ("b/2.tfrecord.gz", "a/1.tfrecord.gz", "a/.1.tfrecord.gz", ".tmp/3.tfrecord.gz", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_shards(str(tmp_path)) == ["a/1.tfrecord.gz", "b/2.tfrecord.gz"]


def test_interrupted_commit_is_discarded_on_load(tmp_path):
    store = StateStore(str(tmp_path))
    store.commit(OnlineState(step=0), lambda d: None)
    store.commit(OnlineState(step=1, consumed=["a"]), lambda d: (Path(d) / "weights.index").write_text("x"))
    # a kill after renaming step 2 into place but before the pointer moved, and one while writing step 3
    (tmp_path / "steps" / "000002").mkdir()
    (tmp_path / "steps" / ".tmp-000003").mkdir()
    state = store.load()
    assert state.step == 1 and state.consumed == ["a"]
    assert sorted(os.listdir(tmp_path / "steps")) == ["000000", "000001"]
