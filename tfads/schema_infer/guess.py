"""Guess a starter schema from a sample table: each column's type, feature kind and role (key, time, label, user).

Every guess comes from the sample alone and carries the reason it was made (counts, range, name), which
the written YAML shows next to it; the rules are the module's constants and ``_feature``.
"""

from __future__ import annotations

from tfads.core.names import CLICK, CONVERSION
import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_CATEGORICAL = 10_000  # more distinct values than this in the sample: hashed, not a vocabulary
MIN_MEAN_COUNT = 2.0  # a vocabulary's values should be seen at least this often on average (else: id-like)
MAX_SMALL_INT = 50  # a non-id int column with at most this many distinct values is categorical, else numeric
LOG_SKEWNESS = 2.0  # a non-negative numeric column more skewed than this gets log: true
HASH_FACTOR = 4  # hash_bins: a power of two at least this many times the distinct count
MIN_HASH_BINS = 1024
EPOCH_S = (946_684_800, 4_102_444_800)  # plausible epoch seconds: 2000-01-01 .. 2100-01-01 UTC
EPOCH_MS = (EPOCH_S[0] * 1000, EPOCH_S[1] * 1000)
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|[+-]\d{2}:?\d{2}|UTC)?)?$")

CLICK_WORDS = {"click", "clicks", "clicked"}
CONVERSION_WORDS = {"conversion", "conversions", "converted", "conv", "convert", "purchase", "purchased"}
GENERIC_LABELS = {"label", "labels", "y", "target", "outcome", "is_positive"}
TIME_WORDS = {"ts", "time", "timestamp", "datetime", "date", "epoch", "when"}
ID_WORDS = {"id", "ids", "uid", "uuid", "guid", "key", "hash", "userid"}
KEY_WORDS = {"request", "trace", "event", "row", "impression", "record", "uuid", "guid", "id"}
USER_WORDS = {"user", "uid", "userid", "customer", "member", "visitor", "account", "client", "person"}
DOMAIN_WORDS = {"site", "media", "placement", "slot", "surface", "app", "page", "channel", "scenario", "domain",
                "publisher", "position", "section", "inventory"}


def words(name: str) -> list[str]:
    """The lower-case words of a column name: ``userId`` / ``user-id`` / ``User ID`` -> ``[user, id]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^0-9a-zA-Z]+", spaced.lower()) if w]


@dataclass(frozen=True)
class Profile:
    """What the sample says about one column.

    Attributes:
      name: the column.
      kind: ``int``, ``float``, ``string``, ``bool``, ``datetime`` (an Arrow date or timestamp) or ``other``.
      arrow_type: the Arrow type, as text.
      rows, nulls, distinct, singletons: counts in the sample (``distinct`` of the non-null values;
        ``singletons``: values seen once).
      low, high: smallest and largest value (numbers only).
      mean, skewness: the sample mean and skewness (numbers and bools only).
      iso_datetime: every non-null value is an ISO date or date-time text.
      example: one value, for messages.
    """

    name: str
    kind: str
    arrow_type: str
    rows: int
    nulls: int
    distinct: int
    singletons: int
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    skewness: float = 0.0
    iso_datetime: bool = False
    example: object = None

    @property
    def filled(self) -> int:
        """Non-null values."""
        return self.rows - self.nulls

    @property
    def zero_one(self) -> bool:
        """A bool column, or ints that are all 0 or 1 with both present."""
        if self.kind == "bool":
            return self.distinct == 2
        return self.kind == "int" and self.distinct == 2 and self.low == 0 and self.high == 1

    @property
    def unique(self) -> bool:
        """Every row holds a different, non-null value."""
        return self.nulls == 0 and self.distinct == self.rows > 1

    def counts(self) -> str:
        """``"83 distinct of 6000, 12 null, 17..100"``: the sample counts a guess rests on."""
        text = f"{self.distinct} distinct of {self.rows}"
        if self.nulls:
            text += f", {self.nulls} null"
        if self.low is not None:
            text += f", {_number(self.low)}..{_number(self.high)}"
        return text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "datetime"
    return "other"


def profile_column(name: str, column: pa.ChunkedArray) -> Profile:
    """The sample counts of one column."""
    kind = _kind(column.type)
    if kind == "string" and pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    values = column.drop_null()
    rows, nulls = len(column), column.null_count
    if kind == "other" or not len(values):
        return Profile(name, kind, str(column.type), rows, nulls, 0, 0)
    counts = pc.value_counts(values).field("counts")
    distinct, singletons = len(counts), int(pc.sum(pc.equal(counts, 1)).as_py() or 0)
    example = values[0].as_py()
    if kind in ("int", "float"):
        x = values.to_numpy().astype(np.float64)
        std = x.std()
        skewness = float(np.mean(((x - x.mean()) / std) ** 3)) if std > 0 else 0.0
        return Profile(name, kind, str(column.type), rows, nulls, distinct, singletons, float(x.min()),
                       float(x.max()), float(x.mean()), skewness, example=example)
    if kind == "bool":
        mean = pc.mean(values.cast(pa.int8())).as_py()
        return Profile(name, kind, str(column.type), rows, nulls, distinct, singletons, mean=mean, example=example)
    iso = kind == "string" and all(ISO_DATETIME.match(v) for v in pc.unique(values)[:1000].to_pylist())
    return Profile(name, kind, str(column.type), rows, nulls, distinct, singletons, iso_datetime=iso,
                   example=example)


def profile_table(table: pa.Table) -> list[Profile]:
    """One profile per column, in column order."""
    return [profile_column(name, table.column(name)) for name in table.column_names]


@dataclass
class Column:
    """The guess for one column: its field spec and why; a left-out column is written commented out, with
    the spec it would have when there is one."""

    name: str
    spec: dict | None
    reason: str
    left_out: bool = False


@dataclass
class Guess:
    """A starter schema and the reasons behind it (``render_schema`` writes it as YAML).

    Attributes:
      rows: sampled rows.
      columns: every column but the labels, in table order.
      labels: role -> column (``click`` may be None when no label column was recognised).
      key, timestamp, user_key: the chosen columns or None; ``*_reason`` says why (or why none).
      timestamp_todo: what must be done to the time column before the job can read it (None: nothing).
      domain: a candidate primary domain, only suggested (never set).
      days: the UTC days the sample's timestamps span (first, last, count), when they are epoch seconds.
    """

    rows: int
    columns: list[Column] = field(default_factory=list)
    labels: dict[str, str | None] = field(default_factory=lambda: {CLICK: None, CONVERSION: None})
    label_reason: str = ""
    key: str | None = None
    key_reason: str = ""
    timestamp: str | None = None
    timestamp_reason: str = ""
    timestamp_todo: str | None = None
    user_key: str | None = None
    user_reason: str = ""
    domain: str | None = None
    domain_reason: str = ""
    days: tuple[str, str, int] | None = None

    def features(self, kind: str) -> list[str]:
        """Columns guessed as features of ``kind``."""
        return [c.name for c in self.columns if not c.left_out and c.spec and c.spec.get("feature") == kind]

    @property
    def skipped(self) -> list[Column]:
        """Columns left out of ``fields``."""
        return [c for c in self.columns if c.left_out]


def infer_schema(table: pa.Table) -> Guess:
    """Guess the schema of ``table`` (a sample): roles first (labels, time, key, user), then each feature."""
    profiles = {p.name: p for p in profile_table(table)}
    guess = Guess(rows=table.num_rows)
    _guess_labels(guess, profiles)
    rest = {n: p for n, p in profiles.items() if n not in guess.labels.values()}
    # Other columns named like an outcome (click_time, conversion_value, clicks) are usually recorded after the
    # impression: as features they would leak the label, and none of them is the impression's time or key.
    outcomes = {n for n in rest if (CLICK_WORDS | CONVERSION_WORDS) & set(words(n))}
    candidates = {n: p for n, p in rest.items() if n not in outcomes}
    _guess_timestamp(guess, candidates)
    _guess_key(guess, candidates)
    _guess_user(guess, candidates)
    for name, p in rest.items():
        if name in outcomes:
            spec, reason = _feature(p)
            why = ("named like an outcome: if it is recorded after the impression it leaks the label; add it only if "
                   "it is known when the ad is served")
            guess.columns.append(Column(name, spec, f"{why} ({p.counts()})", left_out=True))
        elif name == guess.timestamp:
            note = _timestamp_note(guess, p) + (f"; TODO: {_missing_numbers(p)}" if p.nulls else "")
            guess.columns.append(Column(name, {"type": "int", "min": 0}, note))
        elif name == guess.key:
            guess.columns.append(Column(name, {"type": "int" if p.kind == "int" else "string"}, "key"))
        else:
            spec, reason = _feature(p, is_user=name == guess.user_key)
            if spec and p.nulls and p.kind in ("int", "float"):
                reason += f"; TODO: {_missing_numbers(p)}"
            guess.columns.append(Column(name, spec, reason, left_out=spec is None or p.kind == "bool"))
    _guess_domain(guess)
    return guess


def _guess_labels(guess: Guess, profiles: dict[str, Profile]) -> None:
    binary = [p for p in profiles.values() if p.zero_one]
    clicks = [p.name for p in binary if CLICK_WORDS & set(words(p.name))]
    conversions = [p.name for p in binary if CONVERSION_WORDS & set(words(p.name))]
    generic = [p.name for p in binary if "_".join(words(p.name)) in GENERIC_LABELS]
    click = (clicks or generic or [None])[0]
    conversion = next((c for c in conversions if c != click), None)
    guess.labels = {CLICK: click, CONVERSION: conversion}
    found = [c for c in (click, conversion) if c]
    if not click:
        guess.label_reason = ("no 0/1 column with a click-like name (click, clicked, is_click, label, y, target): "
                              "set labels.click to the click column")
    else:
        guess.label_reason = f"0/1 column(s) with label-like names: {', '.join(found)}"
        rates = ", ".join(f"{c} {profiles[c].mean:.4f}" for c in found)
        guess.label_reason += f" (positive rates in the sample: {rates})"
        todo = [f"{c} is true/false: write it as 0/1 (the job reads label columns as ints 0/1)"
                for c in found if profiles[c].kind == "bool"]
        todo += [f"{c}: {_missing_numbers(profiles[c])}" for c in found if profiles[c].nulls]
        if todo:
            guess.label_reason += "; TODO: " + "; ".join(todo)


def _missing_numbers(p: Profile) -> str:
    return f"{p.nulls} of {p.rows} sampled values are null; the job dead-letters rows missing a number: fill them"


def _guess_timestamp(guess: Guess, profiles: dict[str, Profile]) -> None:
    def named(p: Profile) -> bool:
        w = words(p.name)
        return bool(TIME_WORDS & set(w)) or (len(w) > 1 and w[-1] == "at")

    ints = [p for p in profiles.values() if p.kind == "int" and p.distinct > 1]
    seconds = [p for p in ints if EPOCH_S[0] <= p.low and p.high < EPOCH_S[1]]
    millis = [p for p in ints if EPOCH_MS[0] <= p.low and p.high < EPOCH_MS[1] and named(p)]
    texts = [p for p in profiles.values() if (p.kind == "datetime" or p.iso_datetime) and p.filled]
    named_ints = [p for p in ints if named(p)]
    by_name = [p for p in seconds if named(p)]
    unnamed = [p for p in seconds if not (set(words(p.name)) & (ID_WORDS | USER_WORDS))]
    if by_name or unnamed:
        p = (by_name or sorted(unnamed, key=lambda q: -q.distinct))[0]
        guess.timestamp = p.name
        why = "named like a time" if by_name else "the int column with most distinct values"
        guess.timestamp_reason = f"int, epoch seconds ({_day(p.low)} .. {_day(p.high)} UTC), {why}"
        first, last = int(p.low) // 86400, int(p.high) // 86400
        guess.days = (_day(p.low), _day(p.high), last - first + 1)
    elif millis:
        p = millis[0]
        guess.timestamp = p.name
        guess.timestamp_reason = f"int, epoch milliseconds ({_day(p.low / 1000)} .. {_day(p.high / 1000)} UTC)"
        guess.timestamp_todo = "epoch milliseconds: divide by 1000 (the job needs int seconds since the epoch, UTC)"
    elif texts:
        p = sorted(texts, key=lambda q: not named(q))[0]
        guess.timestamp = p.name
        what = "date/time values" if p.kind == "datetime" else f"ISO date-time text (e.g. {p.example!r})"
        guess.timestamp_reason = what
        guess.timestamp_todo = "convert this column to int seconds since the epoch (UTC) before running the job"
    elif named_ints:
        p = named_ints[0]
        guess.timestamp = p.name
        guess.timestamp_reason = f"int named like a time, {p.counts()}"
        guess.timestamp_todo = "the values are not epoch seconds of 2000..2100: check, the job needs int seconds"
    else:
        guess.timestamp_reason = ("no int column of epoch seconds and no date-time column: add one (int seconds "
                                  "since the epoch, UTC); splits and ordering use it")


def _day(seconds: float) -> str:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC).date().isoformat()


def _timestamp_note(guess: Guess, p: Profile) -> str:
    note = "timestamp"
    if guess.timestamp_todo:
        note += f"; now {p.kind} ({p.arrow_type}): {guess.timestamp_todo}"
    return note


def _guess_key(guess: Guess, profiles: dict[str, Profile]) -> None:
    def score(p: Profile) -> tuple[int, int]:
        w = set(words(p.name))
        return (0 if w & KEY_WORDS - {"id"} else 1, 0 if p.kind == "string" else 1)

    candidates = [
        p for p in profiles.values()
        if p.unique and p.name != guess.timestamp and p.kind in ("int", "string")
        and set(words(p.name)) & (ID_WORDS | KEY_WORDS) and not set(words(p.name)) & USER_WORDS
    ]
    if candidates:
        p = sorted(candidates, key=score)[0]
        guess.key = p.name
        guess.key_reason = f"every one of the {p.rows} sampled values is distinct; id-like name"
    else:
        guess.key_reason = "no column with an id-like name is unique in the sample (a table needs no key)"


def _guess_user(guess: Guess, profiles: dict[str, Profile]) -> None:
    for p in profiles.values():
        w = words(p.name)
        if p.name in (guess.key, guess.timestamp) or not w or p.kind not in ("int", "string"):
            continue
        if w[0] in USER_WORDS and (len(w) == 1 or w[-1] in ID_WORDS | {"key", "name"}):
            guess.user_key, guess.user_reason = p.name, f"named like a user id; {p.counts()}"
            return
    guess.user_reason = "no column named like a user id (user, user_id, uid): no GAUC until you set one"


def _feature(p: Profile, *, is_user: bool = False) -> tuple[dict | None, str]:
    """The field spec of a feature column and the reason; ``(None, reason)`` when it cannot be one (booleans get
    the spec they would have once written as 0/1)."""
    counts = p.counts()
    if p.name.startswith("__index_level_"):
        return None, "the pandas index, written along with the data"
    if not p.filled:
        return None, "every sampled value is null"
    if p.kind == "other":
        return None, f"type {p.arrow_type} is not supported (string, int or float)"
    if p.kind == "datetime" or p.iso_datetime:
        return None, (f"a date/time ({p.example!r}): convert it to int epoch seconds, or derive features "
                      "(hour, weekday) from it first")
    if p.distinct == 1:
        return None, f"constant in the sample ({p.example!r}): no signal"
    if p.kind == "bool":
        return {"type": "int", "feature": "categorical"}, f"true/false ({counts}): the job reads ints; write 0/1"
    id_like = is_user or p.kind == "string" or bool(set(words(p.name)) & ID_WORDS)
    if p.kind in ("int", "string") and id_like:
        if p.distinct <= MAX_CATEGORICAL and p.distinct * MIN_MEAN_COUNT <= p.filled:
            return {"type": p.kind, "feature": "categorical"}, counts
        if p.unique and not is_user:
            return None, f"every value distinct ({p.rows} rows): an id or free text, not a feature"
        bins = max(MIN_HASH_BINS, 1 << int(np.ceil(np.log2(HASH_FACTOR * p.distinct))))
        return ({"type": p.kind, "feature": "hashed", "hash_bins": bins},
                f"{counts}: id-like, hash_bins >= {HASH_FACTOR}x distinct; raise it if the full data has more")
    if p.kind == "int" and p.distinct <= MAX_SMALL_INT:
        return {"type": "int", "feature": "categorical"}, counts
    spec: dict = {"type": p.kind, "feature": "numeric"}
    reason = counts
    if p.low >= 0:
        spec["min"] = 0
        if p.kind == "float" and p.high <= 1:
            spec["max"] = 1
        if p.skewness > LOG_SKEWNESS:
            spec["log"] = True
            reason += f", skewness {p.skewness:.1f}"
    return spec, reason


def _guess_domain(guess: Guess) -> None:
    for name in guess.features("categorical"):
        if DOMAIN_WORDS & set(words(name)):
            guess.domain = name
            guess.domain_reason = "a categorical column named like a site / placement / surface"
            return
    guess.domain_reason = "no categorical column named like a site, placement or surface"
