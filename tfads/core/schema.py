"""The feature/schema config: raw log fields, features, labels, attribution windows and splits.

One YAML file (``configs/schema.yaml``) is the single source of truth for every job: the generator
writes what it names, the Beam job validates against it, the trainer builds its feature layer from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from tfads.core.configtools import load_dataclass
from tfads.core.defaults import SCHEMA, default_config

FieldType = Literal["string", "int", "float"]
FeatureKind = Literal["categorical", "hashed", "numeric"]


@dataclass(frozen=True)
class FieldSpec:
    """One raw field of the impression log and, when ``feature`` is set, how it becomes a model input.

    Attributes:
      type: JSON type of the raw value.
      feature: ``categorical`` (vocabulary lookup), ``hashed`` (ids too many for a vocabulary),
        ``numeric`` (normalised / discretised), or ``None`` for non-feature fields (keys, time).
      domain_aware: True for scenario features fed to AdaSparse pruners / STAR partitions.
      values: closed enum of allowed values (strings); anything else is dead-lettered.
      min: / max: allowed range for numbers; outside is dead-lettered.
      hash_bins: number of hash buckets for ``hashed`` features.
      log: numeric features: apply log1p before normalisation.
      boundaries: numeric features: bucket boundaries for discretisation (optional).
      calibration: True if AdaCalib calibrates per value of this field.
    """

    type: FieldType
    feature: FeatureKind | None = None
    domain_aware: bool = False
    values: list[str] | None = None
    min: float | None = None
    max: float | None = None
    hash_bins: int | None = None
    log: bool = False
    boundaries: list[float] | None = None
    calibration: bool = False

    def __post_init__(self) -> None:
        if self.feature == "hashed" and not self.hash_bins:
            raise ValueError("a hashed feature needs hash_bins > 0")
        if self.feature == "numeric" and self.type == "string":
            raise ValueError("a numeric feature needs type int or float")
        if self.values is not None and self.type != "string":
            raise ValueError("values (an enum) is only allowed on string fields")


@dataclass(frozen=True)
class DerivedField:
    """A feature built from raw fields by joining their values, e.g. scenario = media|slot."""

    concat: list[str]
    separator: str = "|"
    feature: FeatureKind = "categorical"
    domain_aware: bool = False
    calibration: bool = False


@dataclass(frozen=True)
class EventLog:
    """A log other than impressions: its fields (name -> type) and which are required."""

    fields: dict[str, FieldType]
    optional: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Attribution:
    """Attribution windows: a click counts within ``click_window_s`` of its impression, a conversion
    within ``conversion_window_s`` of its click."""

    click_window_s: int = 3600
    conversion_window_s: int = 3 * 86400


@dataclass(frozen=True)
class Splits:
    """Time split by day, counted from the last day backwards: test is the last ``test_days``,
    calib before it, valid before that, everything earlier is train."""

    valid_days: int = 1
    calib_days: int = 1
    test_days: int = 1
    shards_per_day: int = 2


@dataclass(frozen=True)
class VocabSpec:
    """Vocabulary building on the train split: values seen at least ``min_count`` times, the
    ``top_k`` most frequent, in frequency order (ties by value)."""

    min_count: int = 2
    top_k: int = 100_000


@dataclass(frozen=True)
class ColdStart:
    """Organic-feed augmentation (seed article): feed impressions joined by user, marked by
    ``sample_source`` = ``feed``, weighted by ``feed_weight``."""

    enabled: bool = False
    feed_weight: float = 0.3


@dataclass(frozen=True)
class Schema:
    """Root of ``configs/schema.yaml``."""

    key: str
    timestamp: str
    fields: dict[str, FieldSpec]
    derived: dict[str, DerivedField]
    clicks: EventLog
    conversions: EventLog
    feed: EventLog
    labels: list[str] = field(default_factory=lambda: ["click", "conversion"])
    attribution: Attribution = field(default_factory=Attribution)
    splits: Splits = field(default_factory=Splits)
    vocab: VocabSpec = field(default_factory=VocabSpec)
    cold_start: ColdStart = field(default_factory=ColdStart)
    weight_feature: str = "weight"
    source_feature: str = "sample_source"

    def __post_init__(self) -> None:
        for name in (self.key, self.timestamp):
            if name not in self.fields:
                raise ValueError(f"{name!r} must be listed under fields")
        for name, d in self.derived.items():
            missing = [c for c in d.concat if c not in self.fields]
            if missing:
                raise ValueError(f"derived.{name}.concat names unknown fields {missing}")
        for log_name in ("clicks", "conversions", "feed"):
            log = getattr(self, log_name)
            if self.key not in log.fields or self.timestamp not in log.fields:
                raise ValueError(f"{log_name}.fields must include {self.key!r} and {self.timestamp!r}")

    @cached_property
    def features(self) -> dict[str, FieldSpec | DerivedField]:
        """Model input features in config order: raw fields with ``feature`` set, then derived."""
        out: dict[str, FieldSpec | DerivedField] = {n: f for n, f in self.fields.items() if f.feature}
        out.update(self.derived)
        return out

    @cached_property
    def domain_features(self) -> list[str]:
        """Names of domain-aware (scenario) features."""
        return [n for n, f in self.features.items() if f.domain_aware]

    @cached_property
    def calibration_fields(self) -> list[str]:
        """Names of fields AdaCalib calibrates per value."""
        return [n for n, f in self.features.items() if f.calibration]

    @cached_property
    def vocab_features(self) -> list[str]:
        """Categorical features that get a vocabulary file."""
        return [n for n, f in self.features.items() if f.feature == "categorical"]


DEFAULT_SCHEMA = default_config(SCHEMA)


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> Schema:
    """Load and validate a schema YAML (``ConfigError`` names the file and key on a mistake)."""
    return load_dataclass(Schema, path)
