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


@pytest.fixture(scope="session")
def half_plus(tmp_path_factory) -> dict[str, str]:
    """Base paths of TF Serving's test models, written here: half_plus_two and half_plus_three at
    ``00000123/``, and ``two_versions`` (half_plus_two at ``00000123/`` and ``00000124/``)."""
    from serving.testdata.make_half_plus import write_half_plus

    root = str(tmp_path_factory.mktemp("tf_serving_testdata"))
    two_versions = str(tmp_path_factory.mktemp("two_versions"))
    return {
        "half_plus_two": write_half_plus(root, "half_plus_two"),
        "half_plus_three": write_half_plus(root, "half_plus_three"),
        "two_versions": write_half_plus(two_versions, "half_plus_two", ("00000123", "00000124")),
    }
