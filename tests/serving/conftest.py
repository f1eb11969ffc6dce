"""Fixtures shared by the serving tests."""

from __future__ import annotations

import pytest

import tfads  # noqa: F401  (before TensorFlow)

from serving.server.toy_model import save_toy_model


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory) -> str:
    """A model base path with two versions of the toy CTR SavedModel (bias 0.0 and 0.5)."""
    base = tmp_path_factory.mktemp("models") / "toy"
    save_toy_model(str(base / "1"), bias=0.0)
    save_toy_model(str(base / "2"), bias=0.5)
    return str(base)
