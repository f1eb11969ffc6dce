"""The Beam graph: one unit of work per impression day, no shuffle of impressions.

- the small click and conversion logs are parsed once and broadcast to every day as a side input;
- each day parses its impression (and feed) files, joins and labels them, and writes the day's shards
  (an example's shard is a stable hash of its trace_id); impressions never travel through the runner;
- click and conversion lines no day claimed are orphans (a final global step).
Days are spread over the workers by a GroupByKey on their index (the runner deals keys round-robin), so
parallelism is the number of days.
"""

from __future__ import annotations

from collections import defaultdict

import gzip

import apache_beam as beam
import numpy as np
import orjson
import pandas as pd
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from beam_jobs.examples import encode_examples, write_tfrecord_gz
from beam_jobs.files import read_bytes, write_bytes
from beam_jobs.join import DAY, FILE, ORDER, add_derived, empty_events, feed_examples, join_impressions, orphans
from beam_jobs.manifest import POSTERIOR_PATH, build_manifest, vocab_path
from beam_jobs.options import InputFile, Job
from beam_jobs.parse import ParseResult, log_columns, parse_bytes
from beam_jobs.posterior import posterior_table
from beam_jobs.stats import Tally, posterior_fields, tally_examples
from beam_jobs.vocab import left_out, vocab_text, vocabulary
from tfads.core.schema import DerivedField, Schema

STATS = "stats"
_KIND = {"string": "bytes", "int": "int64", "float": "float"}


def example_spec(schema: Schema) -> list[tuple[str, str]]:
    """(column, tf.train.Feature kind) of every Example: raw fields, derived features, labels, weight, source."""
    spec = [(n, _KIND[f.type]) for n, f in schema.fields.items()]
    spec += [(n, "bytes") for n, f in schema.features.items() if isinstance(f, DerivedField)]
    spec += [(label, "int64") for label in schema.labels.columns]
    return spec + [(schema.weight_feature, "float"), (schema.source_feature, "bytes")]


def bucket_of(trace_ids: pd.Series, buckets: int) -> np.ndarray:
    """Stable (process-independent) bucket of each trace_id."""
    return (pd.util.hash_array(trace_ids.to_numpy(dtype=object)) % np.uint64(buckets)).astype(np.int64)


def _count(log: str, read: int, dead: list[dict], tally: Tally) -> None:
    """Add to ``tally`` and to the Beam counters ``tfads_build:<log>_read`` / ``<log>_<reason>``."""
    tally.count_input(log, read, dead)
    if read:
        Metrics.counter("tfads_build", f"{log}_read").inc(read)
    for reason, n in pd.Series([d["reason"] for d in dead], dtype=object).value_counts().items():
        Metrics.counter("tfads_build", f"{log}_{reason}").inc(int(n))


def _write_dead_letters(out: str, part: int, records: list[dict], tally: Tally) -> None:
    """Write ``records`` as ``deadletter/part-<part>.jsonl.gz`` (nothing when empty) and note the file."""
    if records:
        path = f"{out}/deadletter/part-{part:05d}.jsonl.gz"
        write_bytes(path, gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records), 3, mtime=0))
        tally.dead_files.append(path)


def _parse_file(f: InputFile, schema: Schema, *, keep_raw: bool) -> ParseResult:
    result = parse_bytes(read_bytes(f.path), log_columns(schema, f.log), log=f.log, source=f.path, keep_raw=keep_raw)
    result.rows[FILE] = f.index
    return result


class ParseEvents(beam.DoFn):
    """(dead-letter part, click or conversion file) -> (log, parsed rows); its dead letters written; a Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[int, InputFile]):
        part, f = element
        result = _parse_file(f, self._job.schema, keep_raw=True)
        tally = Tally()
        _count(f.log, result.read, result.dead, tally)
        _write_dead_letters(self._job.out, part, result.dead, tally)
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
        self._shards = job.schema.splits.shards_per_day

    def _day_rows(self, log: str, day: str, tally: Tally, dead: list[dict]) -> pd.DataFrame:
        """All valid rows of ``log`` on ``day``; its bad lines are added to ``dead``."""
        pieces = [empty_events(self._job.schema, log)]
        for f in self._job.day_files(log, day):
            result = _parse_file(f, self._job.schema, keep_raw=False)
            _count(log, result.read, result.dead, tally)
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
        by_log: dict[str, list[dict]] = defaultdict(list)
        for record in join_dead:
            by_log[record["log"]].append(record)
        for log, records in by_log.items():
            _count(log, 0, records, tally)
        examples = add_derived(pd.concat(parts, ignore_index=True), schema, day)
        examples = examples.sort_values([schema.timestamp, *ORDER], kind="stable")
        shard_of = bucket_of(examples[schema.key], self._shards)
        tally.files[day] = []
        for shard in range(self._shards):
            path = f"{job.out}/examples/{day}/part-{shard:05d}-of-{self._shards:05d}.tfrecord.gz"
            write_tfrecord_gz(path, encode_examples(examples[shard_of == shard], example_spec(schema)))
            tally.files[day].append(path)
        tally.merge(tally_examples(examples, schema, DAY, set(job.splits["train"]), unit=day))
        _write_dead_letters(job.out, part, dead + join_dead, tally)
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
            _count(log, 0, [d for d in dead if d["log"] == log], tally)
        _write_dead_letters(self._job.out, self._part, dead, tally)
        yield tally


class MergeTallies(beam.CombineFn):
    """Sum Tally objects."""

    def create_accumulator(self) -> Tally:
        return Tally()

    def add_input(self, acc: Tally, tally: Tally) -> Tally:
        return acc.merge(tally)

    def merge_accumulators(self, accs) -> Tally:
        out = Tally()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: Tally) -> Tally:
        return acc


def finalize(tally: Tally, job: Job) -> str:
    """Write vocabularies, posterior statistics and manifest.json; return the manifest path."""
    schema, out = job.schema, job.out
    vocab_sizes, oov = {}, {}
    for name in schema.vocab_features:
        counts = tally.values[name]["impressions"] if name in tally.values else pd.Series(dtype=np.int64)
        values = vocabulary(counts, min_count=schema.vocab.min_count, top_k=schema.vocab.top_k)
        write_bytes(f"{out}/{vocab_path(name)}", vocab_text(values))
        vocab_sizes[name] = len(values)
        oov[name] = left_out(counts, values, min_count=schema.vocab.min_count)
    tables, priors = [], {}
    for name in posterior_fields(schema):
        table, priors[name] = posterior_table(name, tally.values[name])
        tables.append(table)
    lines = pd.concat(tables, ignore_index=True).to_dict("records") if tables else []
    write_bytes(f"{out}/{POSTERIOR_PATH}", b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                                   for r in lines))
    manifest = build_manifest(
        schema=schema, schema_mapping=job.schema_mapping, tally=tally, splits=job.splits, out=out,
        vocab_sizes=vocab_sizes, oov=oov, priors=priors,
    )
    path = f"{out}/manifest.json"
    write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return path


class BuildExamples(beam.PTransform):
    """The whole job as one composite transform applied to a pipeline root."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job

    def expand(self, root):
        job = self._job
        days = sorted(day for days in job.splits.values() for day in days)
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
            | "Finalize" >> beam.Map(finalize, job)
        )
