"""The per-day graph: one unit of work per impression day, no shuffle of impressions (the fast path
for inputs whose days fit in a worker's memory; docs/decisions/0028-keyed-build-graph.md).

- the click and conversion logs are parsed once and broadcast to every day as a side input;
- each day parses its impression (and feed) files, joins and labels them, and writes the day's shards;
- click and conversion lines no day claimed are orphans (a final global step).
Days are spread over the workers by a GroupByKey on their index (the runner deals keys round-robin), so
parallelism is the number of days and a worker holds a whole day.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.pvalue import TaggedOutput

from beam_jobs.files import read_bytes
from beam_jobs.join import FILE, add_derived, empty_events, feed_examples, join_impressions, orphans
from beam_jobs.options import InputFile, Job
from beam_jobs.parse import ParseResult, log_columns, parse_bytes
from beam_jobs.stats import Tally
from beam_jobs.steps import (
    STATS, MergeTallies, bucket_of, count, count_by_log, finalize, write_dead_letters, write_shard,
)
from tfads.core.schema import Schema


def _parse_file(f: InputFile, schema: Schema, *, keep_raw: bool) -> ParseResult:
    result = parse_bytes(read_bytes(f.path), log_columns(schema, f.log), log=f.log, source=f.path, keep_raw=keep_raw)
    result.rows[FILE] = f.index
    return result


def _part(n: int) -> str:
    return f"part-{n:05d}"


class ParseEvents(beam.DoFn):
    """(dead-letter part, click or conversion file) -> (log, parsed rows); its dead letters written; a Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[int, InputFile]):
        part, f = element
        result = _parse_file(f, self._job.schema, keep_raw=True)
        tally = Tally()
        count(f.log, result.read, result.dead, tally)
        write_dead_letters(self._job.out, _part(part), result.dead, tally)
        yield TaggedOutput(STATS, tally)
        yield f.log, result.rows


class EventTables(beam.CombineFn):
    """(log, rows) pieces -> {log: all rows of that log} (the side input every unit joins against)."""

    def __init__(self, schema: Schema) -> None:
        self._schema = schema

    def create_accumulator(self) -> dict[str, list[pd.DataFrame]]:
        return {log: [] for log in self._schema.event_logs}

    def add_input(self, acc, piece):
        acc[piece[0]].append(piece[1])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for log, pieces in acc.items():
                out[log] += pieces
        return out

    def extract_output(self, acc) -> dict[str, pd.DataFrame]:
        return {log: pd.concat([empty_events(self._schema, log), *pieces], ignore_index=True)
                for log, pieces in acc.items()}


class JoinDay(beam.DoFn):
    """(dead-letter part, day) -> the day's example shards and dead letters written; claimed click/conversion
    ids and a Tally out."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def _day_rows(self, log: str, day: str, tally: Tally, dead: list[dict]) -> pd.DataFrame:
        """All valid rows of ``log`` on ``day``; its bad lines are added to ``dead``."""
        pieces = [empty_events(self._job.schema, log)]
        for f in self._job.day_files(log, day):
            result = _parse_file(f, self._job.schema, keep_raw=False)
            count(log, result.read, result.dead, tally)
            dead += result.dead
            pieces.append(result.rows)
        return pd.concat(pieces, ignore_index=True)

    def process(self, element: tuple[int, str], events: dict[str, pd.DataFrame]):
        part, day = element
        job, schema = self._job, self._job.schema
        tally, dead = Tally(), []
        imps = self._day_rows("impressions", day, tally, dead)
        joined = join_impressions(imps, events["clicks"], events.get("conversions"), schema, job.paths)
        parts, join_dead = [joined.examples], list(joined.dead)
        if job.cold_start:
            examples, feed_dead = feed_examples(self._day_rows("feed", day, tally, dead), schema, job.paths)
            parts.append(examples)
            join_dead += feed_dead
        count_by_log(join_dead, tally)
        examples = add_derived(pd.concat(parts, ignore_index=True), schema, day)
        shards = job.plan.shards[day]
        shard_of = bucket_of(examples[schema.key], shards)
        for shard in range(shards):
            tally.merge(write_shard(job, job.plan, day, shard, examples[shard_of == shard]))
        write_dead_letters(job.out, _part(part), dead + join_dead, tally)
        yield TaggedOutput(STATS, tally)
        yield joined.claimed


class Orphans(beam.DoFn):
    """All claimed event ids -> orphan dead letters written (as dead-letter ``part``); their Tally out."""

    def __init__(self, job: Job, part: int) -> None:
        self._job, self._part = job, part

    def process(self, claimed: np.ndarray, events: dict[str, pd.DataFrame]):
        dead = orphans(events, claimed, self._job.paths)
        tally = Tally()
        for log in self._job.schema.event_logs:
            count(log, 0, [d for d in dead if d["log"] == log], tally)
        write_dead_letters(self._job.out, _part(self._part), dead, tally)
        yield tally


class BuildPerDay(beam.PTransform):
    """The per-day graph applied to a pipeline root; its output is the manifest path."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job

    def expand(self, root):
        job = self._job
        days = job.plan.days
        event_files = [f for f in job.files if f.log in job.schema.event_logs]
        # Dead-letter parts: one per day, one per click/conversion file, one for the orphans.
        parsed = (
            root
            | "EventFiles" >> beam.Create([(len(days) + i, f) for i, f in enumerate(event_files)])
            | "ParseEvents" >> beam.ParDo(ParseEvents(job)).with_outputs(STATS, main="rows")
        )
        events = beam.pvalue.AsSingleton(parsed.rows | "EventTables" >> beam.CombineGlobally(EventTables(job.schema)))
        joined = (
            root
            | "Days" >> beam.Create(list(enumerate(days)))
            | "SpreadDays" >> beam.GroupByKey()
            | "OneDay" >> beam.FlatMap(lambda kv: [(kv[0], day) for day in kv[1]])
            | "JoinLabelWrite" >> beam.ParDo(JoinDay(job), events).with_outputs(STATS, main="claimed")
        )
        lost = (
            joined.claimed
            | "AllClaimed" >> beam.CombineGlobally(lambda ids: np.concatenate([np.zeros(0, np.int64), *ids]))
            | "Orphans" >> beam.ParDo(Orphans(job, len(days) + len(event_files)), events)
        )
        return (
            (parsed[STATS], joined[STATS], lost)
            | "AllTallies" >> beam.Flatten()
            | "MergeTallies" >> beam.CombineGlobally(MergeTallies())
            | "Finalize" >> beam.Map(finalize, job, job.plan)
        )
