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
from tfads.core.names import CLICK, CONVERSION

FieldType = Literal["string", "int", "float"]
FeatureKind = Literal["categorical", "hashed", "numeric"]
InputShape = Literal["events", "table"]
TableFormat = Literal["auto", "jsonl", "csv", "parquet"]
# File name endings of each table format (format: auto picks by these).
TABLE_SUFFIXES = {"csv": (".csv", ".csv.gz"), "parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".jsonl.gz", ".json")}


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
      multi: the value is a list of ``type`` values (tags, interests): a JSON / Parquet list, or in a CSV cell
        the values joined by ``list_separator``. Lists longer than ``max_len`` keep their first ``max_len``
        values (the manifest counts the rows cut); the model pads shorter ones and masks the padding.
      max_len: the longest list a multi-valued field keeps (required with ``multi``).
      list_separator: CSV only: what separates a multi-valued cell's values (an empty cell: an empty list).
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
    multi: bool = False
    max_len: int | None = None
    list_separator: str = "|"

    def __post_init__(self) -> None:
        if self.multi:
            if self.type == "float" or self.feature == "numeric":
                raise ValueError("a multi-valued field holds ids: type string or int, feature categorical or hashed")
            if self.max_len is None or self.max_len < 1:
                raise ValueError("a multi-valued field needs max_len >= 1 (the longest list it keeps)")
            if self.domain_aware or self.calibration:
                raise ValueError("a multi-valued field cannot be domain_aware or a calibration field (one value "
                                 "per example is needed there)")
            if not self.list_separator:
                raise ValueError("list_separator must not be empty")
        elif self.max_len is not None:
            raise ValueError("max_len is for multi-valued fields (multi: true)")
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


HistoryEvents = Literal["click", "conversion", "impression"]


@dataclass(frozen=True)
class HistoryFeature:
    """A user's behaviour history, computed point in time by the build job: the values of ``field`` on the
    user's last ``max_len`` ``events`` (clicked, converted or every impressed example of the user, keyed by
    the schema's ``user_key``) that happened strictly before the example's timestamp, most recent first, and
    with ``window_s`` only those at most that many seconds earlier. A click's time is its click-log
    timestamp, a conversion's its conversion-log timestamp (a table's label columns carry no event time:
    there it is the row's timestamp). Events at the same second are ordered by the example's key.

    ``share_embedding_with``: the feature whose vocabulary and embedding table the history's values are
    looked up in (default: ``field`` itself, which must then be a categorical or hashed feature).
    """

    field: str
    events: HistoryEvents = "click"
    max_len: int = 20
    window_s: int | None = None
    share_embedding_with: str | None = None

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.window_s is not None and self.window_s < 1:
            raise ValueError(f"window_s must be >= 1 second (or null for no window), got {self.window_s}")

    @property
    def table(self) -> str:
        """The feature whose embedding table the history shares."""
        return self.share_embedding_with or self.field


@dataclass(frozen=True)
class EventLog:
    """A log other than impressions: its fields (name -> type) and which are required."""

    fields: dict[str, FieldType]
    optional: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Labels:
    """The examples' label columns by role: ``click`` (pCTR learns it) and, optionally, ``conversion``
    (post-click; with it the model is ESMM: pCTR, pCVR, pCTCVR). Event logs: the join writes these
    columns from the ``clicks`` / ``conversions`` logs."""

    click: str = CLICK
    conversion: str | None = CONVERSION

    @property
    def columns(self) -> list[str]:
        """The label columns, click first."""
        return [self.click] + ([self.conversion] if self.conversion else [])

    @property
    def roles(self) -> dict[str, str | None]:
        """Role -> column (``None`` for an absent conversion label)."""
        return {CLICK: self.click, CONVERSION: self.conversion}


@dataclass(frozen=True)
class Attribution:
    """Attribution windows: a click counts within ``click_window_s`` of its impression, a conversion
    within ``conversion_window_s`` of its click."""

    click_window_s: int = 3600
    conversion_window_s: int = 3 * 86400


@dataclass(frozen=True)
class Splits:
    """The time split into train, valid, calib and test (in that order), ``by``:

    - ``day`` (default): counted from the last day backwards: test is the last ``test_days``, calib before
      it, valid before that, everything earlier is train;
    - ``time``: each held-out split starts at its ``*_from`` (int seconds since the epoch, or an ISO 8601
      UTC date or date-time); no ``calib_from``: no calib split;
    - ``ratio``: the rows in time order, the last ``test_ratio`` of them test, the ``calib_ratio`` before
      that calib, the ``valid_ratio`` before that valid. Rows with the same timestamp stay in one split,
      so a share can differ from its ratio by the rows of one second.
    """

    valid_days: int = 1
    calib_days: int = 1
    test_days: int = 1
    # Example files per day: a number, or auto = one per ~4 MiB of the day's compressed input, at least 2
    # (the build job holds one file's examples at a time in the keyed graph).
    shards_per_day: int | Literal["auto"] = "auto"
    by: Literal["day", "time", "ratio"] = "day"
    valid_from: int | str | None = None
    calib_from: int | str | None = None
    test_from: int | str | None = None
    valid_ratio: float = 0.1
    calib_ratio: float = 0.1
    test_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.by == "time":
            if self.valid_from is None or self.test_from is None:
                raise ValueError("by: time needs valid_from and test_from (calib_from is optional)")
            starts = [epoch_seconds(t) for t in (self.valid_from, self.calib_from, self.test_from) if t is not None]
            if starts != sorted(starts):
                raise ValueError("valid_from <= calib_from <= test_from (train, valid, calib, test in time order)")
        if self.by == "ratio":
            ratios = (self.valid_ratio, self.calib_ratio, self.test_ratio)
            if min(ratios) < 0 or sum(ratios) >= 1 or self.valid_ratio == 0 or self.test_ratio == 0:
                raise ValueError("by: ratio needs valid_ratio > 0, test_ratio > 0, calib_ratio >= 0 and their sum < 1")


def epoch_seconds(value: int | str) -> int:
    """Seconds since the epoch of an int, or of an ISO 8601 date / date-time string (UTC unless it names a zone)."""
    if isinstance(value, int):
        return value
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r}: expected seconds since the epoch or an ISO 8601 date / date-time") from None
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())


@dataclass(frozen=True)
class VocabSpec:
    """Vocabulary building on the train split: values seen at least ``min_count`` times, the
    ``top_k`` most frequent, in frequency order (ties by value). The rest share the OOV bucket; the
    manifest counts them per feature (``out_of_vocab``)."""

    min_count: int = 1
    top_k: int = 100_000


@dataclass(frozen=True)
class ColdStart:
    """Organic-feed augmentation (seed article): feed impressions joined by user, marked by
    ``sample_source`` = ``feed``, weighted by ``feed_weight``; ``feed_label`` is the feed log's 0/1 field
    that becomes their click label."""

    enabled: bool = False
    feed_weight: float = 0.3
    feed_label: str = "clicked"


@dataclass(frozen=True)
class Schema:
    """Root of ``configs/schema.yaml``.

    ``input: events`` (default): an impressions log joined by ``key`` with the ``clicks`` (and
    ``conversions``) logs, in ``<log>/<YYYY-MM-DD>/*.jsonl.gz``. ``input: table``: one table whose rows are
    the examples, the label columns (0/1) named by ``labels`` among its columns, in CSV, Parquet or JSON
    lines (``format``); its days are the UTC dates of ``timestamp`` (int seconds since the epoch) and
    ``key`` is optional (when set, repeated keys are dead-lettered)."""

    timestamp: str
    fields: dict[str, FieldSpec]
    key: str | None = None
    input: InputShape = "events"
    format: TableFormat = "auto"
    clicks: EventLog | None = None
    derived: dict[str, DerivedField] = field(default_factory=dict)
    history: dict[str, HistoryFeature] = field(default_factory=dict)
    conversions: EventLog | None = None
    feed: EventLog | None = None
    labels: Labels = field(default_factory=Labels)
    user_key: str | None = None  # the field GAUC groups by (a user id); None: no GAUC
    domain: str | None = None  # the primary domain feature (scenario); None: the first domain-aware one
    attribution: Attribution = field(default_factory=Attribution)
    splits: Splits = field(default_factory=Splits)
    vocab: VocabSpec = field(default_factory=VocabSpec)
    cold_start: ColdStart = field(default_factory=ColdStart)
    weight_feature: str = "weight"
    source_feature: str = "sample_source"

    def __post_init__(self) -> None:
        self._check_input_shape()
        for name in (self.key, self.timestamp):
            if name is not None and name not in self.fields:
                raise ValueError(f"{name!r} must be listed under fields")
        if self.fields[self.timestamp].type != "int":
            raise ValueError(f"timestamp {self.timestamp!r} must be an int field (seconds since the epoch, UTC)")
        for name, d in self.derived.items():
            missing = [c for c in d.concat if c not in self.fields]
            if missing:
                raise ValueError(f"derived.{name}.concat names unknown fields {missing}")
            if not d.concat:
                raise ValueError(f"derived.{name}.concat must name at least one field")
            floats = [c for c in d.concat if self.fields[c].type == "float"]
            if floats:
                raise ValueError(f"derived.{name}.concat joins float field(s) {floats}: the model rebuilds derived "
                                 "features from the examples' values and cannot match the text of a parsed float; "
                                 "join string or int fields only")
            if name in self.fields:
                raise ValueError(f"derived.{name} is also a field: give the derived feature another name")
        if self.labels.conversion and self.conversions is None and not self.is_table:
            raise ValueError(f"labels.conversion is {self.labels.conversion!r} but there is no conversions "
                             "log: add a conversions section, or set labels.conversion: null (click only)")
        for log_name in self.event_logs + (("feed",) if self.feed else ()):
            log = getattr(self, log_name)
            if self.key not in log.fields or self.timestamp not in log.fields:
                raise ValueError(f"{log_name}.fields must include {self.key!r} and {self.timestamp!r}")
        if self.cold_start.enabled and self.feed is None:
            raise ValueError("cold_start.enabled needs a feed section (the organic-feed log)")
        if self.feed is not None and self.feed.fields.get(self.cold_start.feed_label) != "int":
            raise ValueError(f"feed.fields must include the click field cold_start.feed_label "
                             f"({self.cold_start.feed_label!r}) as int")
        if self.user_key is not None and self.user_key not in self.fields:
            raise ValueError(f"user_key {self.user_key!r} must be listed under fields")
        if self.domain is not None and self.domain not in self.domain_features:
            raise ValueError(f"domain {self.domain!r} must be a feature marked domain_aware: true "
                             f"(domain-aware features: {self.domain_features})")
        clash = [c for c in self.labels.columns if c in self.fields or c in self.derived]
        if clash:
            why = ("the table's label columns are read as labels (0/1)" if self.is_table
                   else "the job writes the labels itself")
            raise ValueError(f"label column(s) {clash} are also listed under fields: remove them there ({why})")
        self._check_history()
        self._check_multi_valued()

    def _check_multi_valued(self) -> None:
        """Fields that must hold one value per example are not multi-valued."""
        single = {"key": self.key, "timestamp": self.timestamp, "user_key": self.user_key}
        for role, name in single.items():
            if name is not None and self.fields[name].multi:
                raise ValueError(f"{role} {name!r} is multi-valued: it must hold one value per example")
        for name, d in self.derived.items():
            lists = [c for c in d.concat if self.fields[c].multi]
            if lists:
                raise ValueError(f"derived.{name}.concat joins multi-valued field(s) {lists}: join single values only")
        for name, h in self.history.items():
            if h.field in self.fields and self.fields[h.field].multi:
                raise ValueError(f"history.{name}.field {h.field!r} is multi-valued: a history records one value "
                                 "per event")

    def _check_history(self) -> None:
        for name, h in self.history.items():
            where = f"history.{name}"
            if self.user_key is None:
                raise ValueError(f"{where}: a history is per user: set user_key (the field that identifies a user)")
            if name in self.fields or name in self.derived or name in self.labels.columns:
                raise ValueError(f"{where}: the name is also a field, derived feature or label: choose another")
            if h.field not in self.fields:
                raise ValueError(f"{where}.field {h.field!r} is not listed under fields")
            if self.fields[h.field].type == "float":
                raise ValueError(f"{where}.field {h.field!r} is a float: a history holds ids (string or int fields)")
            if h.events == "conversion" and not self.labels.conversion:
                raise ValueError(f"{where}.events: conversion, but the schema has no conversion label")
            table = self.features.get(h.table)
            if table is None or table.feature not in ("categorical", "hashed"):
                raise ValueError(f"{where}.share_embedding_with {h.table!r} must name a categorical or hashed "
                                 "feature (its vocabulary and embedding table look the history's values up)")
            if table_type(self, h.table) != self.fields[h.field].type:
                raise ValueError(f"{where}: field {h.field!r} ({self.fields[h.field].type}) and the feature it "
                                 f"shares a table with, {h.table!r} ({table_type(self, h.table)}), differ in type")

    def _check_input_shape(self) -> None:
        if self.input == "events":
            if self.key is None or self.clicks is None:
                raise ValueError("input: events needs a key and a clicks section (the click log joined to "
                                 "impressions by key); for one table with label columns set input: table")
            if self.format not in ("auto", "jsonl"):
                raise ValueError(f"format: {self.format}: event logs are gzipped JSON lines "
                                 "(format is for input: table)")
            return
        extra = [name for name in ("clicks", "conversions", "feed") if getattr(self, name) is not None]
        if extra:
            raise ValueError(f"input: table reads its labels from columns; remove the {', '.join(extra)} section(s)")
        if self.cold_start.enabled:
            raise ValueError("cold_start needs the organic-feed log of input: events")

    @property
    def is_table(self) -> bool:
        """True for ``input: table`` (labels are columns, no join)."""
        return self.input == "table"

    @property
    def event_logs(self) -> tuple[str, ...]:
        """The event logs joined to impressions by key: clicks, and conversions when labelled (none for a table)."""
        if self.is_table:
            return ()
        return ("clicks", "conversions") if self.labels.conversion else ("clicks",)

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
    def multi_valued(self) -> dict[str, FieldSpec]:
        """The multi-valued fields (``multi: true``) by name."""
        return {n: f for n, f in self.fields.items() if f.multi}

    @cached_property
    def vocab_features(self) -> list[str]:
        """Categorical features that get a vocabulary file."""
        return [n for n, f in self.features.items() if f.feature == "categorical"]


def table_type(schema: Schema, feature: str) -> FieldType:
    """The value type of a feature: its field's, or ``string`` for a derived (joined) feature."""
    return schema.fields[feature].type if feature in schema.fields else "string"


DEFAULT_SCHEMA = default_config(SCHEMA)


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> Schema:
    """Load and validate a schema YAML (``ConfigError`` names the file and key on a mistake)."""
    return load_dataclass(Schema, path)
