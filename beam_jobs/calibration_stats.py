"""Beam job: score the calib split with the frozen base model and write AdaCalib posterior statistics.

    python -m beam_jobs.calibration_stats --model SAVEDMODEL --data MANIFEST --out OUT \
        [--fields scenario advertiser_id] [--bin-counts 4 8 16 32] [--min-per-bin 50] [Beam flags]

Writes ``OUT/calibration_stats_ctr.json`` (all calib rows) and ``OUT/calibration_stats_cvr.json``
(clicked rows, label = conversion); format in docs/methods/calibration.md "AdaCalib".
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.tfrecordio import ReadAllFromTFRecord
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.files import write_bytes
from tfads.calibration.stats import compute_calibration_stats
from tfads.core.configtools import ConfigError
from tfads.core.manifest import Manifest, load_manifest
from tfads.core.names import CONVERSION, CTR, CVR, HEAD_LABELS, RAW_SUFFIX

SIGNATURE = "predict_examples"
MALFORMED = "malformed"
_DTYPES = ("string", "int64", "float32")


class ScoreExamples(beam.DoFn):
    """Scores batches of serialized tf.Examples with the SavedModel (loaded once per worker in ``setup``)
    and emits columns: each calibrated head's raw prediction (``ctr``, and ``cvr`` for ESMM), the labels
    by role (``click``, ``conversion``) and the field values as strings. A batch that fails is retried row
    by row; rows that still fail go to the ``malformed`` output and are counted."""

    def __init__(self, model: str, fields: dict[str, str], labels: dict[str, str]) -> None:
        self.model, self.fields, self.labels = model, fields, labels
        self.scored = Metrics.counter("calibration_stats", "scored")
        self.malformed = Metrics.counter("calibration_stats", "malformed")

    def setup(self) -> None:
        import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
        import tensorflow as tf

        self._tf = tf
        self._score = tf.saved_model.load(self.model).signatures[SIGNATURE]
        dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
        self._spec = {f: tf.io.FixedLenFeature([], dtypes[d]) for f, d in self.fields.items()}
        self._spec.update({column: tf.io.FixedLenFeature([], tf.int64) for column in self.labels.values()})

    def _columns(self, batch: list[bytes]) -> dict[str, np.ndarray]:
        examples = self._tf.constant(batch)
        out = self._score(examples=examples)
        parsed = self._tf.io.parse_example(examples, self._spec)
        heads = [CTR, CVR] if CONVERSION in self.labels else [CTR]
        cols = {head: out[head + RAW_SUFFIX].numpy().reshape(-1).astype(np.float64) for head in heads}
        for role, column in self.labels.items():
            cols[role] = parsed[column].numpy().astype(np.float64)
        for f in self.fields:
            v = parsed[f].numpy()
            cols[f] = np.array([x.decode() for x in v]) if v.dtype == object else v.astype(str)
        return cols

    def process(self, batch: list[bytes]) -> Iterator[Any]:
        try:
            cols = self._columns(batch)
        except (self._tf.errors.InvalidArgumentError, KeyError, ValueError):
            if len(batch) == 1:
                self.malformed.inc()
                yield beam.pvalue.TaggedOutput(MALFORMED, batch[0])
            else:
                for record in batch:
                    yield from self.process([record])
            return
        self.scored.inc(len(batch))
        yield cols


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not batches:
        raise ValueError("calibration_stats: no calib rows could be scored")
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def write_stats(batches: list[dict[str, np.ndarray]], out: str, fields: Sequence[str],
                options: dict[str, Any]) -> list[str]:
    """Compute the CTR (all rows) and CVR (clicked rows) statistics and write them under ``out``."""
    cols = _concat(batches)
    paths = []
    for task in (CTR, CVR):
        if task not in cols:
            continue  # click-only data: no CVR head
        label, only = HEAD_LABELS[task]
        rows = cols[only] > 0 if only else np.ones(len(cols[label]), bool)
        if not np.any(rows):
            continue  # no clicks: no CVR statistics
        stats = compute_calibration_stats(cols[task][rows], cols[label][rows],
                                          {f: cols[f][rows] for f in fields}, task=task, **options)
        path = f"{out.rstrip('/')}/calibration_stats_{task}.json"
        write_bytes(path, stats.to_json().encode())
        paths.append(path)
    return paths


class CalibrationStats(beam.PTransform):
    """calib TFRecord paths -> written statistics file paths (exact quantiles need a value's rows
    together; the calib split is a day, so one combine step holds its columns)."""

    def __init__(self, model: str, fields: dict[str, str], labels: dict[str, str], out: str, *, batch_size: int,
                 stats_options: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.fields, self.labels, self.out = model, fields, labels, out
        self.batch_size, self.stats_options = batch_size, stats_options

    def expand(self, files: beam.PCollection) -> beam.PCollection:
        records = files | "ReadCalib" >> ReadAllFromTFRecord(compression_type=CompressionTypes.AUTO)
        scored = (
            records
            | "Batch" >> beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
            | "Score" >> beam.ParDo(ScoreExamples(self.model, self.fields, self.labels))
            .with_outputs(MALFORMED, main="rows")
        )
        _ = (scored[MALFORMED] | "HexMalformed" >> beam.Map(bytes.hex)
             | "WriteMalformed" >> beam.io.WriteToText(f"{self.out.rstrip('/')}/malformed", file_name_suffix=".txt"))
        return (
            scored.rows
            | "Gather" >> beam.combiners.ToList()
            | "WriteStats" >> beam.FlatMap(write_stats, self.out, list(self.fields), self.stats_options)
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam_jobs.calibration_stats", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="SavedModel directory with a `predict_examples` signature")
    p.add_argument("--data", required=True, help="manifest.json of the Beam data job")
    p.add_argument("--out", required=True, help="output directory (local or gs://)")
    p.add_argument("--fields", nargs="+", help="calibration fields (default: the manifest's calibration features)")
    p.add_argument("--bin-counts", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--min-per-bin", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=1024)
    return p


def compute_stats(
    model: str, manifest: Manifest, out: str, options: PipelineOptions, *, fields: Sequence[str] = (),
    bin_counts: Sequence[int] = (4, 8, 16, 32), min_per_bin: int = 50, batch_size: int = 1024,
) -> list[str]:
    """Score the calib split with the SavedModel ``model`` and write each calibrated head's statistics
    (``calibration_stats_<head>.json``) under ``out``; return their paths.

    ``fields`` default to the manifest's calibration fields. Raises ConfigError on a user mistake.
    """
    features = manifest.features
    fields = list(fields) or manifest.calibration_fields
    if not fields:
        raise ConfigError(f"{manifest.path}: no calibration fields (mark some `calibration: true` in the schema, "
                          "or pass --fields)")
    unknown = [f for f in fields if f not in features or features[f].get("dtype", "string") not in _DTYPES]
    if unknown:
        raise ConfigError(f"--fields: {unknown} are not features of {manifest.path} with a known dtype")
    files = manifest.split_files("calib")
    if not files:
        raise ConfigError(f"{manifest.path}: the calib split has no files")
    labels = {role: column for role, column in manifest.label_roles.items() if column}
    job = CalibrationStats(model, {f: features[f].get("dtype", "string") for f in fields}, labels, out,
                           batch_size=batch_size,
                           stats_options={"bin_counts": tuple(bin_counts), "min_per_bin": min_per_bin})
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | "CalibFiles" >> beam.Create(files) | "CalibrationStats" >> job
    heads = [CTR, CVR] if CONVERSION in labels else [CTR]
    return [f"{out.rstrip('/')}/calibration_stats_{head}.json" for head in heads]


def run(argv: Sequence[str] | None = None) -> int:
    """Run the job; user mistakes print one ``error:`` line and return 2."""
    args, beam_args = _parser().parse_known_args(argv)
    try:
        paths = compute_stats(args.model, load_manifest(args.data), args.out, PipelineOptions(beam_args),
                              fields=args.fields or (), bin_counts=args.bin_counts, min_per_bin=args.min_per_bin,
                              batch_size=args.batch_size)
    except ConfigError as e:
        print(f"calibration_stats: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m beam_jobs.calibration_stats`` entry point."""
    logging.basicConfig(level=logging.WARNING)
    return run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
