"""Pieces both build graphs share: the Example layout, counting and dead-letter files, writing one
(day, shard) file with its statistics, summing the tallies and writing the vocabularies and manifest."""

from __future__ import annotations

from collections import Counter

import gzip

import apache_beam as beam
import numpy as np
import orjson
import pandas as pd
from apache_beam.metrics import Metrics

from beam_jobs.examples import encode_examples, write_tfrecord_gz
from beam_jobs.files import write_bytes
from beam_jobs.join import ORDER, event_ids
from beam_jobs.manifest import POSTERIOR_PATH, build_manifest, vocab_path
from beam_jobs.options import Job, Plan
from beam_jobs.posterior import posterior_table
from beam_jobs.stats import Tally, posterior_fields, tally_examples
from beam_jobs.vocab import left_out, vocab_text, vocabulary
from tfads.core.schema import DerivedField, Schema

STATS = "stats"
ERROR_PATH = "build_error.txt"  # written instead of the manifest when the job finds a mistake only the data shows
_KIND = {"string": "bytes", "int": "int64", "float": "float"}


def example_spec(schema: Schema) -> list[tuple[str, str]]:
    """(column, tf.train.Feature kind) of every Example: raw fields, derived features, labels, histories (lists),
    weight, source."""
    spec = [(n, _KIND[f.type] + ("[]" if f.multi else "")) for n, f in schema.fields.items()]
    spec += [(n, "bytes") for n, f in schema.features.items() if isinstance(f, DerivedField)]
    spec += [(label, "int64") for label in schema.labels.columns]
    spec += [(n, _KIND[schema.fields[h.field].type] + "[]") for n, h in schema.history.items()]
    return spec + [(schema.weight_feature, "float"), (schema.source_feature, "bytes")]


def bucket_of(keys: pd.Series, buckets: int) -> np.ndarray:
    """Stable (process-independent) bucket of each key."""
    return (pd.util.hash_array(keys.to_numpy(dtype=object)) % np.uint64(buckets)).astype(np.int64)


def count(log: str, read: int, dead: list[dict], tally: Tally) -> None:
    """Add to ``tally`` and to the Beam counters ``tfads_build:<log>_read`` / ``<log>_<reason>``."""
    tally.count_input(log, read, dead)
    if read:
        Metrics.counter("tfads_build", f"{log}_read").inc(read)
    for reason, n in pd.Series([d["reason"] for d in dead], dtype=object).value_counts().items():
        Metrics.counter("tfads_build", f"{log}_{reason}").inc(int(n))


def count_by_log(records: list[dict], tally: Tally) -> None:
    """Count dead letters made after parsing (by the join), each under its own log."""
    for log in sorted({r["log"] for r in records}):
        count(log, 0, [r for r in records if r["log"] == log], tally)


def write_dead_letters(out: str, name: str, records: list[dict], tally: Tally) -> None:
    """Write ``records`` as ``deadletter/<name>.jsonl.gz`` (nothing when empty) and note the file."""
    if records:
        path = f"{out}/deadletter/{name}.jsonl.gz"
        write_bytes(path, gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records), 3, mtime=0))
        tally.dead_files.append(path)


def shard_path(out: str, unit: str, shard: int, shards: int) -> str:
    """The example file of (output unit, shard): ``examples/<day>/`` or (split by time) ``examples/<day>/<split>/``."""
    return f"{out}/examples/{unit}/part-{shard:05d}-of-{shards:05d}.tfrecord.gz"


def write_shard(job: Job, plan: Plan, unit: str, shard: int, examples: pd.DataFrame) -> Tally:
    """Sort one (output unit, shard)'s examples by time (ties by source file and line), write them and return
    their counts and train statistics. The statistics' unit is the shard, so sums do not depend on which
    worker joined which rows."""
    day, split = plan.unit_split(unit)
    path = shard_path(job.out, unit, shard, plan.shards[day])
    tally = Tally(files={unit: [path]})
    if not len(examples):
        write_tfrecord_gz(path, [])
        return tally
    examples = examples.sort_values([job.schema.timestamp, *ORDER], kind="stable")
    examples, cut = truncate_lists(examples, job.schema)
    tally.multi_truncated.update(cut)
    write_tfrecord_gz(path, encode_examples(examples, example_spec(job.schema)))
    return tally.merge(tally_examples(examples, job.schema, unit, split == "train", unit=f"{unit}/{shard:05d}"))


def truncate_lists(examples: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, Counter]:
    """Multi-valued fields cut to their ``max_len`` (the first values kept), and the rows cut per field."""
    cut: Counter = Counter()
    for name, f in schema.multi_valued.items():
        long = np.fromiter((len(v) for v in examples[name]), dtype=np.int64, count=len(examples)) > f.max_len
        if long.any():
            examples = examples.assign(**{name: [v[: f.max_len] for v in examples[name]]})
            cut[name] = int(long.sum())
    return examples, cut


def shard_keys(examples: pd.DataFrame, schema: Schema) -> pd.Series:
    """What an example's shard is a hash of: its key, or (without a key) its source file and line."""
    if schema.key is not None:
        return examples[schema.key]
    return pd.Series(event_ids(examples))


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


def build_block(job: Job, tally: Tally) -> dict:
    """How the job ran (the manifest's ``build``): the graph and, for the keyed graph, its sizing, the bytes it
    shuffled and the rows of its largest piece, bucket and shard (what a worker holds at a time)."""
    if job.graph != "keyed":
        return {"graph": job.graph}
    return {"graph": job.graph, "key_buckets": job.key_buckets, "piece_bytes": job.piece_bytes,
            "shuffle_bytes": tally.shuffle_bytes, "largest": dict(sorted(tally.largest.items()))}


def finalize(tally: Tally, job: Job, plan: Plan) -> str:
    """Write the shards no example reached (empty), vocabularies, posterior statistics and manifest.json;
    return the manifest path."""
    schema, out = job.schema, job.out
    if plan.error:
        write_bytes(f"{out}/{ERROR_PATH}", plan.error.encode())
        return f"{out}/{ERROR_PATH}"
    for unit in sorted(set(plan.units()) | set(tally.files)):
        shards = plan.shards[plan.unit_split(unit)[0]]
        for shard in range(shards):
            if shard_path(out, unit, shard, shards) not in tally.files.get(unit, []):
                tally.merge(write_shard(job, plan, unit, shard, pd.DataFrame()))
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
        schema=schema, schema_mapping=job.schema_mapping, tally=tally, plan=plan, out=out,
        vocab_sizes=vocab_sizes, oov=oov, priors=priors, build=build_block(job, tally),
    )
    path = f"{out}/manifest.json"
    write_bytes(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return path


