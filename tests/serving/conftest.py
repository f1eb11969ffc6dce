"""Fixtures shared by the serving tests."""

from __future__ import annotations

import pytest

import tfads  # noqa: F401  (before TensorFlow)

from serving.local_server import embedded_server, model_config_text
from serving.server.toy_model import save_toy_model


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory) -> str:
    """A model base path with two versions of the toy CTR SavedModel (bias 0.0 and 0.5)."""
    base = tmp_path_factory.mktemp("models") / "toy"
    save_toy_model(str(base / "1"), bias=0.0)
    save_toy_model(str(base / "2"), bias=0.5)
    return str(base)


@pytest.fixture(scope="session")
def ab_models(manifest_path, trained_model_dir, tmp_path_factory):
    """The trained model exported as versions 1 and 2 of ``ctr``, and a models.config labelling
    them stable=1, canary=2."""
    from serving.export import export_model
    from tfads.core.manifest import load_manifest
    from tfads.train import load_trained_model

    root = tmp_path_factory.mktemp("ab_models")
    model, manifest = load_trained_model(trained_model_dir), load_manifest(manifest_path)
    for version in (1, 2):
        export_model(model, manifest, str(root / "ctr"), version=version, warmup_examples=4)
    config = root / "models.config"
    config.write_text(model_config_text("ctr", str(root / "ctr"), {"stable": 1, "canary": 2}))
    return config


@pytest.fixture(scope="session")
def ab_server(ab_models):
    """The embedded server (a subprocess) serving ``ab_models``; yields its gRPC target."""
    with embedded_server([f"--model_config_file={ab_models}"], ["ctr"]) as target:
        yield target
