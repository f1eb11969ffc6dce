"""Read the first rows of CSV, Parquet or JSON-lines files into one Arrow table: the sample a schema is guessed from."""

from __future__ import annotations

import glob
import gzip
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tfads.core.schema import TABLE_SUFFIXES as SUFFIXES  # the endings format: auto reads, as the Beam job does

FORMATS = tuple(SUFFIXES)


class SampleError(ValueError):
    """A file (or pattern) that cannot be sampled; the message starts with its name."""


@dataclass(frozen=True)
class Sample:
    """The sampled rows and where they came from.

    Attributes:
      table: the rows; CSV columns already narrowed to int64 / float64 where every value parses.
      files: the files rows were read from, in order (later files are not opened once the sample is full).
      formats: the format of each of ``files``.
      sample_rows: the requested number of rows (the table has fewer when the files hold fewer).
    """

    table: pa.Table
    files: list[str]
    formats: list[str]
    sample_rows: int


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by ``patterns`` (paths, globs or directories), sorted within each pattern, without repeats.

    Raises:
      SampleError: a pattern matches no file.
    """
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matched = sorted(p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True) if _known(p))
        else:
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p))
        if not matched:
            what = "no files with a known extension" if os.path.isdir(pattern) else "no files match"
            raise SampleError(f"{pattern}: {what}")
        files.extend(p for p in matched if p not in files)
    return files


def _known(path: str) -> bool:
    return any(path.lower().endswith(s) for suffixes in SUFFIXES.values() for s in suffixes)


def file_format(path: str, fmt: str = "auto") -> str:
    """``fmt``, or for ``auto`` the format of ``path``'s extension.

    Raises:
      SampleError: ``auto`` and an extension of none of the formats.
    """
    if fmt != "auto":
        if fmt not in FORMATS:
            raise SampleError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    for name, suffixes in SUFFIXES.items():
        if path.lower().endswith(suffixes):
            return name
    known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
    raise SampleError(f"{path}: unknown extension; expected one of {known} (or pass --format)")


def read_sample(paths: Sequence[str], *, sample_rows: int = 100_000, fmt: str = "auto") -> Sample:
    """The first ``sample_rows`` rows of ``paths``, read in order.

    CSV values are read as text and a column becomes int64 (float64) when every value of the sample parses
    as one, so a column's type does not depend on where a reader's blocks end. JSON lines and Parquet keep
    their own types.

    Raises:
      SampleError: an unknown extension, a file that cannot be read as its format, files whose columns
        have incompatible types, or no rows at all; the message names the file.
    """
    if sample_rows < 1:
        raise SampleError(f"sample_rows must be >= 1, got {sample_rows}")
    if not paths:
        raise SampleError("no input files")
    formats = [file_format(p, fmt) for p in paths]  # every extension is checked before reading anything
    parts: dict[str, list[pa.Table]] = {}
    used: list[str] = []
    remaining = sample_rows
    for path, kind in zip(paths, formats, strict=True):
        if remaining <= 0:
            break
        try:
            table = _READERS[kind](path, remaining)
        except (OSError, pa.ArrowException, ValueError, UnicodeDecodeError, EOFError) as e:
            raise SampleError(f"{path}: cannot read as {kind}: {_one_line(e)}") from e
        parts.setdefault(kind, []).append(table)
        used.append(path)
        remaining -= table.num_rows
    tables = []
    for kind, group in parts.items():
        table = _concat(group, used)
        tables.append(_narrow_text(table) if kind == "csv" else table)
    table = _concat(tables, used)
    if table.num_rows == 0:
        raise SampleError(f"{used[0]}: no rows" if len(used) == 1 else f"{', '.join(used)}: no rows")
    return Sample(table, used, formats[: len(used)], sample_rows)


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _concat(tables: list[pa.Table], files: list[str]) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SampleError(f"{', '.join(files)}: columns of different types in different files: {_one_line(e)}") from e


def _take(batches, schema: pa.Schema, limit: int) -> pa.Table:
    kept, rows = [], 0
    for batch in batches:
        kept.append(batch)
        rows += batch.num_rows
        if rows >= limit:
            break
    return pa.Table.from_batches(kept, schema=schema).slice(0, limit)


def _read_csv(path: str, limit: int) -> pa.Table:
    names = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
    as_text = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
    reader = pacsv.open_csv(path, convert_options=as_text)
    return _take(reader, reader.schema, limit)


def _read_parquet(path: str, limit: int) -> pa.Table:
    file = pq.ParquetFile(path)
    return _take(file.iter_batches(batch_size=min(limit, 65_536)), file.schema_arrow, limit)


def _read_jsonl(path: str, limit: int) -> pa.Table:
    lines = []
    with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
        for line in f:
            if line.strip():
                lines.append(line if line.endswith(b"\n") else line + b"\n")
                if len(lines) >= limit:
                    break
    data = b"".join(lines)
    if not data:
        return pa.table({})
    # One block for the whole sample: types are inferred from all of it (an int column with a later float
    # becomes float64 instead of failing at a block boundary).
    options = pajson.ReadOptions(block_size=len(data) + 1)
    return pajson.read_json(io.BytesIO(data), read_options=options)


_ZERO_PADDED = r"^\s*[-+]?0\d"
_READERS = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}


def _narrow_text(table: pa.Table) -> pa.Table:
    """CSV text as int64 when every value is an integer, float64 when every value is a number (no zero padding)."""
    columns = []
    for column in table.columns:
        values = column.drop_null()
        if not len(values) or not pa.types.is_string(column.type):
            columns.append(column)
            continue
        # Codes with leading zeros (zip codes, "007") stay text: as numbers they would lose the zeros.
        if not pc.any(pc.match_substring_regex(values, _ZERO_PADDED)).as_py():
            for target in (pa.int64(), pa.float64()):
                try:
                    column = pc.cast(column, target)
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        columns.append(column)
    return pa.table(columns, names=table.column_names)
