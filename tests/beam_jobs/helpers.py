"""Independent readers for the Beam job tests: raw logs with plain json, examples with TensorFlow."""

from __future__ import annotations

import glob
import gzip
import json
import os

import pandas as pd


def read_lines(path: str) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.read().splitlines()


def corruptions(logs: str) -> dict[tuple[str, str, int], str]:
    """(log, file relative to logs, 1-based line) -> expected dead-letter reason."""
    with open(os.path.join(logs, "corruptions.jsonl")) as f:
        return {(c["log"], c["file"], c["line"]): c["reason"] for c in map(json.loads, f)}


def valid_events(logs: str, log: str) -> pd.DataFrame:
    """Every line of ``log`` not listed in corruptions.jsonl, parsed with plain json (independent of the job)."""
    bad = corruptions(logs)
    rows = []
    for path in sorted(glob.glob(os.path.join(logs, log, "*", "*.jsonl.gz"))):
        rel = os.path.relpath(path, logs)
        for i, line in enumerate(read_lines(path), start=1):
            if (log, rel, i) not in bad:
                rows.append({**json.loads(line), "_day": rel.split("/")[1]})
    return pd.DataFrame(rows)


def read_examples(out: str) -> pd.DataFrame:
    """All examples of the job as a DataFrame (one column per feature, first value), via TensorFlow."""
    import tensorflow as tf

    rows = []
    for path in sorted(glob.glob(os.path.join(out, "examples", "*", "*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            row = {}
            for name, feat in ex.features.feature.items():
                kind = feat.WhichOneof("kind")
                value = getattr(feat, kind).value[0]
                row[name] = value.decode() if kind == "bytes_list" else value
            row["_day"] = path.split("/")[-2]
            rows.append(row)
    return pd.DataFrame(rows)


def dead_letters(out: str) -> list[dict]:
    return [json.loads(line) for p in sorted(glob.glob(os.path.join(out, "deadletter", "*"))) for line in read_lines(p)]
