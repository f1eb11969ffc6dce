"""Mergeable counts the job gathers per file and per bucket, combined once at the end.

Statistics that feed the model (value counts for vocabularies and posteriors, numeric moments) are taken
on the train split's ad samples only: feed samples are a different traffic and carry default values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tfads.core.schema import Schema

VALUE_COLUMNS = ["impressions", "clicks", "conversions"]


@dataclass
class Tally:
    """Counts of one piece of work; ``merge`` adds another piece's."""

    inputs: dict[str, Counter] = field(default_factory=dict)  # log -> {read, dead_letter}
    reasons: Counter = field(default_factory=Counter)  # dead-letter reason -> count
    days: dict[str, Counter] = field(default_factory=dict)  # output unit -> {examples, clicks, conversions, feed}
    files: dict[str, list[str]] = field(default_factory=dict)  # output unit -> example shard paths
    dead_files: list[str] = field(default_factory=list)  # dead-letter files written
    values: dict[str, pd.DataFrame] = field(default_factory=dict)  # field -> value x VALUE_COLUMNS (train ads)
    # feature -> {unit: [n, sum, sum of squares]}; kept per unit so the final sum has a fixed order
    numeric: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    shuffle_bytes: int = 0  # keyed graph: bytes of the pieces sent through the runner's shuffle
    largest: Counter = field(default_factory=Counter)  # keyed graph: rows of the largest piece, bucket and shard
    history_truncated: Counter = field(default_factory=Counter)  # history -> examples whose events it cut short
    multi_truncated: Counter = field(default_factory=Counter)  # multi-valued field -> rows cut to its max_len

    def count_input(self, log: str, read: int, dead: list[dict]) -> None:
        """Record ``read`` lines of ``log`` and the dead letters produced from them."""
        self.inputs.setdefault(log, Counter()).update(read=read, dead_letter=len(dead))
        self.reasons.update(d["reason"] for d in dead)

    def merge(self, other: Tally) -> Tally:
        """Add ``other`` into this tally and return it."""
        for log, c in other.inputs.items():
            self.inputs.setdefault(log, Counter()).update(c)
        self.reasons.update(other.reasons)
        for day, c in other.days.items():
            self.days.setdefault(day, Counter()).update(c)
        self.dead_files = sorted(self.dead_files + other.dead_files)
        for day, paths in other.files.items():
            self.files[day] = sorted(self.files.get(day, []) + paths)
        for name, frame in other.values.items():
            mine = self.values.get(name)
            self.values[name] = frame if mine is None else mine.add(frame, fill_value=0).astype(np.int64)
        for name, per_unit in other.numeric.items():
            self.numeric.setdefault(name, {}).update(per_unit)
        self.shuffle_bytes += other.shuffle_bytes
        self.history_truncated.update(other.history_truncated)
        self.multi_truncated.update(other.multi_truncated)
        for name, rows in other.largest.items():
            self.largest[name] = max(self.largest[name], rows)
        return self


def tally_examples(examples: pd.DataFrame, schema: Schema, output: str, train: bool, unit: str) -> Tally:
    """Example counts of ``examples`` (all of output unit ``output``) plus, when ``train``, the train statistics
    of its ad samples (``unit`` names the piece of work, so floating-point sums are combined in a fixed order)."""
    tally = Tally()
    is_feed = (examples[schema.source_feature] == "feed").to_numpy()
    click = examples[schema.labels.click].to_numpy(np.int64)
    conversion = examples[schema.labels.conversion].to_numpy(np.int64) if schema.labels.conversion else 0 * click
    tally.days[output] = Counter(examples=len(examples), clicks=int(click.sum()), conversions=int(conversion.sum()),
                                 feed=int(is_feed.sum()))
    in_train = np.full(len(examples), train) & ~is_feed
    train = examples[in_train]
    click, conversion = click.astype(np.float64), np.asarray(conversion, dtype=np.float64)
    for name in posterior_fields(schema):
        values = train[name]
        if name in schema.multi_valued:  # each value of a list counts the row's impression and labels
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            values = pd.Series([v for row in values for v in row], dtype=object)
            clicks, convs = np.repeat(click[in_train], lengths), np.repeat(conversion[in_train], lengths)
        else:
            clicks, convs = click[in_train], conversion[in_train]
        codes, uniques = pd.factorize(values, sort=True)
        k = len(uniques)
        tally.values[name] = pd.DataFrame(
            {"impressions": np.bincount(codes, minlength=k), "clicks": np.bincount(codes, clicks, minlength=k),
             "conversions": np.bincount(codes, convs, minlength=k)},
            index=pd.Index(uniques, name="value"),
        ).astype(np.int64)
    for name, f in schema.features.items():
        if f.feature == "numeric":
            x = numeric_values(train[name].to_numpy(), log=getattr(f, "log", False))
            tally.numeric[name] = {unit: np.array([len(x), x.sum(), np.square(x).sum()])}
    return tally


def posterior_fields(schema: Schema) -> list[str]:
    """Fields with value statistics: every categorical feature and every calibration field."""
    names = list(schema.vocab_features)
    return names + [n for n in schema.calibration_fields if n not in names]


def numeric_values(x: np.ndarray, *, log: bool) -> np.ndarray:
    """A numeric feature as float64, after ``log1p`` when the schema says ``log: true``."""
    x = np.asarray(x, dtype=np.float64)
    return np.log1p(x) if log else x


def mean_std(per_unit: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean and population standard deviation from {unit: [n, sum, sum of squares]}."""
    total = np.zeros(3)
    for unit in sorted(per_unit):
        total = total + per_unit[unit]
    n, s, ss = (float(v) for v in total)
    if n == 0:
        return 0.0, 1.0
    mean = s / n
    return mean, float(np.sqrt(max(ss / n - mean * mean, 0.0)))
