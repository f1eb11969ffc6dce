"""End-to-end: the Beam job on generator logs, checked against an independent pandas/numpy recomputation."""

from __future__ import annotations

import collections
import filecmp
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.beam_jobs.helpers import corruptions, dead_letters, read_examples, read_lines, valid_events
from tfads.core.schema import load_schema

SCHEMA = load_schema()


@pytest.fixture(scope="module")
def examples(built) -> pd.DataFrame:
    return read_examples(built)


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    with open(os.path.join(built, "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def labelled(feed_logs) -> pd.DataFrame:
    """Valid impressions labelled from the valid (uncorrupted, attributable) click and conversion lines."""
    imps = valid_events(feed_logs, "impressions")
    clicks = set(valid_events(feed_logs, "clicks")["trace_id"])
    convs = set(valid_events(feed_logs, "conversions")["trace_id"])
    imps["click"] = imps["trace_id"].isin(clicks).astype(int)
    imps["conversion"] = imps["trace_id"].isin(convs).astype(int)
    imps["scenario"] = imps["media"] + "|" + imps["slot"]
    return imps


def test_every_valid_impression_is_one_example_with_exact_labels(examples, labelled):
    ads = examples[examples["sample_source"] == "ad"]
    assert ads["trace_id"].is_unique
    assert sorted(ads["trace_id"]) == sorted(labelled["trace_id"])
    merged = labelled.merge(ads, on="trace_id", suffixes=("", "_ex"))
    assert len(merged) == len(labelled)
    for col in [*(f for f in SCHEMA.fields if f != "trace_id"), "scenario", "click", "conversion", "_day"]:
        expected, got = merged[col], merged[f"{col}_ex"]
        if col == "price":
            np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6)
        else:
            assert (got.astype(str) == expected.astype(str)).all(), col
    assert merged["click"].sum() > 20 and merged["conversion"].sum() > 0
    assert (merged["conversion"] <= merged["click"]).all()
    assert (ads["weight"] == 1.0).all()


def test_feed_samples_are_extra_examples(examples, feed_logs):
    feed = valid_events(feed_logs, "feed")
    got = examples[examples["sample_source"] == "feed"].merge(feed, on="trace_id", suffixes=("", "_raw"))
    assert len(got) == len(feed) == (examples["sample_source"] == "feed").sum()
    assert (got["click"] == got["clicked"]).all() and (got["conversion"] == 0).all()
    np.testing.assert_allclose(got["weight"], SCHEMA.cold_start.feed_weight, rtol=1e-6)
    assert (got["advertiser_id"] == -1).all() and (got["gender"] == "").all()
    assert (got["scenario"] == got["media"] + "|" + got["slot"]).all()


def test_every_corruption_is_dead_lettered_and_counts_add_up(built, feed_logs, manifest):
    expected = corruptions(feed_logs)
    records = dead_letters(built)
    got = {(d["log"], os.path.relpath(d["source"], feed_logs), d["line"]): d["reason"] for d in records}
    assert len(got) == len(records)
    assert got == expected
    assert all(set(d) == {"reason", "detail", "log", "source", "line", "raw"} for d in records)
    assert manifest["dead_letter"]["by_reason"] == dict(collections.Counter(expected.values()))
    for log, counts in manifest["inputs"].items():
        lines = sum(len(read_lines(p)) for p in glob.glob(os.path.join(feed_logs, log, "*", "*.jsonl.gz")))
        assert counts["read"] == lines == counts["valid"] + counts["dead_letter"], log
        assert counts["dead_letter"] == sum(1 for k in expected if k[0] == log)


def test_splits_shards_and_manifest(built, manifest, examples):
    days = sorted(examples["_day"].unique())
    assert manifest["splits"]["test"]["days"] == days[-1:] and manifest["splits"]["calib"]["days"] == days[-2:-1]
    assert manifest["splits"]["valid"]["days"] == days[-3:-2] and manifest["splits"]["train"]["days"] == days[:-3]
    assert sum(s["examples"] for s in manifest["splits"].values()) == len(examples)
    for day, entry in manifest["days"].items():
        assert entry["files"] == [f"examples/{day}/part-{b:05d}-of-00002.tfrecord.gz" for b in range(2)]
        assert entry["examples"] == (examples["_day"] == day).sum()
    assert manifest["date_range"] == [days[0], days[-1]]
    assert manifest["labels"] == ["click", "conversion"] and manifest["schema"]["key"] == "trace_id"


def _train(labelled: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    return labelled[labelled["_day"].isin(manifest["splits"]["train"]["days"])]


def test_vocabularies_match_recomputation(built, labelled, manifest):
    train = _train(labelled, manifest)
    rare_somewhere = False
    for name in SCHEMA.vocab_features:
        all_counts = train[name].value_counts()
        counts = all_counts[all_counts >= SCHEMA.vocab.min_count]
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: SCHEMA.vocab.top_k]
        with open(os.path.join(built, "vocab", f"{name}.txt")) as f:
            assert f.read().splitlines() == [str(v) for v, _ in ordered], name
        assert manifest["features"][name]["vocab_size"] == len(ordered)
        rare = all_counts[all_counts < SCHEMA.vocab.min_count]
        assert manifest["features"][name]["out_of_vocab"] == {
            "below_min_count": len(rare), "beyond_top_k": len(counts) - len(ordered),
            "train_impressions": int(all_counts.sum() - sum(c for _, c in ordered)),
        }, name
        rare_somewhere |= len(rare) > 0
    assert rare_somewhere  # the schema's min_count 2 leaves some values out: the count is exercised


def test_numeric_stats_match_recomputation(labelled, manifest):
    train = _train(labelled, manifest)
    for name in ("age", "price"):
        x = train[name].to_numpy(float)
        x = np.log1p(x) if SCHEMA.fields[name].log else x
        assert manifest["features"][name]["mean"] == pytest.approx(x.mean(), rel=1e-9)
        assert manifest["features"][name]["std"] == pytest.approx(x.std(), rel=1e-9)


def _mom_prior(successes: np.ndarray, trials: np.ndarray) -> tuple[float, float]:
    rates = successes[trials > 0] / trials[trials > 0]
    m, v = rates.mean(), rates.var()
    k = np.clip(m * (1 - m) / v - 1, 1e-3, 1e6)
    return m * k, (1 - m) * k


def test_posterior_stats_match_recomputation(built, labelled, manifest):
    train = _train(labelled, manifest)
    with open(os.path.join(built, "posterior", "stats.jsonl")) as f:
        stats = pd.DataFrame([json.loads(line) for line in f])
    fields = list(dict.fromkeys([*SCHEMA.vocab_features, *SCHEMA.calibration_fields]))
    assert sorted(stats["field"].unique()) == sorted(fields)
    for name in fields:
        g = train.groupby(name).agg(impressions=("click", "size"), clicks=("click", "sum"),
                                    conversions=("conversion", "sum"))
        got = stats[stats["field"] == name].set_index("value").loc[g.index]
        assert (got[["impressions", "clicks", "conversions"]].to_numpy() == g.to_numpy()).all(), name
        a, b = _mom_prior(g["clicks"].to_numpy(float), g["impressions"].to_numpy(float))
        np.testing.assert_allclose(got["ctr_smoothed"], (g["clicks"] + a) / (g["impressions"] + a + b), rtol=1e-9)
        prior = manifest["posterior"]["priors"][name]["ctr"]
        assert (prior["alpha"], prior["beta"]) == pytest.approx((a, b), rel=1e-9)
        a, b = _mom_prior(g["conversions"].to_numpy(float), g["clicks"].to_numpy(float))
        np.testing.assert_allclose(got["cvr_smoothed"], (g["conversions"] + a) / (g["clicks"] + a + b), rtol=1e-9)


def _files(out: str, *, dead_letters_too: bool = True) -> list[str]:
    paths = (os.path.relpath(p, out) for p in glob.glob(os.path.join(out, "**", "*.*"), recursive=True))
    return sorted(p for p in paths if dead_letters_too or not p.startswith("deadletter/"))


def test_two_worker_processes_give_the_same_outputs(built, built_two_workers):
    files = _files(built)
    assert files == _files(built_two_workers)
    assert any(f.startswith("deadletter/") for f in files) and any(f.startswith("examples/") for f in files)
    for rel in files:
        assert filecmp.cmp(os.path.join(built, rel), os.path.join(built_two_workers, rel), shallow=False), rel


def test_both_graphs_write_the_same_examples_statistics_and_dead_letters(feed_logs, tmp_path):
    """The per-day graph (1 worker) and the keyed graph (2 workers): every file but the dead-letter files is
    byte-identical; the dead letters are the same records, grouped into files differently; the manifests differ
    only in the dead-letter file list and the graph they record."""
    from tests.beam_jobs.conftest import GRAPHS, TWO_WORKERS, run_job

    per_day = run_job(feed_logs, str(tmp_path / "per_day"), *GRAPHS["per-day"])
    keyed = run_job(feed_logs, str(tmp_path / "keyed"), *GRAPHS["keyed"], *TWO_WORKERS)
    files = _files(per_day, dead_letters_too=False)
    assert files == _files(keyed, dead_letters_too=False) and len(files) > 20
    for rel in files:
        if rel != "manifest.json":
            assert filecmp.cmp(os.path.join(per_day, rel), os.path.join(keyed, rel), shallow=False), rel
    manifests = []
    for out in (per_day, keyed):
        with open(os.path.join(out, "manifest.json")) as f:
            manifest = json.load(f)
        assert manifest.pop("build")["graph"] == ("keyed" if out == keyed else "per-day")
        del manifest["dead_letter"]["files"]
        manifests.append(manifest)
    assert manifests[0] == manifests[1]

    def records(out: str) -> list[str]:
        return sorted(json.dumps(d, sort_keys=True) for d in dead_letters(out))

    assert records(per_day) == records(keyed) and len(records(keyed)) > 50
