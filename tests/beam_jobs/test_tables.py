"""``input: table``: the generator's impressions with their labels as one table (renamed columns) in CSV,
Parquet and JSON lines, built by the keyed graph; bad rows dead-lettered with their line numbers."""

from __future__ import annotations

import filecmp
import glob
import gzip
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.beam_jobs.conftest import TWO_WORKERS
from tests.beam_jobs.helpers import dead_letters, read_examples
from tests.own_logs import (
    CLICK_LABEL, RENAMED, click_only_schema, labelled_impressions, rewrite_click_only, table_schema,
)

KEY = RENAMED["trace_id"]


@pytest.fixture(scope="module")
def clean_logs(tmp_path_factory) -> str:
    from tfads.datagen import generate

    out = str(tmp_path_factory.mktemp("clean_logs"))
    generate(out, days=4, impressions_per_day=1500, seed=5, progress=False)
    return out


def _build(logs: str, out: str, schema: str, *extra: str) -> dict:
    from beam_jobs.build_examples import run

    assert run(["--logs", logs, "--out", out, "--schema", schema, *extra]) == 0
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def test_a_csv_table_gives_the_same_examples_as_the_event_logs(clean_logs, tmp_path):
    """Click-only, renamed: the table (two files, one gzipped, read in small pieces by 2 workers) and the
    impressions + clicks logs of the same data give byte-identical example files."""
    rewrite_click_only(clean_logs, str(tmp_path / "events"))
    events = _build(str(tmp_path / "events"), str(tmp_path / "out_events"), click_only_schema(str(tmp_path / "e.yaml")))
    table = labelled_impressions(clean_logs, with_conversion=False)
    os.makedirs(tmp_path / "csv" / "part")
    table.iloc[:2500].to_csv(tmp_path / "csv" / "a.csv", index=False)
    table.iloc[2500:].to_csv(tmp_path / "csv" / "part" / "b.csv.gz", index=False)
    schema = table_schema(str(tmp_path / "t.yaml"), with_conversion=False)
    manifest = _build(str(tmp_path / "csv"), str(tmp_path / "out_csv"), schema, "--piece-mib", "0.05", *TWO_WORKERS)
    files = sorted(glob.glob(str(tmp_path / "out_events" / "examples" / "*" / "*")))
    assert len(files) == 8
    for path in files:
        assert filecmp.cmp(path, path.replace("out_events", "out_csv"), shallow=False), path
    assert manifest["features"] == events["features"] and manifest["labels"] == [CLICK_LABEL]
    assert manifest["inputs"] == {"table": {"read": len(table), "valid": len(table), "dead_letter": 0}}
    assert manifest["splits"]["train"]["clicks"] == events["splits"]["train"]["clicks"] > 0
    assert manifest["build"]["graph"] == "keyed"


def test_parquet_with_both_labels_and_no_key(clean_logs, tmp_path):
    table = labelled_impressions(clean_logs, with_conversion=True)
    table.to_parquet(tmp_path / "t.parquet", row_group_size=1000)
    schema = table_schema(str(tmp_path / "t.yaml"), with_conversion=True, key=False)
    manifest = _build(str(tmp_path / "t.parquet"), str(tmp_path / "out"), schema)
    examples = read_examples(str(tmp_path / "out"))
    assert len(examples) == len(table) and KEY not in examples
    assert manifest["labels"] == [CLICK_LABEL, "conversion"]
    got = examples.sort_values([RENAMED["ts"], RENAMED["user_id"], "ad_id"]).reset_index(drop=True)
    want = table.sort_values([RENAMED["ts"], RENAMED["user_id"], "ad_id"]).reset_index(drop=True)
    assert (got[CLICK_LABEL] == want[CLICK_LABEL]).all() and (got["conversion"] == want["conversion"]).all()
    assert 0 < want["conversion"].sum() <= (want["conversion"] <= want[CLICK_LABEL]).sum()
    assert sum(s["conversions"] for s in manifest["splits"].values()) == want["conversion"].sum()


def test_json_lines_table(clean_logs, tmp_path):
    table = labelled_impressions(clean_logs, with_conversion=False)
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as f:
        table.to_json(f, orient="records", lines=True)
    manifest = _build(str(tmp_path / "t.jsonl.gz"), str(tmp_path / "out"),
                      table_schema(str(tmp_path / "t.yaml"), with_conversion=False))
    assert manifest["inputs"]["table"]["valid"] == len(table)
    assert sum(s["clicks"] for s in manifest["splits"].values()) == table[CLICK_LABEL].sum()


def test_bad_rows_are_dead_lettered_with_their_line_and_reason(clean_logs, tmp_path):
    table = labelled_impressions(clean_logs, with_conversion=False)
    lines = table.to_csv(index=False).splitlines()
    # CSV line numbers: the header is line 1, table row i is line i + 2
    bad = {5: ("bad_row", lines[5] + ",extra"), 9: ("wrong_type", None), 12: ("missing_field", None),
           20: ("out_of_range", None), 30: ("unknown_value", None), 41: ("duplicate_row", None)}
    cols = lines[0].split(",")
    for line, (reason, text) in bad.items():
        cells = lines[line - 1].split(",")
        if reason == "wrong_type":
            cells[cols.index("age")] = "twelve"
        elif reason == "missing_field":
            cells[cols.index("price")] = ""
        elif reason == "out_of_range":
            cells[cols.index(CLICK_LABEL)] = "2"
        elif reason == "unknown_value":
            cells[cols.index("device")] = "watch"
        elif reason == "duplicate_row":
            cells[cols.index(KEY)] = lines[39].split(",")[cols.index(KEY)]
        lines[line - 1] = text or ",".join(cells)
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    manifest = _build(str(tmp_path / "t.csv"), str(tmp_path / "out"),
                      table_schema(str(tmp_path / "t.yaml"), with_conversion=False), "--piece-mib", "0.1")
    got = {d["line"]: d["reason"] for d in dead_letters(str(tmp_path / "out"))}
    assert got == {line: reason for line, (reason, _) in bad.items()}
    counts = manifest["inputs"]["table"]
    assert counts == {"read": len(table), "valid": len(table) - len(bad), "dead_letter": len(bad)}
    assert len(read_examples(str(tmp_path / "out"))) == len(table) - len(bad)


def test_parquet_nulls_are_missing_fields(clean_logs, tmp_path):
    table = labelled_impressions(clean_logs, with_conversion=False)
    table["age"] = table["age"].astype("Int64")
    table.loc[[3, 700], "age"] = pd.NA
    table.to_parquet(tmp_path / "t.parquet", row_group_size=500)
    _build(str(tmp_path / "t.parquet"), str(tmp_path / "out"),
           table_schema(str(tmp_path / "t.yaml"), with_conversion=False))
    got = {(d["line"], d["reason"]) for d in dead_letters(str(tmp_path / "out"))}
    assert got == {(4, "missing_field"), (701, "missing_field")}


def test_table_mistakes_are_one_error_line(clean_logs, tmp_path, capsys):
    from beam_jobs.build_examples import run

    schema = table_schema(str(tmp_path / "t.yaml"), with_conversion=False)
    table = labelled_impressions(clean_logs, with_conversion=False)
    (tmp_path / "empty").mkdir()
    assert run(["--logs", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--schema", schema]) == 2
    assert "no table files (.csv, .csv.gz, .parquet" in capsys.readouterr().err
    table[table[RENAMED["ts"]] < table[RENAMED["ts"]].min() + 86400].to_csv(tmp_path / "one_day.csv", index=False)
    assert run(["--logs", str(tmp_path / "one_day.csv"), "--out", str(tmp_path / "o"), "--schema", schema]) == 2
    err = capsys.readouterr().err
    assert "error: the logs cover 1 day(s)" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "o" / "manifest.json")
    with open(schema) as f:
        mapping = yaml.safe_load(f)
    mapping["clicks"] = {"fields": {KEY: "string"}}
    with open(tmp_path / "bad.yaml", "w") as f:
        yaml.safe_dump(mapping, f)
    assert run(["--logs", str(tmp_path / "one_day.csv"), "--out", str(tmp_path / "o"), "--schema",
                str(tmp_path / "bad.yaml")]) == 2
    assert "input: table reads its labels from columns; remove the clicks section" in capsys.readouterr().err


def test_an_inferred_schema_builds(clean_logs, tmp_path):
    from tfads import cli

    table = labelled_impressions(clean_logs, with_conversion=True)
    table.to_csv(tmp_path / "t.csv.gz", index=False)
    assert cli.main(["schema", "infer", "--input", str(tmp_path / "t.csv.gz"), "--out", str(tmp_path / "s.yaml")]) == 0
    manifest = _build(str(tmp_path / "t.csv.gz"), str(tmp_path / "out"), str(tmp_path / "s.yaml"))
    assert manifest["label_roles"] == {"click": CLICK_LABEL, "conversion": "conversion"}
    assert manifest["inputs"]["table"] == {"read": len(table), "valid": len(table), "dead_letter": 0}
    assert manifest["timestamp"] == RENAMED["ts"] and manifest["key"] == KEY


@pytest.mark.parametrize("rule", ["time", "ratio"])
def test_splits_by_time_and_by_ratio_are_exact(clean_logs, tmp_path, rule):
    """Each row's split follows the rule exactly (against an independent computation), for a table and for the
    event logs of the same rows; a day that straddles a cut is written once per split."""
    table = labelled_impressions(clean_logs, with_conversion=False)
    ts = table[RENAMED["ts"]].to_numpy()
    table.to_csv(tmp_path / "t.csv", index=False)
    rewrite_click_only(clean_logs, str(tmp_path / "events"))
    schemas = {"table": table_schema(str(tmp_path / "t.yaml"), with_conversion=False),
               "events": click_only_schema(str(tmp_path / "e.yaml"))}
    start = int(ts.min())
    if rule == "time":
        splits = {"by": "time", "valid_from": start + 2 * 86400 + 3600, "test_from": start + 3 * 86400 - 7200}
        cuts = (splits["valid_from"], splits["test_from"], splits["test_from"])  # no calib_from: no calib split
    else:
        splits = {"by": "ratio", "valid_ratio": 0.15, "calib_ratio": 0.1, "test_ratio": 0.2}
        values, counts = np.unique(ts, return_counts=True)
        before = np.concatenate([[0], np.cumsum(counts)])
        cuts = tuple(int(values[np.argmax(before >= round(share * len(ts)))]) for share in (0.55, 0.7, 0.8))
    expected = np.array(["train", "valid", "calib", "test"])[np.searchsorted(cuts, ts, side="right")]
    for shape, schema in schemas.items():
        with open(schema) as f:
            mapping = yaml.safe_load(f)
        mapping["splits"].update(splits)
        with open(schema, "w") as f:
            yaml.safe_dump(mapping, f)
        logs = str(tmp_path / ("t.csv" if shape == "table" else "events"))
        manifest = _build(logs, str(tmp_path / f"out_{shape}"), schema)
        starts = dict(zip(("valid_from", "calib_from", "test_from"), cuts, strict=True))
        assert manifest["split_rule"] == {"by": rule, **starts}
        for name in ("train", "valid", "calib", "test"):
            files = manifest["splits"][name]["files"]
            keys = set()
            for path in files:
                assert f"/{name}/part-" in path, path
                keys |= set(read_examples_of(str(tmp_path / f"out_{shape}"), path)[KEY])
            assert keys == set(table.loc[expected == name, KEY]), (shape, name)
            assert manifest["splits"][name]["examples"] == (expected == name).sum()
    straddling = [d for d, entry in manifest["days"].items() if len({p.split("/")[2] for p in entry["files"]}) > 1]
    assert straddling, "a cut falls inside a day"


def read_examples_of(out: str, relative: str) -> pd.DataFrame:
    """The examples of one shard file."""
    import tensorflow as tf

    rows = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(
        os.path.join(out, relative), compression_type="GZIP").as_numpy_iterator()]
    return pd.DataFrame({KEY: [r.features.feature[KEY].bytes_list.value[0].decode() for r in rows]})
