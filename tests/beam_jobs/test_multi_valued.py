"""Multi-valued fields (a list per row): parsed from JSON lines, CSV and Parquet, validated, truncated to max_len,
counted for the vocabulary, written as list features, and read by the model (mean-pooled, padding masked)."""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.beam_jobs.conftest import GRAPHS

MAX_LEN = 3
TAGS = {"type": "string", "feature": "categorical", "multi": True, "max_len": MAX_LEN}


def tags_of(trace_id: str, category: str) -> list[str]:
    """0..5 tags, a deterministic function of the impression (its category first, so tags carry signal)."""
    n = zlib.crc32(trace_id.encode()) % 6
    return ([category] + [f"t{(zlib.crc32(f'{trace_id}{i}'.encode()) % 7)}" for i in range(5)])[:n]


def tags_schema(path: str, **changes) -> str:
    from tfads.core.schema import DEFAULT_SCHEMA

    schema = yaml.safe_load(open(DEFAULT_SCHEMA))
    schema["fields"]["tags"] = {**TAGS, **changes}
    yaml.safe_dump(schema, open(path, "w"), sort_keys=False)
    return path


@pytest.fixture(scope="module")
def tags_logs(tmp_path_factory) -> str:
    """4 clean days whose impressions carry ``tags``; three lines with bad tags (not a list, an int inside,
    a missing field)."""
    from tfads.datagen import generate

    logs = str(tmp_path_factory.mktemp("tags_logs"))
    generate(logs, days=4, impressions_per_day=1200, seed=3, corrupt_rate=0.0, progress=False)
    bad = {0: "not a list", 1: ["ok", 7], 2: None}
    for k, path in enumerate(sorted(glob.glob(os.path.join(logs, "impressions", "*", "*.jsonl.gz")))):
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
        for r in rows:
            r["tags"] = tags_of(r["trace_id"], r["category"])
        if k in bad:
            if bad[k] is None:
                del rows[5]["tags"]
            else:
                rows[5]["tags"] = bad[k]
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return logs


def built_tags(out: str, key: str = "trace_id") -> pd.Series:
    import tensorflow as tf

    got = {}
    for path in glob.glob(os.path.join(out, "examples", "*", "*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            f = tf.train.Example.FromString(record).features.feature
            got[f[key].bytes_list.value[0].decode()] = tuple(v.decode() for v in f["tags"].bytes_list.value)
    return pd.Series(got).sort_index()


def _build(logs: str, out: str, *extra: str) -> str:
    from beam_jobs.build_examples import run

    assert run(["--logs", logs, "--out", out, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def tags_builds(tags_logs, tmp_path_factory) -> dict[str, str]:
    schema = tags_schema(str(tmp_path_factory.mktemp("schema") / "schema.yaml"))
    return {graph: _build(tags_logs, str(tmp_path_factory.mktemp(f"tags_{graph}")), "--schema", schema,
                          "--runner", "DirectRunner", *flags) for graph, flags in GRAPHS.items()}


def _impressions(logs: str) -> pd.DataFrame:
    rows = []
    for path in sorted(glob.glob(os.path.join(logs, "impressions", "*", "*.jsonl.gz"))):
        with gzip.open(path, "rt") as f:
            rows += [json.loads(line) for line in f]
    return pd.DataFrame(rows)


def test_lists_are_written_truncated_and_bad_lists_dead_lettered(tags_logs, tags_builds):
    imps = _impressions(tags_logs)
    good = imps[imps.tags.map(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))]
    want = pd.Series({r.trace_id: tuple(r.tags[:MAX_LEN]) for r in good.itertuples()}).sort_index()
    for graph, out in tags_builds.items():
        got = built_tags(out)
        assert got.equals(want), graph
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        entry = manifest["features"]["tags"]
        assert entry["multi"] and entry["max_len"] == MAX_LEN
        assert entry["truncated"] == int((good.tags.map(len) > MAX_LEN).sum())
        reasons = manifest["dead_letter"]["by_reason"]
        assert reasons.get("wrong_type") == 2 and reasons.get("missing_field") == 1, graph
    assert built_tags(tags_builds["keyed"]).equals(built_tags(tags_builds["per-day"]))


def test_vocabulary_counts_every_value_of_the_kept_lists(tags_logs, tags_builds):
    out = tags_builds["keyed"]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    train_days = set(manifest["splits"]["train"]["days"])
    got = built_tags(out)
    imps = _impressions(tags_logs).set_index("trace_id")
    day = pd.to_datetime(imps.ts, unit="s").dt.strftime("%Y-%m-%d")
    train = got[[k for k in got.index if day[k] in train_days]]
    counts = pd.Series([t for row in train for t in row]).value_counts()
    vocab = open(os.path.join(out, "vocab", "tags.txt")).read().split()
    assert set(vocab) == set(counts[counts >= manifest["vocab"]["min_count"]].index)
    assert counts[vocab[0]] == counts.max()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_with_list_columns_gives_the_same_lists(tags_logs, tags_builds, tmp_path, fmt):
    """The same rows as one table: a CSV cell holds the values joined by list_separator, Parquet a list column."""
    from tests.own_logs import RENAMED, labelled_impressions, table_schema

    table = labelled_impressions(tags_logs, with_conversion=False)
    table = table[table.tags.map(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))]
    schema = yaml.safe_load(open(table_schema(str(tmp_path / "schema.yaml"), with_conversion=False)))
    schema["fields"]["tags"] = {**TAGS, "list_separator": ";"}
    yaml.safe_dump(schema, open(tmp_path / "schema.yaml", "w"), sort_keys=False)
    if fmt == "csv":
        path = str(tmp_path / "table.csv")
        table.assign(tags=table.tags.map(";".join)).to_csv(path, index=False)
    else:
        path = str(tmp_path / "table.parquet")
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path, row_group_size=1000)
    out = _build(path, str(tmp_path / "out"), "--schema", str(tmp_path / "schema.yaml"))
    got = built_tags(out, key=RENAMED["trace_id"])
    assert got.equals(built_tags(tags_builds["keyed"]))


def test_bad_multi_valued_definitions_are_named(tmp_path):
    from tfads.core.configtools import ConfigError
    from tfads.core.schema import load_schema

    for changes, message in [({"max_len": None}, "needs max_len"), ({"type": "float", "feature": "numeric"},
                             "holds ids"), ({"domain_aware": True}, "cannot be domain_aware")]:
        with pytest.raises(ConfigError, match=message):
            load_schema(tags_schema(str(tmp_path / "s.yaml"), **changes))


def test_the_model_reads_the_lists_and_ignores_padding(tags_builds, small_experiment, tmp_path):
    import tensorflow as tf

    from serving.export import check_export, export_model
    from tfads.core.manifest import load_manifest
    from tfads.data import feature_spec, parse_examples
    from tfads.models.esmm import build_model

    manifest = load_manifest(os.path.join(tags_builds["keyed"], "manifest.json"))
    assert manifest.model_inputs["tags"] == ("string", (MAX_LEN,)) and "tags" not in manifest.input_dtypes
    model = build_model(manifest, small_experiment.model)
    records = tf.data.TFRecordDataset(manifest.split_files("test"), compression_type="GZIP").batch(256)
    batch = parse_examples(next(iter(records)), manifest, feature_spec(manifest, with_labels=False))
    batch = {k: batch[k] for k in manifest.model_inputs}
    before = model(batch)["ctr"].numpy()
    padded = np.arange(MAX_LEN)[None, :] >= batch["tags_length"].numpy()[:, None]
    junk = tf.where(padded, tf.constant("zzz-not-a-tag"), batch["tags"])
    np.testing.assert_allclose(model({**batch, "tags": junk})["ctr"].numpy(), before, rtol=1e-6)
    assert np.abs(model({**batch, "tags_length": tf.zeros_like(batch["tags_length"])})["ctr"].numpy()
                  - before).max() > 1e-7
    version = export_model(model, manifest, str(tmp_path / "models"), version=1)
    assert check_export(model, manifest, version) < 1e-5
