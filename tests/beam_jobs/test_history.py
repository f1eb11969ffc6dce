"""Point-in-time user histories: the build job's against an independent pandas computation from the raw logs."""

from __future__ import annotations

import glob
import gzip
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.beam_jobs.conftest import TWO_WORKERS


def build(logs: str, out: str, *extra: str) -> str:
    from beam_jobs.build_examples import run

    assert run(["--logs", logs, "--out", out, *extra]) == 0
    return out

HISTORY = {
    "hist_category": {"field": "category", "events": "click", "max_len": 3},
    "hist_ad": {"field": "ad_id", "events": "impression", "max_len": 4, "window_s": 7200},
    "hist_conv_campaign": {"field": "campaign_id", "events": "conversion", "max_len": 2},
}


def history_schema(path: str, history: dict = HISTORY) -> str:
    """The default schema with ``history`` added, written to ``path``."""
    from tfads.core.schema import DEFAULT_SCHEMA

    schema = yaml.safe_load(open(DEFAULT_SCHEMA))
    schema["history"] = history
    with open(path, "w") as f:
        yaml.safe_dump(schema, f, sort_keys=False)
    return path


def _read(logs: str, log: str) -> pd.DataFrame:
    rows = []
    for path in sorted(glob.glob(os.path.join(logs, log, "*", "*.jsonl.gz"))):
        with gzip.open(path, "rt") as f:
            rows += [json.loads(line) for line in f]
    return pd.DataFrame(rows)


def expected_histories(logs: str) -> pd.DataFrame:
    """Every impression's histories, computed row by row from the raw logs (clean logs: no dead letters), by
    the attribution rules: the earliest click 0..1 h after the impression, the earliest conversion 0..3 days
    after that click; events strictly before the impression, most recent first, ties by the later trace_id."""
    imps = _read(logs, "impressions")
    clicks = _read(logs, "clicks").merge(imps[["trace_id", "ts"]], on="trace_id", suffixes=("", "_imp"))
    clicks = clicks[(clicks.ts >= clicks.ts_imp) & (clicks.ts - clicks.ts_imp <= 3600)]
    click_ts = clicks.groupby("trace_id").ts.min()
    convs = _read(logs, "conversions")
    convs = convs[convs.trace_id.isin(click_ts.index)]
    convs = convs[(convs.ts >= convs.trace_id.map(click_ts)) & (convs.ts - convs.trace_id.map(click_ts) <= 259200)]
    conv_ts = convs.groupby("trace_id").ts.min()
    times = {"click": imps.trace_id.map(click_ts), "conversion": imps.trace_id.map(conv_ts), "impression": imps.ts}
    return histories_of(imps, times, HISTORY, user="user_id", ts="ts", key="trace_id")


def histories_of(rows: pd.DataFrame, times: dict[str, pd.Series], history: dict, *, user: str, ts: str,
                 key: str) -> pd.DataFrame:
    """key -> each history of each row, one row at a time: ``times[kind]`` is the time of that kind of event
    of each row (NaN: none)."""
    out = {}
    for _, mine in rows.groupby(user):
        for _, row in mine.iterrows():
            got = {}
            for name, h in history.items():
                when = times[h["events"]].loc[mine.index]
                ok = when.notna() & (when < row[ts])
                if "window_s" in h:
                    ok &= when >= row[ts] - h["window_s"]
                events = pd.DataFrame({"t": when[ok], "key": mine[key][ok], "v": mine[h["field"]][ok]})
                got[name] = tuple(events.sort_values(["t", "key"], ascending=False).v.head(h["max_len"]))
            out[row[key]] = got
    return pd.DataFrame.from_dict(out, orient="index")


def built_histories(out: str, key: str = "trace_id", names: tuple[str, ...] = tuple(HISTORY)) -> pd.DataFrame:
    """key -> the histories in the job's TFRecords (strings decoded)."""
    import tensorflow as tf

    def values(feature) -> tuple:
        if feature.HasField("int64_list"):
            return tuple(feature.int64_list.value)
        return tuple(v.decode() for v in feature.bytes_list.value)

    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "examples", "*", "*.tfrecord.gz"))):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            f = tf.train.Example.FromString(record).features.feature
            rows[f[key].bytes_list.value[0].decode()] = {name: values(f[name]) for name in names}
    return pd.DataFrame.from_dict(rows, orient="index")


@pytest.fixture(scope="module")
def history_logs(tmp_path_factory) -> str:
    """4 clean days (no corrupted lines) whose impressions belong to 40 users (user ids folded), so users have
    long histories; plus one planted click (see ``test_planted_click_is_never_seen_before_it_happened``)."""
    from tfads.datagen import generate

    logs = str(tmp_path_factory.mktemp("history_logs"))
    generate(logs, days=4, impressions_per_day=1500, seed=5, corrupt_rate=0.0, progress=False)
    for path in glob.glob(os.path.join(logs, "impressions", "*", "*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps({**r, "user_id": r["user_id"] % 40}) + "\n" for r in rows)
    imps = _read(logs, "impressions").sort_values(["ts", "trace_id"])
    clicked = set(_read(logs, "clicks").trace_id)
    # Plant a click on an unclicked impression at the very second of the same user's next impression.
    a, b = next((a, b) for _, mine in imps.groupby("user_id")
                for a, b in zip(mine.itertuples(), mine.iloc[1:].itertuples(), strict=False)
                if 0 < b.ts - a.ts <= 3600 and a.trace_id not in clicked)
    day = sorted(os.listdir(os.path.join(logs, "clicks")))[0]
    with gzip.open(os.path.join(logs, "clicks", day, "part-planted.jsonl.gz"), "wt") as f:
        f.write(json.dumps({"trace_id": a.trace_id, "ts": int(b.ts)}) + "\n")
    with open(os.path.join(logs, "planted.json"), "w") as f:
        json.dump({"clicked": a.trace_id, "same_second": b.trace_id, "ts": int(b.ts)}, f)
    return logs


@pytest.fixture(scope="module")
def expected(history_logs) -> pd.DataFrame:
    return expected_histories(history_logs)


@pytest.fixture(scope="module")
def history_build(history_logs, tmp_path_factory) -> str:
    schema = history_schema(str(tmp_path_factory.mktemp("schema") / "schema.yaml"))
    return build(history_logs, str(tmp_path_factory.mktemp("history_out")), "--schema", schema, *TWO_WORKERS,
                   "--key-buckets", "3", "--piece-mib", "0.05")


def test_histories_equal_an_independent_computation(expected, history_build):
    want = expected
    got = built_histories(history_build)
    assert sorted(got.index) == sorted(want.index)
    for name in HISTORY:
        mismatched = [k for k in want.index if got.at[k, name] != want.at[k, name]]
        assert not mismatched, (name, mismatched[:3], [(got.at[k, name], want.at[k, name]) for k in mismatched[:3]])
    # The data exercise what is tested: long histories, truncation, the window.
    lengths = got.hist_ad.map(len)
    assert (lengths == HISTORY["hist_ad"]["max_len"]).sum() > 50 and (got.hist_category.map(len) > 0).sum() > 20
    assert (got.hist_conv_campaign.map(len) > 0).any()


def test_planted_click_is_never_seen_before_it_happened(history_logs, history_build, expected):
    planted = json.load(open(os.path.join(history_logs, "planted.json")))
    imps = _read(history_logs, "impressions").set_index("trace_id")
    got = built_histories(history_build)
    user, category = imps.at[planted["clicked"], "user_id"], imps.at[planted["clicked"], "category"]
    mine = imps[imps.user_id == user]
    at_or_before = mine[mine.ts <= planted["ts"]].index
    # No history at or before the click's second holds an event from that second or later...
    for key in at_or_before:
        assert got.at[key, "hist_category"] == expected.at[key, "hist_category"]
    assert planted["same_second"] in at_or_before
    # ... and the user's next impression after it does see the click (most recent, unless another came between).
    later = mine[mine.ts > planted["ts"]].sort_values("ts").index
    assert len(later) and category in got.at[later[0], "hist_category"]
    assert got.at[later[0], "hist_category"] == expected.at[later[0], "hist_category"]


def test_manifest_records_the_definitions_and_truncation(history_build):
    manifest = json.load(open(os.path.join(history_build, "manifest.json")))
    block = manifest["history"]
    assert block["hist_ad"] == {"field": "ad_id", "events": "impression", "max_len": 4, "window_s": 7200,
                                "share_embedding_with": "ad_id", "dtype": "int64",
                                "truncated": block["hist_ad"]["truncated"]}
    got = built_histories(history_build)
    assert 0 < block["hist_ad"]["truncated"] <= (got.hist_ad.map(len) == 4).sum()
    assert block["hist_category"]["share_embedding_with"] == "category"


def test_in_process_run_writes_the_same_examples(history_logs, history_build, tmp_path):
    schema = history_schema(str(tmp_path / "schema.yaml"))
    other = build(history_logs, str(tmp_path / "out"), "--schema", schema, "--runner", "DirectRunner",
                    "--key-buckets", "7")
    assert built_histories(other).sort_index().equals(built_histories(history_build).sort_index())


def test_per_day_graph_refuses_a_history(history_logs, tmp_path, capsys):
    from beam_jobs.build_examples import run

    schema = history_schema(str(tmp_path / "schema.yaml"))
    assert run(["--logs", history_logs, "--out", str(tmp_path / "out"), "--schema", schema, "--graph", "per-day"]) == 2
    assert "history features uses the keyed graph" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"user_key": None}, "set user_key"),
    ({"history": {"h": {"field": "price"}}}, "is a float"),
    ({"history": {"h": {"field": "ad_id", "share_embedding_with": "category"}}}, "differ in type"),
    ({"history": {"h": {"field": "trace_id"}}}, "must name a categorical or hashed feature"),
    ({"history": {"h": {"field": "category", "max_len": 0}}}, "max_len must be >= 1"),
    ({"history": {"category": {"field": "category"}}}, "choose another"),
])
def test_bad_history_definitions_are_named(tmp_path, change, message):
    from tfads.core.configtools import ConfigError
    from tfads.core.schema import load_schema

    path = history_schema(str(tmp_path / "schema.yaml"), {"hist_category": HISTORY["hist_category"]})
    schema = yaml.safe_load(open(path))
    schema.update(change)
    yaml.safe_dump(schema, open(path, "w"), sort_keys=False)
    with pytest.raises(ConfigError, match=message):
        load_schema(path)


def test_add_histories_ties_window_and_truncation():
    """The pure function on hand-made events: equal seconds ordered by key, the window's edge inclusive,
    an event at the example's own second excluded."""
    from beam_jobs.history import TIE, TS, USER, SOURCE, add_histories
    from tfads.core.schema import HistoryFeature, load_schema
    import dataclasses

    schema = load_schema()
    schema = dataclasses.replace(schema, history={
        "h": HistoryFeature(field="category", events="click", max_len=2, window_s=100)})
    events = pd.DataFrame({USER: [1, 1, 1, 1, 2], TS: [50, 100, 100, 150, 10], TIE: ["a", "c", "b", "d", "e"],
                           SOURCE: "click", "category": ["w", "x", "y", "z", "u"]})
    examples = pd.DataFrame({"user_id": [1, 1, 1, 2, 3], "ts": [150, 151, 250, 10, 99]})
    out, truncated = add_histories(examples, events, schema)
    assert list(out.h) == [("x", "y"), ("z", "x"), ("z",), (), ()]
    assert truncated["h"] == 2 and np.array_equal(out.ts, examples.ts)


def test_table_input_histories_use_the_row_time(history_logs, tmp_path):
    """A CSV table in the user's names, click-only: a click's time is its row's (the table has no click log)."""
    from tests.own_logs import CLICK_LABEL, RENAMED, labelled_impressions, table_schema

    table = labelled_impressions(history_logs, with_conversion=False)
    table.to_csv(tmp_path / "table.csv", index=False)
    history = {"hist_cat": {"field": "category", "events": "click", "max_len": 3},
               "hist_ad": {"field": "ad_id", "events": "impression", "max_len": 2, "window_s": 3600}}
    schema = yaml.safe_load(open(table_schema(str(tmp_path / "schema.yaml"), with_conversion=False)))
    schema["history"] = history
    yaml.safe_dump(schema, open(tmp_path / "schema.yaml", "w"), sort_keys=False)
    out = build(str(tmp_path / "table.csv"), str(tmp_path / "out"), "--schema", str(tmp_path / "schema.yaml"),
                "--key-buckets", "4")
    ts, key = RENAMED["ts"], RENAMED["trace_id"]
    clicked = table[ts].where(table[CLICK_LABEL] == 1)
    want = histories_of(table, {"click": clicked, "impression": table[ts]}, history, user=RENAMED["user_id"],
                        ts=ts, key=key)
    got = built_histories(out, key=key, names=tuple(history))
    assert sorted(got.index) == sorted(want.index)
    assert got.loc[want.index].equals(want) and (got.hist_cat.map(len) > 0).sum() > 20


def test_a_group_without_events_gets_empty_histories():
    from beam_jobs.history import add_histories
    from tfads.core.schema import HistoryFeature, load_schema
    import dataclasses

    schema = dataclasses.replace(load_schema(), history={"h": HistoryFeature(field="category")})
    out, truncated = add_histories(pd.DataFrame({"user_id": [1, 2], "ts": [5, 6]}), pd.DataFrame(), schema)
    assert list(out.h) == [(), ()] and truncated["h"] == 0
