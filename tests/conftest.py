"""Shared, session-scoped fixtures: small real data (generator -> Beam job) and one trained model.

Everything downstream (models, calibration, export, serving, tuning, online learning) reuses these,
so the expensive steps run once per test session.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS=1 before anything imports TensorFlow)

SMALL = {"days": 6, "impressions_per_day": 6000, "seed": 7, "corrupt_rate": 0.01}


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> str:
    """Synthetic logs: 6 days x 6000 impressions, 1% corrupted lines, with ground truth."""
    from tfads.datagen import generate

    out = str(tmp_path_factory.mktemp("logs"))
    generate(out, progress=False, **SMALL)
    return out


@pytest.fixture(scope="session")
def manifest_path(logs_dir, tmp_path_factory) -> str:
    """The Beam job's output on ``logs_dir`` (DirectRunner, in process); returns manifest.json."""
    from tfads.jobs.dataset import build_dataset

    return build_dataset(logs_dir, str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def small_experiment():
    """The default experiment shrunk for tests: small embeddings and layers, at most 2 short epochs validated
    once each (tests that need *a* trained model; tests/tfads/test_train.py runs the default protocol)."""
    from tfads.core.experiment import load_experiment

    config = load_experiment()
    model = dataclasses.replace(config.model, embedding_dim=8, deep_units=[32, 16], tower_units=[16])
    train = dataclasses.replace(
        config.train, epochs=2, validations_per_epoch=1, batch_size=256, learning_rate=1e-3, shuffle_buffer=5000
    )
    return dataclasses.replace(config, model=model, train=train)


@pytest.fixture(scope="session")
def trained_model_dir(manifest_path, small_experiment, tmp_path_factory) -> str:
    """One trained default model (DCNv2 + AdaSparse Fusion + ESMM) for every downstream test."""
    from tfads.train import train

    model_dir = str(tmp_path_factory.mktemp("model"))
    train(small_experiment, manifest_path, model_dir, verbose=0)
    return model_dir


@pytest.fixture(scope="session")
def ab_models(manifest_path, trained_model_dir, tmp_path_factory):
    """The trained model exported as versions 1 and 2 of ``ctr``, and a models.config labelling
    them stable=1, canary=2."""
    from serving.export import export_model
    from serving.local_server import model_config_text
    from tfads.core.manifest import load_manifest
    from tfads.train import load_trained_model

    root = tmp_path_factory.mktemp("ab_models")
    # float32 matmuls, as `tfads export` serves a model trained with bfloat16 ones
    model = load_trained_model(trained_model_dir, float32_matmuls=True)
    manifest = load_manifest(manifest_path)
    for version in (1, 2):
        export_model(model, manifest, str(root / "ctr"), version=version, warmup_examples=4)
    config = root / "models.config"
    config.write_text(model_config_text("ctr", str(root / "ctr"), {"stable": 1, "canary": 2}))
    return config


@pytest.fixture(scope="session")
def ab_server(ab_models):
    """The embedded server (a subprocess) serving ``ab_models``; yields its gRPC target."""
    from serving.local_server import embedded_server

    with embedded_server([f"--model_config_file={ab_models}"], ["ctr"]) as target:
        yield target


HISTORY = {
    "hist_category": {"field": "category", "events": "click", "max_len": 5},
    "hist_ad": {"field": "ad_id", "events": "impression", "max_len": 8, "window_s": 86400},
}


@pytest.fixture(scope="session")
def history_manifest(logs_dir, tmp_path_factory):
    """The session logs built with two histories (``HISTORY``; keyed graph, in process); a Manifest."""
    from beam_jobs.build_examples import run
    from tests.beam_jobs.test_history import history_schema
    from tfads.core.manifest import load_manifest

    tmp = tmp_path_factory.mktemp("history_data")
    schema = history_schema(str(tmp / "schema.yaml"), HISTORY)
    assert run(["--logs", logs_dir, "--out", str(tmp / "out"), "--schema", schema, "--runner", "DirectRunner"]) == 0
    return load_manifest(str(tmp / "out" / "manifest.json"))


@pytest.fixture(scope="session")
def din_model_dir(history_manifest, small_experiment, tmp_path_factory) -> str:
    """A DIN model (``small_experiment``, DCNv2 backbone, DIN attention over the histories) trained on
    ``history_manifest``."""
    from tfads.core.experiment import HistoryConfig
    from tfads.train import train

    model = dataclasses.replace(small_experiment.model, backbone="dcnv2",
                                history=HistoryConfig(pooling="din", din_units=[8, 4]))
    model_dir = str(tmp_path_factory.mktemp("din_model"))
    train(dataclasses.replace(small_experiment, model=model), history_manifest, model_dir, verbose=0)
    return model_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
