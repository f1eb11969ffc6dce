"""The config files shipped inside the package (``tfads/configs/``), found through ``importlib.resources``.

A wheel installed on a laptop or a Dataflow worker carries them as package data, so every default
works without a source checkout. ``configs/`` at the top of the repository points at the same files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SCHEMA = "schema.yaml"
EXPERIMENT = "default.yaml"
ONLINE = "online.yaml"
TUNE = "tune.yaml"
AB_EXPERIMENT = "ab_experiment.yaml"


def default_config(name: str) -> Path:
    """Path of the shipped config ``name`` (e.g. ``"schema.yaml"``).

    Raises:
      FileNotFoundError: the package carries no such file (a broken install).
    """
    path = Path(str(resources.files("tfads.configs") / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the tfads package carries no config {name!r} (reinstall tfads)")
    return path
