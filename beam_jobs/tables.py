"""``input: table``: CSV and Parquet files whose rows are the examples (JSON lines go through ``parse.py``).

Each format is read in pieces (CSV: lines with the header repeated; Parquet: row groups) and validated with
the same rules and dead-letter reasons as the event logs: a clean piece takes a columnar Arrow path, any
other is checked record by record (``parse.validate_records``). A CSV record whose field count differs
from the header is ``bad_row``; an empty CSV value in an int or float column is a missing field. Line
numbers are CSV lines (the header is line 1) or Parquet row numbers (from 1).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_jobs.files import read_line_pieces
from beam_jobs.parse import (
    ARROW_TYPES, LINE, Column, as_tuples, ParseResult, empty_rows, rule_violations, split_lines, validate_records,
)
from tfads.core.schema import TABLE_SUFFIXES


def table_format(path: str, fmt: str) -> str | None:
    """The format of ``path``: ``fmt`` unless auto, else by the name's ending; None when unknown."""
    if fmt != "auto":
        return fmt
    name = path.lower()
    return next((f for f, endings in TABLE_SUFFIXES.items() if name.endswith(endings)), None)


def csv_pieces(path: str, piece_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(line number of the first record, header line + records) pieces of a CSV file."""
    header = None
    for first, data in read_line_pieces(path, piece_bytes):
        if header is None:
            cut = data.find(b"\n") + 1 or len(data)
            header, data, first = data[:cut].rstrip(b"\r\n") + b"\n", data[cut:], first + 1
        if data:
            yield first, header + data


def parse_csv(data: bytes, columns: list[Column], *, log: str, source: str, first_line: int) -> ParseResult:
    """Validate a CSV piece (header line + records)."""
    lines = split_lines(data)
    if len(lines) < 2:
        return ParseResult(empty_rows(columns, keep_raw=False), [], 0)
    n = len(lines) - 1
    fast = _csv_clean(data, n, columns)
    if fast is None:
        return _csv_robust(lines, columns, log=log, source=source, first_line=first_line)
    fast[LINE] = np.arange(first_line, first_line + n, dtype=np.int64)
    return ParseResult(fast, [], n)


def _csv_clean(data: bytes, n: int, columns: list[Column]) -> pd.DataFrame | None:
    if not n:
        return None
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=1 << 26),
            parse_options=pa_csv.ParseOptions(newlines_in_values=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={c.name: pa.string() if c.multi else ARROW_TYPES[c.type] for c in columns},
                include_columns=[c.name for c in columns],
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError):
        return None
    if table.num_rows != n or any(table.column(c.name).null_count for c in columns):
        return None
    frame = table.to_pandas()
    for c in columns:
        if c.multi:
            lists = [_csv_value(text, c) for text in frame[c.name]]
            if not all(type(x) is (str if c.type == "string" else int) for v in lists for x in v):
                return None
            frame[c.name] = [tuple(v) for v in lists]
    return None if rule_violations(frame, columns).any() else frame


def _csv_value(text: str, c: Column) -> object:
    """A CSV cell as the JSON value it stands for: numbers parsed, an empty number absent, bad text kept; a
    multi-valued cell a list of its ``separator``-separated values (an empty cell: an empty list)."""
    if c.multi:
        return [_csv_scalar(part, c.type) for part in text.split(c.separator)] if text else []
    return _csv_scalar(text, c.type)


def _csv_scalar(text: str, typ: str) -> object:
    if typ == "string":
        return text
    if text == "":
        return _ABSENT
    try:
        return int(text) if typ == "int" else float(text)
    except ValueError:
        return text


_ABSENT = object()


def _csv_robust(lines: list[bytes], columns: list[Column], *, log: str, source: str, first_line: int) -> ParseResult:
    header = next(csv.reader([lines[0].decode("utf-8", "replace")]))
    index = {name: i for i, name in enumerate(header)}
    records = lines[1:]
    n = len(records)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    objs: list[dict | None] = [None] * n
    for i, line in enumerate(records):
        cells = next(csv.reader([line.decode("utf-8", "replace")]), [])
        if len(cells) != len(header):
            reason[i], detail[i] = "bad_row", f"{len(cells)} fields, the header has {len(header)}"
            continue
        values = {c.name: _csv_value(cells[index[c.name]], c) for c in columns if c.name in index}
        objs[i] = {k: v for k, v in values.items() if v is not _ABSENT}
    return _renumbered(validate_records(objs, records, reason, detail, columns, log=log, source=source,
                                        keep_raw=False), first_line)


def parquet_pieces(path: str) -> list[tuple[int, int, int]]:
    """(row group, number of its first row, compressed bytes) of a Parquet file."""
    with FileSystems.open(path) as f:
        meta = pq.ParquetFile(f).metadata
    out, first = [], 1
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        out.append((g, first, size))
        first += group.num_rows
    return out


def parse_parquet(path: str, group: int, columns: list[Column], *, log: str, first_row: int) -> ParseResult:
    """Validate one row group of a Parquet file."""
    with FileSystems.open(path) as f:
        table = pq.ParquetFile(f).read_row_group(group)
    n = table.num_rows
    fast = _parquet_clean(table, columns)
    if fast is not None:
        fast[LINE] = np.arange(first_row, first_row + n, dtype=np.int64)
        return ParseResult(fast, [], n)
    present = [c.name for c in columns if c.name in table.column_names]
    records = table.select(present).to_pylist()
    objs = [{k: v for k, v in r.items() if v is not None} for r in records]
    raw = [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str) for r in records]
    none = np.full(n, None, dtype=object)
    result = validate_records(objs, raw, none, none.copy(), columns, log=log, source=path, keep_raw=False)
    return _renumbered(result, first_row)


def _parquet_clean(table: pa.Table, columns: list[Column]) -> pd.DataFrame | None:
    try:
        cols = {c.name: table.column(c.name).cast(c.arrow_type, safe=True) for c in columns}
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if any(col.null_count for col in cols.values()) or not table.num_rows:
        return None
    frame = as_tuples(pa.table(cols).to_pandas(), columns)
    return None if rule_violations(frame, columns).any() else frame


def _renumbered(result: ParseResult, first: int) -> ParseResult:
    """Line numbers of a piece counted from ``first`` instead of 1."""
    result.rows[LINE] += first - 1
    for record in result.dead:
        record["line"] += first - 1
    return result
