"""``tfads schema infer``: a starter ``input: table`` schema guessed from the generator's logs written as one table.

The table is the impressions joined with their click (and conversion) labels, with the user's field names of
``tests/own_logs.py``, as CSV (gzipped) and as Parquet; the guesses are checked against what the generator
wrote (the shipped schema's kinds), and the written YAML must load with ``tfads.core.schema.load_schema``.
"""

from __future__ import annotations

import glob
import json
import os

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from tests.own_logs import CLICK_LABEL, RENAMED
from tfads import cli
from tfads.core.schema import load_schema
from tfads.schema_infer import SampleError, expand_inputs, infer_schema, read_sample, render_schema

ROWS = 6000  # 2 days x 3000 impressions
CONVERSION_LABEL = "converted"
CATEGORICAL = ["gender", "city", "device", "os", "hour", "weekday", RENAMED["media"], RENAMED["slot"],
               "advertiser_id", "category", "creative_type", "bid_type"]
HASHED = [RENAMED["user_id"], "ad_id"]


def _read_log(logs: str, log: str) -> pd.DataFrame:
    return pd.concat(pd.read_json(p, lines=True) for p in sorted(glob.glob(os.path.join(logs, log, "*", "*.gz"))))


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pd.DataFrame:
    """The generator's impressions with click / conversion labels, in the user's names (no corrupted lines)."""
    from tfads.datagen import generate

    logs = str(tmp_path_factory.mktemp("infer_logs"))
    generate(logs, days=2, impressions_per_day=ROWS // 2, seed=3, progress=False)
    impressions = _read_log(logs, "impressions").reset_index(drop=True)
    clicked = set(_read_log(logs, "clicks")["trace_id"])
    converted = set(_read_log(logs, "conversions")["trace_id"])
    impressions[CLICK_LABEL] = impressions["trace_id"].isin(clicked).astype(int)
    impressions[CONVERSION_LABEL] = (impressions["trace_id"].isin(converted) & impressions[CLICK_LABEL].astype(bool))
    impressions[CONVERSION_LABEL] = impressions[CONVERSION_LABEL].astype(int)
    return impressions.rename(columns=RENAMED)


@pytest.fixture(scope="module")
def files(table, tmp_path_factory) -> dict[str, str]:
    """The table as gzipped CSV (click label only) and as Parquet (click and conversion labels)."""
    out = tmp_path_factory.mktemp("infer_table")
    paths = {"csv": str(out / "table.csv.gz"), "parquet": str(out / "table.parquet")}
    table.drop(columns=[CONVERSION_LABEL]).to_csv(paths["csv"], index=False)
    table.to_parquet(paths["parquet"], index=False)
    return paths


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_guesses_match_what_the_generator_wrote(files, table, fmt):
    sample = read_sample(expand_inputs([files[fmt]]))
    assert sample.table.num_rows == ROWS and sample.formats == [fmt]
    guess = infer_schema(sample.table)
    assert guess.key == RENAMED["trace_id"]
    assert guess.timestamp == RENAMED["ts"] and guess.timestamp_todo is None
    assert guess.days == ("2026-01-01", "2026-01-02", 2)
    assert guess.user_key == RENAMED["user_id"]
    assert guess.labels == {"click": CLICK_LABEL, "conversion": CONVERSION_LABEL if fmt == "parquet" else None}
    assert guess.domain in (RENAMED["media"], RENAMED["slot"])
    specs = {c.name: c.spec for c in guess.columns}
    assert CLICK_LABEL not in specs and CONVERSION_LABEL not in specs  # labels are not fields
    assert specs[RENAMED["trace_id"]] == {"type": "string"}
    assert specs[RENAMED["ts"]] == {"type": "int", "min": 0}
    for name in CATEGORICAL:
        expected = "int" if pd.api.types.is_integer_dtype(table[name]) else "string"
        assert specs[name] == {"type": expected, "feature": "categorical"}, name
    for name in HASHED:
        bins, distinct = specs[name]["hash_bins"], table[name].nunique()
        assert specs[name]["feature"] == "hashed" and specs[name]["type"] == "int"
        assert bins & (bins - 1) == 0 and 4 * distinct <= bins < 8 * distinct, (name, bins, distinct)
    assert specs["age"] == {"type": "int", "feature": "numeric", "min": 0}
    assert specs["price"] == {"type": "float", "feature": "numeric", "min": 0, "log": True}  # lognormal prices
    assert guess.skipped == []


def test_the_written_yaml_loads_as_an_input_table_schema(files, tmp_path, capsys):
    out = tmp_path / "schema.yaml"
    assert cli.main(["schema", "infer", "--input", files["parquet"], "--out", str(out)]) == 0
    assert f"wrote {out} from {ROWS} rows" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# STARTER schema written by `tfads schema infer`")
    assert f"first {ROWS} rows" in text and "distinct of 6000" in text  # the counts behind the guesses
    raw = yaml.safe_load(text)
    assert raw["input"] == "table" and raw["format"] == "auto"
    assert raw["labels"] == {"click": CLICK_LABEL, "conversion": CONVERSION_LABEL}
    assert {"clicks", "conversions", "feed", "derived"}.isdisjoint(raw)
    schema = load_schema(out)
    assert schema.input == "table" and schema.key == RENAMED["trace_id"] and schema.timestamp == RENAMED["ts"]
    assert schema.user_key == RENAMED["user_id"] and schema.labels.columns == [CLICK_LABEL, CONVERSION_LABEL]
    assert set(schema.features) == {n for n, spec in raw["fields"].items() if "feature" in spec}
    assert set(CATEGORICAL) <= set(schema.vocab_features)  # campaign_id, ~40% distinct in the sample, may be either


def test_sample_rows_stops_reading_early_and_files_are_read_in_order(table, tmp_path):
    parts = [tmp_path / "part-0.csv", tmp_path / "part-1.csv", tmp_path / "part-2.csv"]
    for i, path in enumerate(parts):
        table.iloc[i * 1000:(i + 1) * 1000].to_csv(path, index=False)
    sample = read_sample(expand_inputs([str(tmp_path / "part-*.csv")]), sample_rows=1500)
    assert sample.table.num_rows == 1500 and sample.files == [str(p) for p in parts[:2]]
    assert sample.table.column(RENAMED["trace_id"]).to_pylist() == list(table[RENAMED["trace_id"]][:1500])


def test_csv_types_come_from_every_sampled_value(tmp_path):
    path = tmp_path / "t.csv"
    rows = ["n,x,zip,word"] + [f"{i},{i},{i + 10000},w{i % 3}" for i in range(5000)] + ["5000,0.5,01234,w0"]
    path.write_text("\n".join(rows) + "\n")
    schema = read_sample([str(path)]).table.schema
    types = dict(zip(schema.names, schema.types, strict=True))
    # a float in the last row (past any reader block) makes x float; a zero-padded code keeps zip text
    assert types == {"n": pa.int64(), "x": pa.float64(), "zip": pa.string(), "word": pa.string()}


def test_iso_times_bool_labels_and_unusable_columns(tmp_path):
    records = [{"when": f"2026-01-0{1 + i % 3}T10:{i % 60:02d}:00Z", "clicked": i % 7 == 0, "site": f"s{i % 4}",
                "constant": "x", "empty": None, "tags": ["a", "b"], "score": i * 0.01,
                "flag": i % 2 == 0, "bid": None if i % 10 == 0 else i % 13, "click_time": 1767261600 + i}
               for i in range(300)]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    sample = read_sample([str(path)])
    guess = infer_schema(sample.table)
    assert guess.labels == {"click": "clicked", "conversion": None} and guess.key is None
    assert guess.timestamp == "when" and "convert" in guess.timestamp_todo
    assert {c.name for c in guess.skipped} == {"constant", "empty", "tags", "flag", "click_time"}
    text = render_schema(guess, sample)
    assert "# key: none" in text and "TODO: convert this column to int seconds" in text
    assert "TODO: clicked is true/false: write it as 0/1" in text
    assert "left out: every sampled value is null" in text  # empty
    assert "TODO: 30 of 300 sampled values are null" in text  # bid: the job dead-letters missing numbers
    for name in ("constant", "empty", "tags", "flag", "click_time"):
        assert f"  # {name}:" in text
    assert "  # flag:       {type: int, feature: categorical}" in text  # what it would be, written as 0/1
    assert "click_time" in text.split("left out: named like an outcome")[0].splitlines()[-1]
    fields = yaml.safe_load(text)["fields"]
    assert set(fields) == {"when", "site", "score", "bid"} and fields["when"] == {"type": "int", "min": 0}
    assert fields["score"] == {"type": "float", "feature": "numeric", "min": 0}


def _error(capsys, *argv: str) -> str:
    assert cli.main(["schema", "infer", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfads schema infer: error: ") and "Traceback" not in err
    return err


def test_bad_input_is_one_error_line_naming_the_file(files, tmp_path, capsys):
    out = str(tmp_path / "s.yaml")
    missing = str(tmp_path / "nothing-*.csv")
    assert f"{missing}: no files match" in _error(capsys, "--input", missing, "--out", out)
    unknown = tmp_path / "table.txt"
    unknown.write_text("a,b\n1,2\n")
    err = _error(capsys, "--input", files["csv"], str(unknown), "--out", out)
    assert f"{unknown}: unknown extension" in err and "--format" in err
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert f"{broken}: cannot read as parquet" in _error(capsys, "--input", str(broken), "--out", out)
    assert not os.path.exists(out)
    assert cli.main(["schema", "infer", "--input", str(unknown), "--format", "csv", "--out", out]) == 0
    assert "exists" in _error(capsys, "--input", files["csv"], "--out", out)
    with pytest.raises(SampleError, match="no rows"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        read_sample([str(empty)])
