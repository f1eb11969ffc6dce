"""The keyed graph: work splits by file piece and by key, and the joins go through the runner's shuffle,
so a worker holds one piece of a file, one key bucket or one output shard, never a day
(docs/decisions/0028-keyed-build-graph.md).

1. ``SplitFile``: every input file is streamed in pieces of about ``piece_bytes`` (compressed for the shuffle);
   ``ParsePiece``, wherever the runner sends a piece: parsed (its bad lines dead-lettered) and its rows split
   by a stable hash bucket of the key;
2. ``JoinBucket`` (a GroupByKey on the bucket): one bucket's impressions, clicks, conversions (and feed)
   of every day are joined and labelled day by day, exactly as one day of the per-day graph would; the
   bucket's click and conversion lines no impression claimed are its orphans; the examples leave keyed by
   their (day, output shard);
3. ``WriteShard`` (a GroupByKey on (day, shard)): one file per shard, sorted by time like the per-day graph's.
Every step emits a Tally; the sum of all of them becomes the manifest.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.pvalue import TaggedOutput

from beam_jobs.files import read_line_pieces
from beam_jobs.history import DAY_S, TS, USER, add_histories, event_records, last_events, utc_day_numbers
from beam_jobs.frames import compress, decompress, pack, unpack
from beam_jobs.join import (
    DAY, FILE, ORDER, add_derived, empty_events, feed_examples, join_impressions, orphans, table_examples,
)
from beam_jobs.options import InputFile, Job, JobError, Plan, make_plan
from beam_jobs.parse import TABLE, ParseResult, log_columns, parse_bytes
from beam_jobs.tables import csv_pieces, parquet_pieces, parse_csv, parse_parquet, table_format
from beam_jobs.stats import Tally
from beam_jobs.steps import (
    STATS, MergeTallies, bucket_of, count, count_by_log, finalize, shard_keys, write_dead_letters, write_shard,
)

AD_LOGS = ("impressions", "feed", TABLE)  # logs whose rows become examples (of their file's day / timestamp's day)


EVENTS = "history_events"  # JoinBucket's output with a history in the schema: events by (user bucket, day)
PLAN_STATS = "plan_stats"  # ParsePiece's output when the plan needs the data: input bytes per day, rows per timestamp
Piece = tuple[InputFile, int, int, bytes, int]  # file, piece number, first line/row, compressed lines, bytes in


class SplitFile(beam.DoFn):
    """An input file -> pieces: lines of about ``piece_bytes`` (zstd-compressed; a CSV piece starts with the
    header) or, for Parquet, a row group (read where it is parsed). An empty file is one empty piece.
    Reading is sequential; pieces are parsed wherever the runner sends them."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, f: InputFile):
        fmt = table_format(f.path, self._job.schema.format) if f.log == TABLE else "jsonl"
        if fmt == "parquet":
            for group, first, size in parquet_pieces(f.path):
                yield f, group + 1, first, b"", size
            return
        pieces = csv_pieces(f.path, self._job.piece_bytes) if fmt == "csv" else read_line_pieces(
            f.path, self._job.piece_bytes)
        number = 0
        for number, (first, data) in enumerate(pieces, start=1):
            blob = compress(data)
            yield f, number, first, blob, len(blob)
        if not number:
            yield f, 1, 1, compress(b""), 0


def _parse(job: Job, piece: Piece) -> ParseResult:
    f, number, first, blob, _ = piece
    columns = log_columns(job.schema, f.log)
    fmt = table_format(f.path, job.schema.format) if f.log == TABLE else "jsonl"
    if fmt == "parquet":
        return parse_parquet(f.path, number - 1, columns, log=f.log, first_row=first)
    if fmt == "csv":
        return parse_csv(decompress(blob), columns, log=f.log, source=f.path, first_line=first)
    keep_raw = f.log not in AD_LOGS  # event lines keep their text for the join's dead letters
    return parse_bytes(decompress(blob), columns, log=f.log, source=f.path, keep_raw=keep_raw, first_line=first)


def utc_days(ts: np.ndarray) -> np.ndarray:
    """YYYY-MM-DD (UTC) of int seconds since the epoch."""
    days, index = np.unique(np.asarray(ts, dtype=np.int64) // 86400, return_inverse=True)
    return np.datetime_as_string(days.astype("datetime64[D]")).astype(object)[index.reshape(-1)]


class ParsePiece(beam.DoFn):
    """A piece of a file -> (bucket, (log, day, rows)) pieces; its dead letters written; a Tally; for a table
    the piece's input bytes per day."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, piece: Piece):
        f, number, _, blob, size = piece
        job = self._job
        result = _parse(job, piece)
        tally = Tally(shuffle_bytes=len(blob), largest=Counter(piece_rows=result.read))
        count(f.log, result.read, result.dead, tally)
        write_dead_letters(job.out, f"read-{f.index:05d}-{number:05d}", result.dead, tally)
        rows = result.rows
        rows[FILE] = f.index
        ts = rows[job.schema.timestamp].to_numpy()
        days = utc_days(ts) if f.log == TABLE else np.full(len(rows), f.day, dtype=object)
        if job.plan is None and f.log in AD_LOGS and len(rows):
            share = pd.Series(days).value_counts() * (size / len(rows))
            values, counts = np.unique(ts, return_counts=True)
            yield TaggedOutput(PLAN_STATS, ({day: float(n) for day, n in share.items()},
                                            dict(zip(values.tolist(), counts.tolist(), strict=True))))
        buckets = bucket_of(shard_keys(rows, job.schema), job.key_buckets)
        groups = pd.DataFrame({"bucket": buckets, "day": days}).groupby(["bucket", "day"]).indices
        for (bucket, day), index in groups.items():
            packed = pack(rows.iloc[index].reset_index(drop=True))
            tally.shuffle_bytes += len(packed)
            yield int(bucket), (f.log, day, packed)
        yield TaggedOutput(STATS, tally)


class JoinBucket(beam.DoFn):
    """(bucket, pieces) -> ((day, shard), examples) pieces; the join's and orphans' dead letters written;
    a Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[int, list[tuple[str, str, bytes]]], plan: Plan):
        if plan.error:
            return
        bucket, pieces = element
        job, schema = self._job, self._job.schema
        by_log: dict[str, list[pd.DataFrame]] = defaultdict(list)
        by_day: dict[tuple[str, str], list[pd.DataFrame]] = defaultdict(list)
        for log, day, rows in pieces:
            (by_day[log, day] if log in AD_LOGS else by_log[log]).append(unpack(rows))
        tally = Tally(largest=Counter(bucket_rows=sum(len(r) for rows in (*by_log.values(), *by_day.values())
                                                      for r in rows)))
        # Pieces arrive in any order: sort events by source so dead letters come out in one order.
        events = {log: pd.concat([empty_events(schema, log), *by_log[log]], ignore_index=True)
                  .sort_values(ORDER, kind="stable", ignore_index=True) for log in schema.event_logs}
        dead: list[dict] = []
        claimed = [np.zeros(0, np.int64)]
        for day in sorted({day for _, day in by_day}):
            parts = []
            if by_day["impressions", day]:
                imps = pd.concat(by_day["impressions", day], ignore_index=True)
                joined = join_impressions(imps, events["clicks"], events.get("conversions"), schema, job.paths)
                parts.append(joined.examples)
                dead += joined.dead
                claimed.append(joined.claimed)
            for log, make in (("feed", feed_examples), (TABLE, table_examples)):
                if by_day[log, day]:
                    examples, more_dead = make(pd.concat(by_day[log, day], ignore_index=True), schema, job.paths)
                    parts.append(examples)
                    dead += more_dead
            examples = add_derived(pd.concat(parts, ignore_index=True), schema, day)
            if schema.history:
                yield from by_user_day(examples, job, tally)
            else:
                yield from by_shard(examples, day, plan, schema, tally)
        if schema.event_logs:
            dead += orphans(events, np.concatenate(claimed), job.paths)
        count_by_log(dead, tally)
        write_dead_letters(job.out, f"join-{bucket:05d}", dead, tally)
        yield TaggedOutput(STATS, tally)


def by_shard(examples: pd.DataFrame, day: str, plan: Plan, schema, tally: Tally):
    """One day's examples -> ((output unit, shard), packed examples) pieces; their bytes counted in ``tally``."""
    split = plan.split_of(day, examples[schema.timestamp].to_numpy())
    shard_of = bucket_of(shard_keys(examples, schema), plan.shards[day])
    for (name, shard), index in pd.DataFrame({"s": split, "k": shard_of}).groupby(["s", "k"]).indices.items():
        packed = pack(examples.iloc[index].reset_index(drop=True))
        tally.shuffle_bytes += len(packed)
        yield (plan.unit(day, name), int(shard)), packed


def by_user_day(examples: pd.DataFrame, job: Job, tally: Tally):
    """Examples -> ((user bucket, UTC day number of their time), packed) pieces, and (tagged ``EVENTS``) their
    history events (``event_records``) keyed the same way by the events' own time."""
    user, ts = job.schema.user_key, job.schema.timestamp
    yield from _by_user_day(examples, examples[user], examples[ts], job.key_buckets, tally)
    events = event_records(examples, job.schema)
    for item in _by_user_day(events, events[USER], events[TS], job.key_buckets, tally):
        yield TaggedOutput(EVENTS, item)


def _by_user_day(frame: pd.DataFrame, users: pd.Series, ts: pd.Series, buckets: int, tally: Tally):
    keys = pd.DataFrame({"b": bucket_of(users, buckets), "d": utc_day_numbers(ts.to_numpy())})
    for (bucket, day), index in keys.groupby(["b", "d"]).indices.items():
        packed = pack(frame.iloc[index].reset_index(drop=True))
        tally.shuffle_bytes += len(packed)
        yield (int(bucket), int(day)), packed


class RouteEvents(beam.DoFn):
    """((user bucket, day), event pieces) -> the day's events to that day's group, and each user's last N events
    of the day (``last_events``) to the groups of the later days a history window can reach."""

    def __init__(self, job: Job) -> None:
        self._job = job
        windows = [h.window_s for h in job.schema.history.values()]
        self._reach = None if None in windows else max(windows) // DAY_S + 1  # days after a day a window can see

    def process(self, element: tuple[tuple[int, int], list[bytes]], plan: Plan):
        (bucket, day), pieces = element
        events = pd.concat([unpack(p) for p in pieces], ignore_index=True)
        yield (bucket, day), pack(events)
        tail = pack(last_events(events, self._job.schema))
        reach = self._reach
        for later in plan_day_numbers(plan):
            if later > day and (reach is None or later - day <= reach):
                yield (bucket, later), tail


class HistoryGroup(beam.DoFn):
    """((user bucket, day), {examples, events}) -> the examples with their histories (``add_histories``), as
    ((output unit, shard), packed) pieces; a Tally with the pieces' bytes and the truncated histories."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element, plan: Plan):
        _, groups = element
        if not groups["examples"]:
            return
        schema = self._job.schema
        examples = pd.concat([unpack(p) for p in groups["examples"]], ignore_index=True)
        events = pd.concat([unpack(p) for p in groups["events"]] or [pd.DataFrame()], ignore_index=True)
        examples, truncated = add_histories(examples, events, schema)
        tally = Tally(history_truncated=truncated)
        for day, index in examples.groupby(DAY).indices.items():
            yield from by_shard(examples.iloc[index].reset_index(drop=True), day, plan, schema, tally)
        yield TaggedOutput(STATS, tally)


def plan_day_numbers(plan: Plan) -> list[int]:
    """The data's days as day numbers since the epoch."""
    return sorted(int(np.datetime64(day, "D").astype(np.int64)) for day in plan.shards)


class WriteShards(beam.DoFn):
    """((day, shard), examples pieces) -> the shard's file written; its Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[tuple[str, int], list[bytes]], plan: Plan):
        (unit, shard), pieces = element
        examples = pd.concat([unpack(p) for p in pieces], ignore_index=True)
        tally = write_shard(self._job, plan, unit, shard, examples)
        yield tally.merge(Tally(largest=Counter(shard_rows=len(examples))))


def _sum_stats(pieces) -> tuple[dict[str, float], dict[int, int]]:
    day_bytes: dict[str, float] = defaultdict(float)
    ts_counts: dict[int, int] = defaultdict(int)
    for days, stamps in pieces:
        for day, n in days.items():
            day_bytes[day] += n
        for t, n in stamps.items():
            ts_counts[t] += n
    return dict(day_bytes), dict(ts_counts)


def plan_from_stats(stats: tuple[dict[str, float], dict[int, int]], schema) -> Plan:
    """The plan from the input bytes per day and the rows per timestamp; when the rows cannot be split, a plan
    that only carries the error (no examples are written and the launcher reports it)."""
    day_bytes, ts_counts = stats
    try:
        return make_plan({day: round(n) for day, n in day_bytes.items()}, schema, ts_counts)
    except JobError as e:
        return Plan({}, {}, error=str(e))


class BuildKeyed(beam.PTransform):
    """The keyed graph applied to a pipeline root; its output is the manifest path."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job

    def expand(self, root):
        job = self._job
        read = (
            root
            | "Files" >> beam.Create(list(job.files))
            | "SpreadFiles" >> beam.Reshuffle()
            | "SplitFiles" >> beam.ParDo(SplitFile(job))
            | "SpreadPieces" >> beam.Reshuffle()
            | "ParsePieces" >> beam.ParDo(ParsePiece(job)).with_outputs(STATS, PLAN_STATS, main="pieces")
        )
        if job.plan is not None:
            plan = root | "Plan" >> beam.Create([job.plan])
        else:
            plan = (
                read[PLAN_STATS]
                | "PlanStats" >> beam.CombineGlobally(_sum_stats)
                | "PlanFromData" >> beam.Map(plan_from_stats, job.schema)
            )
        plan = beam.pvalue.AsSingleton(plan)
        joined = (
            read.pieces
            | "ByBucket" >> beam.GroupByKey()
            | "JoinBucket" >> beam.ParDo(JoinBucket(job), plan).with_outputs(STATS, EVENTS, main="examples")
        )
        tallies = [read[STATS], joined[STATS]]
        examples = joined.examples
        if job.schema.history:
            events = (
                joined[EVENTS]
                | "EventsByUserDay" >> beam.GroupByKey()
                | "RouteEvents" >> beam.ParDo(RouteEvents(job), plan)
            )
            with_history = (
                {"examples": examples, "events": events}
                | "ByUserDay" >> beam.CoGroupByKey()
                | "AddHistories" >> beam.ParDo(HistoryGroup(job), plan).with_outputs(STATS, main="examples")
            )
            tallies.append(with_history[STATS])
            examples = with_history.examples
        written = (
            examples
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShards(job), plan)
        )
        return (
            (*tallies, written)
            | "AllTallies" >> beam.Flatten()
            | "MergeTallies" >> beam.CombineGlobally(MergeTallies())
            | "Finalize" >> beam.Map(lambda tally, p: finalize(tally, job, p), plan)
        )
