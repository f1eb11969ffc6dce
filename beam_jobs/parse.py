"""Parse and validate one log file's JSON lines against the schema, column-wise.

Valid events become a typed pandas DataFrame; every other line becomes a dead-letter record
``{reason, detail, log, source, line, raw}``. Checks run in a fixed priority so each bad line gets
exactly one reason: ``bad_json`` > ``missing_field`` > ``wrong_type`` > ``unknown_value`` > ``out_of_range``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
from pandas.api.types import infer_dtype

from tfads.core.schema import Schema

TABLE = "table"  # the log name of input: table rows
LINE = "_line"  # 1-based line number of the event in its file (a table: its row number)
RAW = "_raw"  # the raw line (kept for the small click and conversion logs)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MISSING = object()
_ACCEPTED = {"int": {"integer"}, "float": {"integer", "floating", "mixed-integer-float"}, "string": {"string"}}
DTYPES = {"int": np.int64, "float": np.float64, "string": object}
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}


@dataclass(frozen=True)
class Column:
    """One field of a log: its JSON type, whether it must be present, and its allowed values."""

    name: str
    type: str
    required: bool = True
    values: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    multi: bool = False  # a list of ``type`` values per row (kept as a tuple)
    separator: str = "|"  # a multi-valued CSV cell's separator

    @property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type its values parse to."""
        return pa.list_(ARROW_TYPES[self.type]) if self.multi else ARROW_TYPES[self.type]


def log_columns(schema: Schema, log: str) -> list[Column]:
    """The validated columns of ``log``; other logs borrow enum/range rules from same-named impression fields.
    A table (``log`` ``table``) has the fields plus its label columns (ints 0 or 1)."""
    if log in ("impressions", TABLE):
        columns = [
            Column(n, f.type, True, tuple(f.values) if f.values else None, f.min, f.max, f.multi, f.list_separator)
            for n, f in schema.fields.items()
        ]
        return columns + ([Column(c, "int", True, None, 0, 1) for c in schema.labels.columns] if log == TABLE else [])
    spec = getattr(schema, log)
    cols = []
    for name, typ in spec.fields.items():
        f = schema.fields.get(name)
        rules = f if f is not None and f.type == typ else None
        values = tuple(rules.values) if rules and rules.values else None
        lo, hi = (rules.min, rules.max) if rules else (None, None)
        if log == "feed" and name == schema.cold_start.feed_label:
            lo, hi = 0, 1
        cols.append(Column(name, typ, name not in spec.optional, values, lo, hi))
    return cols


@dataclass
class ParseResult:
    """Valid rows (typed columns plus ``_line`` and optionally ``_raw``) and the dead-letter records."""

    rows: pd.DataFrame
    dead: list[dict]
    read: int


def empty_rows(columns: list[Column], *, keep_raw: bool) -> pd.DataFrame:
    """A zero-row frame with the columns and dtypes ``parse_lines`` produces."""
    frame = pd.DataFrame({c.name: pd.Series([], dtype=object if c.multi else DTYPES[c.type]) for c in columns})
    frame[LINE] = pd.Series([], dtype=np.int64)
    if keep_raw:
        frame[RAW] = pd.Series([], dtype=object)
    return frame


def split_lines(data: bytes) -> list[bytes]:
    """Lines of a decompressed file; a trailing newline does not make an extra empty line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def parse_bytes(
    data: bytes, columns: list[Column], *, log: str, source: str, keep_raw: bool, first_line: int = 1
) -> ParseResult:
    """Validate a file's content (one JSON object per line) against ``columns``; see the module docstring.

    ``first_line`` is the line number of ``data``'s first line in ``source`` (a piece of a file)."""
    n = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    fast = _parse_clean(data, n, columns)
    if fast is not None:
        fast[LINE] += first_line - 1
        if keep_raw:
            fast[RAW] = split_lines(data)
        return ParseResult(fast, [], n)
    result = _parse_robust(split_lines(data), columns, log=log, source=source, keep_raw=keep_raw)
    if first_line != 1:
        result.rows[LINE] += first_line - 1
        for record in result.dead:
            record["line"] += first_line - 1
    return result


def parse_lines(lines: list[bytes], columns: list[Column], *, log: str, source: str, keep_raw: bool) -> ParseResult:
    """``parse_bytes`` for a list of lines."""
    return parse_bytes(b"".join(line + b"\n" for line in lines), columns, log=log, source=source, keep_raw=keep_raw)


def _parse_clean(data: bytes, n_lines: int, columns: list[Column]) -> pd.DataFrame | None:
    """Fast path with Arrow's JSON reader; ``None`` if anything at all is off (then the robust path decides)."""
    if not n_lines:
        return None
    schema = pa.schema([(c.name, c.arrow_type) for c in columns])
    try:
        table = pa_json.read_json(
            io.BytesIO(data),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=1 << 26),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n_lines or any(table.column(c.name).null_count for c in columns):
        return None
    frame = as_tuples(table.select([c.name for c in columns]).to_pandas(), columns)
    frame[LINE] = np.arange(1, n_lines + 1, dtype=np.int64)
    if rule_violations(frame, columns).any():
        return None
    return frame


def as_tuples(frame: pd.DataFrame, columns: list[Column]) -> pd.DataFrame:
    """``frame`` with each multi-valued column's lists (Arrow's arrays, or None for a missing list) as tuples."""
    for c in columns:
        if c.multi:
            frame[c.name] = [() if v is None else tuple(v.tolist()) for v in frame[c.name]]
    return frame


def rule_violations(frame: pd.DataFrame, columns: list[Column]) -> np.ndarray:
    bad = np.zeros(len(frame), dtype=bool)
    for c in columns:
        unknown, out = _value_checks(frame[c.name], c)
        bad |= unknown | out
    return bad


def _parse_robust(
    lines: list[bytes], columns: list[Column], *, log: str, source: str, keep_raw: bool
) -> ParseResult:
    n = len(lines)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    objs: list[dict | None] = [None] * n
    loads = orjson.loads
    for i, line in enumerate(lines):
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as e:
            reason[i], detail[i] = "bad_json", f"not JSON: {e}"
            continue
        if type(obj) is not dict:
            reason[i], detail[i] = "bad_json", f"not a JSON object: {type(obj).__name__}"
            continue
        objs[i] = obj
    return validate_records(objs, lines, reason, detail, columns, log=log, source=source, keep_raw=keep_raw)


def validate_records(
    objs: list[dict | None], lines: list[bytes], reason: np.ndarray, detail: np.ndarray, columns: list[Column], *,
    log: str, source: str, keep_raw: bool,
) -> ParseResult:
    """Type and rule checks of decoded records (``None`` where decoding already failed with ``reason``/``detail``);
    ``lines`` are the raw records for the dead letters."""
    n = len(objs)
    flagged = np.array([r is not None for r in reason], dtype=bool)
    empty: dict = {}
    dicts = [o if o is not None else empty for o in objs]
    typed: dict[str, np.ndarray] = {}
    checks: dict[str, list[tuple[Column, np.ndarray]]] = {
        "missing_field": [], "wrong_type": [], "unknown_value": [], "out_of_range": []
    }
    for c in columns:
        raw = [d.get(c.name, _MISSING) for d in dicts]
        values, missing, wrong = _typed_column(raw, c)
        typed[c.name] = values
        checks["missing_field"].append((c, missing))
        checks["wrong_type"].append((c, wrong))
        unknown, out = _value_checks(values, c)
        ok = ~(missing | wrong)
        checks["unknown_value"].append((c, unknown & ok))
        checks["out_of_range"].append((c, out & ok))
    for code, per_column in checks.items():
        for c, mask in per_column:
            for i in np.flatnonzero(mask & ~flagged):
                reason[i], detail[i] = code, _detail(code, c, dicts[i].get(c.name, _MISSING))
            flagged |= mask
    good = ~flagged
    frame = pd.DataFrame({name: arr[good] for name, arr in typed.items()})
    frame[LINE] = np.flatnonzero(good).astype(np.int64) + 1
    if keep_raw:
        frame[RAW] = [lines[i] for i in np.flatnonzero(good)]
    dead = [
        dead_letter(reason[i], detail[i], log, source, int(i) + 1, lines[i]) for i in np.flatnonzero(~good)
    ]
    return ParseResult(frame, dead, n)


def _typed_column(raw: list, c: Column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Typed values (placeholders where bad), the missing mask and the wrong-type mask of one column."""
    n = len(raw)
    if c.multi:
        missing = np.fromiter((v is _MISSING for v in raw), dtype=bool, count=n)
        ok = np.fromiter((type(v) is list and all(_is_type(x, c.type) for x in v) for v in raw), dtype=bool, count=n)
        values = np.empty(n, dtype=object)
        values[:] = [tuple(v) if good else () for v, good in zip(raw, ok, strict=True)]
        return values, missing, ~ok & ~missing
    kind = infer_dtype(raw, skipna=False)
    if kind in _ACCEPTED[c.type]:
        try:
            values = np.asarray(raw, dtype=DTYPES[c.type])
            return values, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        except OverflowError:
            pass
    missing = np.fromiter((v is _MISSING for v in raw), dtype=bool, count=n)
    if not c.required:
        missing[:] = False
    wrong = np.fromiter((not _is_type(v, c.type) for v in raw), dtype=bool, count=n)
    wrong &= ~missing
    if not c.required:
        absent = np.fromiter((v is _MISSING or v is None for v in raw), dtype=bool, count=n)
        wrong &= ~absent
    placeholder = {"int": 0, "float": np.nan, "string": ""}[c.type]
    fixed = [v if ok else placeholder for v, ok in zip(raw, ~(missing | wrong), strict=True)]
    if not c.required:
        fixed = [np.nan if v is _MISSING or v is None else v for v in fixed]
    return np.asarray(fixed, dtype=DTYPES[c.type]), missing, wrong


def _is_type(v: object, typ: str) -> bool:
    t = type(v)
    if typ == "int":
        return t is int and INT64_MIN <= v <= INT64_MAX
    if typ == "float":
        return t is float or (t is int and INT64_MIN <= v <= INT64_MAX)
    return t is str


def _value_checks(values: np.ndarray | pd.Series, c: Column) -> tuple[np.ndarray, np.ndarray]:
    """Masks of values outside the enum and outside [min, max] (a list: any of its values)."""
    n = len(values)
    if c.multi:
        lists = list(values)
        row = np.repeat(np.arange(n), [len(v) for v in lists])
        flat = np.asarray([x for v in lists for x in v], dtype=DTYPES[c.type])
        unknown, out = _value_checks(flat, Column(c.name, c.type, values=c.values, min=c.min, max=c.max))
        return np.bincount(row[unknown], minlength=n) > 0, np.bincount(row[out], minlength=n) > 0
    unknown = np.zeros(n, dtype=bool)
    out = np.zeros(n, dtype=bool)
    if c.values is not None:
        unknown = ~pd.Series(values).isin(c.values).to_numpy()
    if c.min is not None:
        out |= values < c.min
    if c.max is not None:
        out |= values > c.max
    return unknown, out


def _detail(code: str, c: Column, value: object) -> str:
    shown = "absent" if value is _MISSING else repr(value)[:80]
    if code == "missing_field":
        return f"field {c.name!r} is missing"
    if code == "wrong_type":
        expected = f"a list of {c.type}" if c.multi else c.type
        return f"field {c.name!r}: expected {expected}, got {type(value).__name__} {shown}"
    if code == "unknown_value":
        return f"field {c.name!r}: {shown} is not one of {list(c.values or ())}"
    return f"field {c.name!r}: {shown} outside [{c.min}, {c.max}]"


def dead_letter(reason: str, detail: str, log: str, source: str, line: int, raw: bytes | str) -> dict:
    """One dead-letter record in the shape of docs/architecture.md "Dead-letter reasons"."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {"reason": reason, "detail": detail, "log": log, "source": source, "line": line, "raw": text}
