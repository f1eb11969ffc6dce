"""Read the Beam job's ``manifest.json``: the contract between the data job and the trainer."""

from __future__ import annotations

import copy
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from tfads.core.configtools import ConfigError
from tfads.core.names import CLICK, CONVERSION, heads
from tfads.core.schema import DerivedField

SPLITS = ("train", "valid", "calib", "test")


def history_length_input(name: str) -> str:
    """The input holding how many values of list input ``name`` (a history or a multi-valued feature) are real
    (the rest is padding)."""
    return f"{name}_length"


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
    def derived(self) -> dict[str, DerivedField]:
        """Derived features (e.g. scenario = media|slot) by name, as the schema defines them. The model
        computes them from their raw fields (``tfads.layers.derived``); their parts are string or int.

        Raises:
          ConfigError: a derived feature joins a float field (its text cannot match the Beam job's).
        """
        out = {}
        for name, spec in ((self.data.get("schema") or {}).get("derived") or {}).items():
            if name not in self.features:
                continue
            derived = DerivedField(**spec)
            floats = [p for p in derived.concat if self.raw_dtype(p, "string") == "float32"]
            if floats:
                raise ConfigError(
                    f"{self.path}: derived.{name}.concat joins float field(s) {floats}: the model cannot rebuild "
                    "the Beam job's text of a float (pandas str() of a float64; the examples keep float32); "
                    "join string or int fields only"
                )
            out[name] = derived
        return out

    @property
    def input_dtypes(self) -> dict[str, str]:
        """The model's inputs, name -> dtype: the raw fields the serving signatures take. Every feature
        that is not derived, then the fields derived features join that are not features themselves;
        derived features are never inputs (the model computes them)."""
        derived = self.derived
        out = {name: f["dtype"] for name, f in self.features.items() if name not in derived and not f.get("multi")}
        for spec in derived.values():
            for part in spec.concat:
                out.setdefault(part, self.raw_dtype(part, "string"))
        return out

    @property
    def history(self) -> dict[str, dict[str, Any]]:
        """User behaviour histories (the schema's ``history``), name -> field, events, max_len, window_s,
        share_embedding_with, dtype (``string`` / ``int64``), truncated; empty without."""
        return self.data.get("history") or {}

    @property
    def history_inputs(self) -> dict[str, tuple[str, int]]:
        """The model's history inputs, name -> (dtype, max_len): each a padded (batch, max_len) tensor with an
        int64 ``<name>_length`` input (``history_length_input``) saying how many of its values are real."""
        return {name: (h["dtype"], int(h["max_len"])) for name, h in self.history.items()}

    @property
    def list_inputs(self) -> dict[str, tuple[str, int]]:
        """The model's inputs that hold a list per example, name -> (dtype, max_len): multi-valued features,
        then histories; each is a padded (batch, max_len) tensor with a ``history_length_input`` beside it."""
        out = {name: (f["dtype"], int(f["max_len"])) for name, f in self.features.items() if f.get("multi")}
        return {**out, **self.history_inputs}

    @property
    def model_inputs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every input of the model and its serving signatures, name -> (dtype, shape of one example): the
        scalar raw fields (``input_dtypes``), then each list input (``list_inputs``, (max_len,)) and its length
        (a scalar int64)."""
        out: dict[str, tuple[str, tuple[int, ...]]] = {name: (dtype, ()) for name, dtype in self.input_dtypes.items()}
        for name, (dtype, max_len) in self.list_inputs.items():
            out[name] = (dtype, (max_len,))
            out[history_length_input(name)] = ("int64", ())
        return out

    @property
    def labels(self) -> list[str]:
        """The examples' label columns."""
        return [c for c in self.label_roles.values() if c]

    @property
    def label_roles(self) -> dict[str, str | None]:
        """Label role (``click``, ``conversion``) -> the examples' column, ``None`` when absent."""
        roles = self.data.get("label_roles")
        if roles is None:  # manifests written before label roles: labels listed click first
            columns = self.data.get("labels", [CLICK, CONVERSION])
            roles = {CLICK: columns[0], CONVERSION: columns[1] if len(columns) > 1 else None}
        return dict(roles)

    @property
    def has_conversion(self) -> bool:
        """True when the data carries a post-click conversion label (an ESMM model)."""
        return self.label_roles.get(CONVERSION) is not None

    @property
    def heads(self) -> tuple[str, ...]:
        """The model heads these labels train: ``("ctr",)`` or ``("ctr", "cvr", "ctcvr")``."""
        return heads(self.has_conversion)

    @property
    def key(self) -> str | None:
        """The field that identifies an impression (joins events to it); None for a table without a key."""
        return self.data.get("key", "trace_id")

    @property
    def timestamp(self) -> str:
        """The event-time field (seconds)."""
        return self.data.get("timestamp", "ts")

    def raw_dtype(self, field: str, default: str) -> str:
        """The examples' dtype (``string`` / ``int64`` / ``float32``) of raw field ``field``."""
        return self.data.get("raw_dtypes", {}).get(field, default)

    @property
    def source_feature(self) -> str:
        """The column marking ad samples (``ad``) and cold-start feed samples (``feed``)."""
        return self.data.get("source", "sample_source")

    @property
    def user_key(self) -> str | None:
        """The field GAUC groups by, when the schema names one."""
        return self.data.get("user_key")

    @property
    def domain_features(self) -> list[str]:
        """Domain-aware features (AdaSparse pruners, STAR partitions), in schema order."""
        return [n for n, f in self.features.items() if f.get("domain_aware")]

    @property
    def domain(self) -> str | None:
        """The primary domain feature (scenario): the schema's ``domain``, else the first domain-aware one."""
        if "domain" in self.data:
            return self.data["domain"]
        return self.domain_features[0] if self.domain_features else None

    @property
    def calibration_fields(self) -> list[str]:
        """Fields marked ``calibration: true``, domain-aware ones first: posterior statistics and Field-RCE
        are reported for all of them; ``tfads calibrate`` fits AdaCalib on the first unless told."""
        marked = [n for n, f in self.features.items() if f.get("calibration")]
        return sorted(marked, key=lambda n: not self.features[n].get("domain_aware"))

    def split_files(self, split: str) -> list[str]:
        """TFRecord files of a split (``train``, ``valid``, ``calib``, ``test``)."""
        if split not in self.data["splits"]:
            raise ConfigError(f"{self.path}: no split {split!r} (have {sorted(self.data['splits'])})")
        return [self.resolve(f) for f in self.data["splits"][split]["files"]]

    def with_calib_from(self, split: str, fraction: float) -> Manifest:
        """This manifest with a calib split held out of ``split`` (:meth:`with_held_out`)."""
        return self.with_held_out(split, fraction, "calib", option=f"--calib-from-{split}")

    def with_held_out(self, split: str, fraction: float, into: str, *, option: str = "") -> Manifest:
        """This manifest with a split ``into`` held out of ``split``: the last ``ceil(fraction * shards)`` shard files
        of each of its days (an example's shard is a hash of its key, so that is a random slice of the rows), which
        ``split`` then no longer lists. Counts of the two splits are unknown afterwards (None). ``option`` names
        the command-line option in errors."""
        option = option or f"holding {into} out of {split}:"
        if not 0 < fraction < 1:
            raise ConfigError(f"{option} {fraction}: expected a fraction between 0 and 1")
        if split not in self.data["splits"]:
            raise ConfigError(f"{self.path}: no split {split!r} to hold a {into} slice out of")
        by_dir: dict[str, list[str]] = {}
        for f in self.data["splits"][split]["files"]:
            by_dir.setdefault(posixpath.dirname(f), []).append(f)
        held = [f for files in by_dir.values() for f in files[len(files) - math.ceil(fraction * len(files)):]]
        kept = [f for f in self.data["splits"][split]["files"] if f not in held]
        if not held or not kept:
            raise ConfigError(f"{self.path}: {split} has {len(held) + len(kept)} shard file(s); holding out {fraction} "
                              f"of each day's shards leaves {len(kept)} for {split} and {len(held)} for {into}")
        data = copy.deepcopy(self.data)
        unknown = dict.fromkeys(("examples", "feed_examples", "clicks", "conversions", "ctr", "cvr"))
        data["splits"][split] = {**data["splits"][split], **unknown, "files": kept}
        data["splits"][into] = {**unknown, "days": data["splits"][split]["days"], "files": held, "held_out_of": split}
        return Manifest(self.path, data)

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
