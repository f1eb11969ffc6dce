"""Read the Beam job's ``manifest.json``: the contract between the data job and the trainer."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from tfads.core.configtools import ConfigError

SPLITS = ("train", "valid", "calib", "test")


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest; every path in it is resolved against the manifest's directory."""

    path: str
    data: dict[str, Any]

    @property
    def root(self) -> str:
        return posixpath.dirname(self.path) or "."

    def resolve(self, relative: str) -> str:
        """Absolute path (or URL) of a path stored relative to the manifest."""
        if "://" in relative or relative.startswith("/"):
            return relative
        return posixpath.join(self.root, relative)

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.data["features"]

    @property
    def labels(self) -> list[str]:
        return list(self.data.get("labels", ["click", "conversion"]))

    @property
    def domain_features(self) -> list[str]:
        return [n for n, f in self.features.items() if f.get("domain_aware")]

    def split_files(self, split: str) -> list[str]:
        """TFRecord files of a split (``train``, ``valid``, ``calib``, ``test``)."""
        if split not in self.data["splits"]:
            raise ConfigError(f"{self.path}: no split {split!r} (have {sorted(self.data['splits'])})")
        return [self.resolve(f) for f in self.data["splits"][split]["files"]]

    def day_files(self, day: str) -> list[str]:
        """TFRecord files of one day (for online learning)."""
        return [self.resolve(f) for f in self.data["days"][day]["files"]]

    def split_count(self, split: str) -> int:
        return int(self.data["splits"][split]["examples"])

    def vocab_path(self, feature: str) -> str:
        return self.resolve(self.features[feature]["vocab"])


def load_manifest(path: str) -> Manifest:
    """Load ``manifest.json`` (local or gs://); a missing or malformed file raises ConfigError."""
    path = str(path)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path}: manifest not found (run `tfads build` / beam_jobs.build_examples first)")
    try:
        with tf.io.gfile.GFile(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    for key in ("features", "splits", "days"):
        if key not in data:
            raise ConfigError(f"{path}: manifest has no {key!r} section")
    return Manifest(path=path, data=data)
