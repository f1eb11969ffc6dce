"""Command-line options of the Beam job: its own flags, Beam's pipeline flags, and input discovery."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from beam_jobs.files import match
from beam_jobs.parse import TABLE
from beam_jobs.tables import table_format
from tfads.core.configtools import ConfigError, read_yaml
from tfads.core.schema import DEFAULT_SCHEMA, TABLE_SUFFIXES, Schema, Splits, epoch_seconds, load_schema

BEAM_OPTIONS = (StandardOptions, DirectOptions, GoogleCloudOptions, WorkerOptions, SetupOptions)
SPLITS = ("train", "valid", "calib", "test")
GRAPHS = ("auto", "keyed", "per-day")
MIB = 1 << 20
# Sizes in compressed input bytes (the generator's logs: ~60 B per impression, ~5x that decompressed).
SHARD_BYTES = 4 * MIB  # shards_per_day auto: one example file per this much of a day's input (~65k impressions)
BUCKET_BYTES = 4 * MIB  # key buckets auto: one join group per this much input (~65k impressions)
MIN_BUCKETS = 16  # enough groups to keep several workers busy on a small input
PER_DAY_MAX_BYTES = 64 * MIB  # graph auto: the per-day graph while a day plus all events stay under this
PIECE_BYTES = 16 * MIB  # decompressed bytes a keyed-graph worker parses at a time
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class JobError(ConfigError):
    """A user mistake in the job's flags or inputs; the message names the flag or path."""



@dataclass(frozen=True)
class InputFile:
    """One log file the job reads: its position in the job's file list, log, path and day directory."""

    index: int
    log: str
    path: str
    day: str
    size: int = 0  # bytes as stored (compressed)


@dataclass(frozen=True)
class Plan:
    """How examples are split and written. By day: the days of each split, and a unit of output (a directory
    of shard files) is a day. By time or ratio: ``cuts`` = the first second of valid, calib and test, a
    unit is (day, split) and ``splits`` is empty (the manifest lists the days each split has)."""

    splits: dict[str, list[str]]
    shards: dict[str, int]  # day -> shard files of each of its units
    error: str | None = None  # days or rows that cannot be split: nothing is written, the launcher reports this
    cuts: tuple[int, int, int] | None = None

    @property
    def days(self) -> list[str]:
        """Every day, sorted."""
        return sorted(self.shards)

    def split_of(self, day: str, ts: np.ndarray) -> np.ndarray:
        """The split of each row of ``day`` with timestamps ``ts``."""
        if self.cuts is None:
            (name,) = [s for s, days in self.splits.items() if day in days]
            return np.full(len(ts), name, dtype=object)
        return np.array(SPLITS, dtype=object)[np.searchsorted(self.cuts, ts, side="right")]

    def unit(self, day: str, split: str) -> str:
        """The output unit (``examples/<unit>/``) of a day's rows in ``split``."""
        return day if self.cuts is None else f"{day}/{split}"

    def unit_split(self, unit: str) -> tuple[str, str]:
        """(day, split) of an output unit."""
        if self.cuts is None:
            return unit, next(s for s, days in self.splits.items() if unit in days)
        day, split = unit.split("/")
        return day, split

    def units(self) -> list[str]:
        """The units every one of whose shard files is written (the days, when splitting by day)."""
        return self.days if self.cuts is None else []


def make_plan(day_bytes: dict[str, int], schema: Schema, ts_counts: dict[int, int] | None = None) -> Plan:
    """Split the days (by day) or cut the time (by time; by ratio from ``ts_counts``, timestamp -> rows) and size
    each day's shards from its compressed input bytes; JobError when the split cannot be made."""
    shards = {day: shards_for(schema.splits.shards_per_day, n) for day, n in day_bytes.items()}
    splits = schema.splits
    if splits.by == "day":
        return Plan(split_days(sorted(day_bytes), splits), shards)
    if splits.by == "time":
        test = epoch_seconds(splits.test_from)
        cuts = (epoch_seconds(splits.valid_from), epoch_seconds(splits.calib_from or test), test)
    else:
        cuts = ratio_cuts(ts_counts or {}, (splits.valid_ratio, splits.calib_ratio, splits.test_ratio))
    if ts_counts is not None:
        ts = np.array(sorted(ts_counts), dtype=np.int64)
        sizes = np.bincount(np.searchsorted(cuts, ts, side="right"), weights=[ts_counts[t] for t in ts], minlength=4)
        empty = [name for name, n in zip(SPLITS, sizes, strict=True) if not n and name != "calib"]
        if empty:
            raise JobError(f"splits (by: {splits.by}): no rows in {', '.join(empty)} "
                           f"(rows per split: {dict(zip(SPLITS, sizes.astype(int).tolist(), strict=True))})")
    return Plan({}, shards, cuts=cuts)


def ratio_cuts(ts_counts: dict[int, int], ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """The first second of valid, calib and test when the rows in time order are split by ``ratios`` (valid,
    calib, test shares): each cut is the earliest timestamp with at least the target number of rows before it
    (rows sharing a timestamp stay together)."""
    ts = np.array(sorted(ts_counts), dtype=np.int64)
    counts = np.array([ts_counts[t] for t in ts], dtype=np.int64)
    before = np.concatenate([[0], np.cumsum(counts)])  # rows with a timestamp < ts[i] (and all of them last)
    total = int(before[-1])
    valid, calib, test = ratios
    cuts = []
    for share in (1 - valid - calib - test, 1 - calib - test, 1 - test):
        i = int(np.searchsorted(before, round(share * total), side="left"))
        cuts.append(int(ts[i]) if i < len(ts) else int(ts[-1]) + 1 if len(ts) else 0)
    return cuts[0], cuts[1], cuts[2]


@dataclass(frozen=True)
class Job:
    """Everything the pipeline needs, resolved from flags and the input directory."""

    logs: str
    out: str
    schema: Schema
    schema_mapping: dict  # the schema YAML as read (copied into the manifest)
    cold_start: bool
    files: tuple[InputFile, ...]
    plan: Plan | None  # known from the day directories of event logs; a table's comes from its timestamps
    graph: str = "per-day"  # keyed | per-day (resolved, never auto)
    key_buckets: int = MIN_BUCKETS
    piece_bytes: int = PIECE_BYTES

    @property
    def paths(self) -> list[str]:
        """Input paths by file index."""
        return [f.path for f in self.files]

    def day_files(self, log: str, day: str) -> list[InputFile]:
        """The files of ``log`` under ``day``."""
        return [f for f in self.files if f.log == log and f.day == day]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's flags plus Beam's standard, direct-runner, Dataflow, worker and setup flags."""
    parser.add_argument(
        "--logs", required=True,
        help="the input, local or gs://. Schema input: events (default): a directory with "
        "<log>/<YYYY-MM-DD>/*.jsonl.gz for the impressions, clicks and (when the schema labels them) conversions "
        "logs, e.g. from your ad servers or `tfads datagen`. input: table: a CSV, Parquet or JSON-lines file, a "
        "directory of them (searched recursively) or a glob (docs/own-logs.md)",
    )
    parser.add_argument("--out", required=True, help="output directory (local or gs://)")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA),
                        help="schema YAML naming your fields, key, labels, user key and domain (default: %(default)s)")
    parser.add_argument(
        "--cold-start", "--with-feed", dest="cold_start", action=argparse.BooleanOptionalAction, default=None,
        help="add organic-feed samples as extra examples (default: schema cold_start.enabled)",
    )
    parser.add_argument(
        "--graph", choices=GRAPHS, default="auto",
        help="keyed: work split by file piece and key, joins through the runner's shuffle, a worker never holds "
        "a whole day (for Dataflow and large days); per-day: one worker per day, no shuffle, fastest on small "
        f"inputs; auto: per-day on the DirectRunner while a day plus all click/conversion logs stay under "
        f"{PER_DAY_MAX_BYTES // MIB} MiB compressed, keyed otherwise (default: %(default)s; both write the same "
        "examples and manifest, docs/decisions/0028-keyed-build-graph.md)",
    )
    parser.add_argument(
        "--key-buckets", type=int, default=None,
        help=f"keyed graph: join groups (default: one per {BUCKET_BYTES // MIB} MiB of compressed input, "
        f"at least {MIN_BUCKETS})",
    )
    parser.add_argument(
        "--piece-mib", type=float, default=PIECE_BYTES / MIB,
        help="keyed graph: decompressed MiB of a file a worker parses at a time (default: %(default)s)",
    )
    for cls in BEAM_OPTIONS:
        cls._add_argparse_args(parser.add_argument_group(f"Beam {cls.__name__}"))


def pipeline_options(args: argparse.Namespace, extra: Sequence[str] = ()) -> PipelineOptions:
    """PipelineOptions from the Beam flags set in ``args`` plus ``extra`` raw flags; unknown flags are an error."""
    beam_only = argparse.ArgumentParser(add_help=False)
    for cls in BEAM_OPTIONS:
        cls._add_argparse_args(beam_only)
    defaults = vars(beam_only.parse_args([]))
    overrides = {k: v for k, v in vars(args).items() if k in defaults and v != defaults[k]}
    options = PipelineOptions(list(extra), **overrides)
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    if unknown:
        raise JobError(f"unknown flag(s): {', '.join('--' + u for u in sorted(unknown))}")
    return options


def resolve_job(args: argparse.Namespace, options: PipelineOptions | None = None) -> Job:
    """The job the parsed flags describe (``options``: the pipeline's, for ``--graph auto``);
    JobError/ConfigError on a mistake."""
    runner = (options.view_as(StandardOptions).runner if options is not None else None) or "DirectRunner"
    return find_inputs(
        args.logs, args.out, schema_path=args.schema, cold_start=args.cold_start, flag="--logs",
        graph=args.graph, key_buckets=args.key_buckets, piece_bytes=round(args.piece_mib * MIB), runner=runner,
    )


def find_inputs(
    logs: str, out: str, *, schema_path: str | Path = DEFAULT_SCHEMA, cold_start: bool | None = None,
    flag: str = "logs", graph: str = "auto", key_buckets: int | None = None, piece_bytes: int = PIECE_BYTES,
    runner: str = "DirectRunner",
) -> Job:
    """Load the schema, find the input files, split the days and size the graph; JobError/ConfigError on a
    mistake.

    ``cold_start`` None follows the schema's ``cold_start.enabled``; ``flag`` names ``logs`` in errors;
    ``graph``/``key_buckets``: see ``add_arguments``.
    """
    schema = load_schema(schema_path)
    cold_start = schema.cold_start.enabled if cold_start is None else cold_start
    given = logs
    logs = _absolute(logs.rstrip("/"))
    out = _absolute(out.rstrip("/"))
    table_path = schema.is_table and (os.path.isfile(logs) or "*" in logs)
    if "://" not in logs and not os.path.isdir(logs) and not table_path:
        raise JobError(f"{flag} {given}: {'file or directory' if schema.is_table else 'directory'} not found")
    if graph not in GRAPHS:
        raise JobError(f"--graph {graph}: expected one of {', '.join(GRAPHS)}")
    if key_buckets is not None and key_buckets < 1:
        raise JobError(f"--key-buckets {key_buckets}: expected a number >= 1")
    if piece_bytes < 1024:
        raise JobError(f"--piece-mib {piece_bytes / MIB:g}: expected at least 0.001 (1 KiB)")
    if schema.is_table:
        files = table_files(given, logs, schema, flag)
        if graph == "per-day":
            raise JobError("--graph per-day reads day directories of event logs; a table (input: table) uses the "
                           "keyed graph")
        buckets = key_buckets or max(MIN_BUCKETS, math.ceil(sum(f.size for f in files) / BUCKET_BYTES))
        return Job(logs, out, schema, read_yaml(schema_path), False, tuple(files), None, "keyed", buckets, piece_bytes)
    files: list[InputFile] = []
    for log in ("impressions", *schema.event_logs) + (("feed",) if cold_start else ()):
        paths = match(FileSystems.join(logs, log, "*", "*.jsonl.gz"))
        if not paths and log in ("impressions", "feed"):
            hint = " (drop --cold-start or generate with --with-feed)" if log == "feed" else ""
            raise JobError(f"{flag} {given}: no {log} files matching {log}/<YYYY-MM-DD>/*.jsonl.gz{hint}")
        files += [InputFile(len(files) + i, log, p, _day_of(p), size) for i, (p, size) in enumerate(paths)]
    days = sorted({f.day for f in files if f.log == "impressions"})
    day_bytes = {day: sum(f.size for f in files if f.day == day and f.log in ("impressions", "feed")) for day in days}
    event_bytes = sum(f.size for f in files if f.log in schema.event_logs)
    buckets = key_buckets or max(MIN_BUCKETS, math.ceil(sum(f.size for f in files) / BUCKET_BYTES))
    if schema.splits.by != "day":  # the cuts need the rows' timestamps: the keyed graph computes them
        if graph == "per-day":
            raise JobError(f"--graph per-day splits by day; splits.by: {schema.splits.by} uses the keyed graph")
        return Job(logs, out, schema, read_yaml(schema_path), cold_start, tuple(files), None, "keyed", buckets,
                   piece_bytes)
    plan = make_plan(day_bytes, schema)
    if schema.history:  # a user's history spans days: only the keyed graph groups by user
        if graph == "per-day":
            raise JobError("--graph per-day joins one day at a time; a schema with history features uses the "
                           "keyed graph (--graph keyed or auto)")
        graph = "keyed"
    if graph == "auto":
        small = max(day_bytes.values(), default=0) + event_bytes <= PER_DAY_MAX_BYTES
        graph = "per-day" if small and runner in ("DirectRunner", "direct") else "keyed"
    return Job(logs, out, schema, read_yaml(schema_path), cold_start, tuple(files), plan, graph, buckets, piece_bytes)


def table_files(given: str, logs: str, schema: Schema, flag: str) -> list[InputFile]:
    """The files of a table: ``logs`` is a file, a directory (every file in it, recursively, whose name ends
    like a table) or a glob pattern."""
    if "*" in logs or "?" in logs:
        found = match(logs)
    elif "://" not in logs and os.path.isfile(logs):
        found = [(logs, os.path.getsize(logs))]
    else:
        found = match(FileSystems.join(logs, "**"))
        found = [(p, n) for p, n in found if table_format(p, schema.format)]
    if not found:
        endings = ", ".join(e for f, ends in TABLE_SUFFIXES.items() if schema.format in ("auto", f) for e in ends)
        raise JobError(f"{flag} {given}: no table files ({endings})")
    unknown = [p for p, _ in found if table_format(p, schema.format) is None]
    if unknown:
        raise JobError(f"{unknown[0]}: unknown table format (name it *.csv, *.parquet or *.jsonl[.gz], or set format: "
                       "in the schema)")
    return [InputFile(i, TABLE, p, "", n) for i, (p, n) in enumerate(found)]


def shards_for(shards_per_day: int | str, day_bytes: int) -> int:
    """Example files of a day with ``day_bytes`` of compressed input."""
    if isinstance(shards_per_day, int):
        return shards_per_day
    return max(2, math.ceil(day_bytes / SHARD_BYTES))


def direct_options(workers: int = 1) -> PipelineOptions:
    """DirectRunner options: in process for one worker, ``workers`` processes otherwise."""
    if workers < 1:
        raise JobError(f"workers must be >= 1, got {workers}")
    mode = "multi_processing" if workers > 1 else "in_memory"
    return PipelineOptions(runner="DirectRunner", direct_num_workers=workers, direct_running_mode=mode)


def split_days(days: list[str], splits: Splits) -> dict[str, list[str]]:
    """Test = the last ``test_days``, calib before it, valid before that, train = the rest (at least one day)."""
    held = [("test", splits.test_days), ("calib", splits.calib_days), ("valid", splits.valid_days)]
    need = sum(n for _, n in held) + 1
    if len(days) < need:
        raise JobError(
            f"the logs cover {len(days)} day(s) ({', '.join(days)}), but splits need at least {need}: "
            f"valid_days + calib_days + test_days + one train day"
        )
    out: dict[str, list[str]] = {}
    end = len(days)
    for name, n in held:
        out[name] = days[end - n:end]
        end -= n
    out["train"] = days[:end]
    return {name: out[name] for name in SPLITS}


def _day_of(path: str) -> str:
    day = path.rstrip("/").split("/")[-2]
    if not _DAY.match(day):
        raise JobError(f"{path}: expected the file under a YYYY-MM-DD directory")
    return day


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
