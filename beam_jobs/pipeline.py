"""The Beam graph: files -> parse/validate -> bucket by trace_id -> join, label, write shards -> finalize.

Work is batched so DirectRunner keeps up: one element per input file, one element per (bucket, file)
slice of parsed rows, one GroupByKey over the buckets; dead letters and counts are the only
per-record outputs. Bucket ``b`` of the join writes shard ``b`` of every day it holds.
"""

from __future__ import annotations

from collections import defaultdict

import apache_beam as beam
import numpy as np
import orjson
import pandas as pd
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from beam_jobs.examples import encode_examples, write_tfrecord_gz
from beam_jobs.files import read_bytes, write_bytes
from beam_jobs.join import DAY, FILE, ORDER, join_bucket
from beam_jobs.manifest import POSTERIOR_PATH, build_manifest, vocab_path
from beam_jobs.options import Job
from beam_jobs.parse import log_columns, parse_lines, split_lines
from beam_jobs.posterior import posterior_table
from beam_jobs.stats import Tally, posterior_fields, tally_examples
from beam_jobs.vocab import vocab_text, vocabulary
from tfads.configtools import read_yaml
from tfads.schema import DerivedField, Schema

DEAD, STATS = "deadletter", "stats"
RAW_LOGS = ("clicks", "conversions")  # logs whose raw lines travel to the join (for dead letters)
_KIND = {"string": "bytes", "int": "int64", "float": "float"}


def example_spec(schema: Schema) -> list[tuple[str, str]]:
    """(column, tf.train.Feature kind) of every Example: raw fields, derived features, labels, weight, source."""
    spec = [(n, _KIND[f.type]) for n, f in schema.fields.items()]
    spec += [(n, "bytes") for n, f in schema.features.items() if isinstance(f, DerivedField)]
    spec += [(label, "int64") for label in schema.labels]
    return spec + [(schema.weight_feature, "float"), (schema.source_feature, "bytes")]


def bucket_of(trace_ids: pd.Series, buckets: int) -> np.ndarray:
    """Stable (process-independent) bucket of each trace_id."""
    return (pd.util.hash_array(trace_ids.to_numpy(dtype=object)) % np.uint64(buckets)).astype(np.int64)


def _count(log: str, dead: list[dict], read: int = 0) -> None:
    if read:
        Metrics.counter("tfads_build", f"{log}_read").inc(read)
    for reason, n in pd.Series([d["reason"] for d in dead], dtype=object).value_counts().items():
        Metrics.counter("tfads_build", f"{log}_{reason}").inc(int(n))


class ParseFile(beam.DoFn):
    """One input file -> (bucket, (log, rows)) slices, dead-letter records and a Tally."""

    def __init__(self, schema: Schema, buckets: int) -> None:
        self._schema, self._buckets = schema, buckets

    def process(self, element: tuple[int, str, str]):
        index, log, path = element
        lines = split_lines(read_bytes(path))
        result = parse_lines(lines, log_columns(self._schema, log), log=log, source=path, keep_raw=log in RAW_LOGS)
        _count(log, result.dead, result.read)
        tally = Tally()
        tally.count_input(log, result.read, result.dead)
        yield TaggedOutput(STATS, tally)
        for record in result.dead:
            yield TaggedOutput(DEAD, record)
        rows = result.rows
        rows[FILE] = index
        buckets = bucket_of(rows[self._schema.key], self._buckets)
        for b in np.unique(buckets):
            yield int(b), (log, rows[buckets == b])


class JoinBucket(beam.DoFn):
    """One bucket's events -> labelled examples written as shard ``bucket`` of each day, dead letters, a Tally."""

    def __init__(self, job: Job, buckets: int) -> None:
        self._job, self._buckets = job, buckets

    def process(self, element: tuple[int, list[tuple[str, pd.DataFrame]]]):
        bucket, parts = element
        job, schema = self._job, self._job.schema
        by_log: dict[str, list[pd.DataFrame]] = defaultdict(list)
        for log, rows in parts:
            by_log[log].append(rows)
        frames = {log: pd.concat(rows, ignore_index=True) for log, rows in by_log.items()}
        joined = join_bucket(frames, schema, [f.path for f in job.files], cold_start=job.cold_start)
        tally = tally_examples(joined.examples, schema, DAY, set(job.splits["train"]))
        dead_by_log: dict[str, list[dict]] = defaultdict(list)
        for record in joined.dead:
            dead_by_log[record["log"]].append(record)
        for log, dead in dead_by_log.items():
            _count(log, dead)
            tally.count_input(log, 0, dead)
        spec = example_spec(schema)
        for day, rows in joined.examples.groupby(DAY, sort=True):
            rows = rows.sort_values([schema.timestamp, *ORDER], kind="stable")
            path = f"{job.out}/examples/{day}/part-{bucket:05d}-of-{self._buckets:05d}.tfrecord.gz"
            write_tfrecord_gz(path, encode_examples(rows, spec))
            tally.files[day] = [path]
        yield TaggedOutput(STATS, tally)
        for record in joined.dead:
            yield TaggedOutput(DEAD, record)


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


def finalize(tally: Tally, dead_letter_files: list[str], job: Job) -> str:
    """Write vocabularies, posterior statistics and manifest.json; return the manifest path."""
    schema, out = job.schema, job.out
    vocab_sizes = {}
    for name in schema.vocab_features:
        counts = tally.values[name]["impressions"] if name in tally.values else pd.Series(dtype=np.int64)
        values = vocabulary(counts, min_count=schema.vocab.min_count, top_k=schema.vocab.top_k)
        write_bytes(f"{out}/{vocab_path(name)}", vocab_text(values))
        vocab_sizes[name] = len(values)
    tables, priors = [], {}
    for name in posterior_fields(schema):
        table, priors[name] = posterior_table(name, tally.values[name])
        tables.append(table)
    lines = pd.concat(tables, ignore_index=True).to_dict("records") if tables else []
    write_bytes(f"{out}/{POSTERIOR_PATH}", b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                                   for r in lines))
    manifest = build_manifest(
        schema=schema, schema_mapping=read_yaml(job.schema_path), tally=tally, splits=job.splits, out=out,
        vocab_sizes=vocab_sizes, priors=priors, dead_letter_files=dead_letter_files,
    )
    path = f"{out}/manifest.json"
    write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return path


class BuildExamples(beam.PTransform):
    """The whole job as one composite transform applied to a pipeline root."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job
        self._buckets = job.schema.splits.shards_per_day

    def expand(self, root):
        job = self._job
        # Largest files first: the runner hands keys to workers round-robin in this order.
        files = sorted(job.files, key=lambda f: (f.log != "impressions", f.log != "feed", f.index))
        parsed = (
            root
            | "ListInputs" >> beam.Create([(f.index, (f.index, f.log, f.path)) for f in files])
            | "SpreadFiles" >> beam.GroupByKey()
            | "OneFile" >> beam.FlatMap(lambda kv: kv[1])
            | "ParseValidate" >> beam.ParDo(ParseFile(job.schema, self._buckets)).with_outputs(DEAD, STATS, main="rows")
        )
        joined = (
            parsed.rows
            | "GroupByBucket" >> beam.GroupByKey()
            | "JoinLabelWrite" >> beam.ParDo(JoinBucket(job, self._buckets)).with_outputs(DEAD, STATS)
        )
        dead_files = (
            (parsed[DEAD], joined[DEAD])
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetterJson" >> beam.Map(lambda r: orjson.dumps(r).decode())
            | "WriteDeadLetters" >> beam.io.WriteToText(
                f"{job.out}/deadletter/part", file_name_suffix=".jsonl.gz", shard_name_template="-SSSSS", num_shards=1
            )
        )
        return (
            (parsed[STATS], joined[STATS])
            | "AllTallies" >> beam.Flatten()
            | "MergeTallies" >> beam.CombineGlobally(MergeTallies())
            | "Finalize" >> beam.Map(finalize, beam.pvalue.AsList(dead_files), job)
        )
