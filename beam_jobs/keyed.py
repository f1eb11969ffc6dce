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

from collections import defaultdict

import apache_beam as beam
import numpy as np
import pandas as pd
from apache_beam.pvalue import TaggedOutput

from beam_jobs.files import read_line_pieces
from beam_jobs.frames import compress, decompress, pack, unpack
from beam_jobs.join import FILE, ORDER, add_derived, empty_events, feed_examples, join_impressions, orphans
from beam_jobs.options import InputFile, Job
from beam_jobs.parse import log_columns, parse_bytes
from beam_jobs.stats import Tally
from beam_jobs.steps import (
    STATS, MergeTallies, bucket_of, count, count_by_log, finalize, write_dead_letters, write_shard,
)

AD_LOGS = ("impressions", "feed")  # logs whose rows become examples of their file's day


class SplitFile(beam.DoFn):
    """An input file -> (file, piece number, first line, compressed lines) pieces of about ``piece_bytes``
    (an empty file is one empty piece). Reading is sequential; the pieces are parsed wherever the runner
    sends them."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, f: InputFile):
        number = 0
        for number, (first, data) in enumerate(read_line_pieces(f.path, self._job.piece_bytes), start=1):
            yield f, number, first, compress(data)
        if not number:
            yield f, 1, 1, compress(b"")


class ParsePiece(beam.DoFn):
    """A piece of a file -> (bucket, (log, day, rows)) pieces; its dead letters written; a Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[InputFile, int, int, bytes]):
        f, number, first, blob = element
        job = self._job
        keep_raw = f.log not in AD_LOGS  # event lines keep their text for the join's dead letters
        result = parse_bytes(decompress(blob), log_columns(job.schema, f.log), log=f.log, source=f.path,
                             keep_raw=keep_raw, first_line=first)
        tally = Tally(shuffle_bytes=len(blob))
        count(f.log, result.read, result.dead, tally)
        write_dead_letters(job.out, f"read-{f.index:05d}-{number:05d}", result.dead, tally)
        rows = result.rows
        rows[FILE] = f.index
        buckets = bucket_of(rows[job.schema.key], job.key_buckets)
        for bucket, index in pd.Series(buckets).groupby(buckets).indices.items():
            packed = pack(rows.iloc[index].reset_index(drop=True))
            tally.shuffle_bytes += len(packed)
            yield int(bucket), (f.log, f.day, packed)
        yield TaggedOutput(STATS, tally)


class JoinBucket(beam.DoFn):
    """(bucket, pieces) -> ((day, shard), examples) pieces; the join's and orphans' dead letters written;
    a Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[int, list[tuple[str, str, bytes]]]):
        bucket, pieces = element
        job, schema = self._job, self._job.schema
        by_log: dict[str, list[pd.DataFrame]] = defaultdict(list)
        by_day: dict[tuple[str, str], list[pd.DataFrame]] = defaultdict(list)
        for log, day, rows in pieces:
            (by_day[log, day] if log in AD_LOGS else by_log[log]).append(unpack(rows))
        # Pieces arrive in any order: sort events by source so dead letters come out in one order.
        events = {log: pd.concat([empty_events(schema, log), *by_log[log]], ignore_index=True)
                  .sort_values(ORDER, kind="stable", ignore_index=True) for log in schema.event_logs}
        dead: list[dict] = []
        claimed = [np.zeros(0, np.int64)]
        tally = Tally()
        for day in sorted({day for _, day in by_day}):
            parts = []
            if by_day["impressions", day]:
                imps = pd.concat(by_day["impressions", day], ignore_index=True)
                joined = join_impressions(imps, events["clicks"], events.get("conversions"), schema, job.paths)
                parts.append(joined.examples)
                dead += joined.dead
                claimed.append(joined.claimed)
            if by_day["feed", day]:
                feed = pd.concat(by_day["feed", day], ignore_index=True)
                examples, feed_dead = feed_examples(feed, schema, job.paths)
                parts.append(examples)
                dead += feed_dead
            examples = add_derived(pd.concat(parts, ignore_index=True), schema, day)
            shard_of = bucket_of(examples[schema.key], job.shards_of(day))
            for shard, index in pd.Series(shard_of).groupby(shard_of).indices.items():
                packed = pack(examples.iloc[index].reset_index(drop=True))
                tally.shuffle_bytes += len(packed)
                yield (day, int(shard)), packed
        dead += orphans(events, np.concatenate(claimed), job.paths)
        count_by_log(dead, tally)
        write_dead_letters(job.out, f"join-{bucket:05d}", dead, tally)
        yield TaggedOutput(STATS, tally)


class WriteShards(beam.DoFn):
    """((day, shard), examples pieces) -> the shard's file written; its Tally."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def process(self, element: tuple[tuple[str, int], list[bytes | None]]):
        (day, shard), pieces = element
        pieces = [unpack(p) for p in pieces if p is not None]
        yield write_shard(self._job, day, shard, pd.concat(pieces, ignore_index=True) if pieces else None)


class BuildKeyed(beam.PTransform):
    """The keyed graph applied to a pipeline root; its output is the manifest path."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self._job = job

    def expand(self, root):
        job = self._job
        days = sorted(day for days in job.splits.values() for day in days)
        read = (
            root
            | "Files" >> beam.Create(list(job.files))
            | "SpreadFiles" >> beam.Reshuffle()
            | "SplitFiles" >> beam.ParDo(SplitFile(job))
            | "SpreadPieces" >> beam.Reshuffle()
            | "ParsePieces" >> beam.ParDo(ParsePiece(job)).with_outputs(STATS, main="pieces")
        )
        joined = (
            read.pieces
            | "ByBucket" >> beam.GroupByKey()
            | "JoinBucket" >> beam.ParDo(JoinBucket(job)).with_outputs(STATS, main="examples")
        )
        shard_keys = [((day, s), None) for day in days for s in range(job.shards_of(day))]
        every_shard = root | "EveryShard" >> beam.Create(shard_keys)
        written = (
            (joined.examples, every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShards(job))
        )
        return (
            (read[STATS], joined[STATS], written)
            | "AllTallies" >> beam.Flatten()
            | "MergeTallies" >> beam.CombineGlobally(MergeTallies())
            | "Finalize" >> beam.Map(finalize, job)
        )
