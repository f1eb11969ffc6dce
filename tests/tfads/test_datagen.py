"""tfads datagen: layout, schema conformance, the corruption manifest, determinism, truth, users' drifting
interests and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfads import cli
from tfads.datagen import generate
from tfads.datagen import world as W
from tfads.datagen.launches import LaunchPlan
from tfads.datagen.world import World
from tfads.core.schema import load_schema

SCHEMA = load_schema()
SETTINGS = {"days": 3, "impressions_per_day": 2000, "seed": 7, "corrupt_rate": 0.04, "with_feed": True}
LINE_REASONS = {"bad_json", "missing_field", "wrong_type", "unknown_value", "out_of_range"}


def _specs() -> dict[str, dict]:
    """Per log: field types, required fields, enums, ranges (the contract of docs/architecture.md)."""
    fields = SCHEMA.fields
    imp = {
        "types": {n: f.type for n, f in fields.items()},
        "required": set(fields),
        "enums": {n: f.values for n, f in fields.items() if f.values},
        "ranges": {n: (f.min, f.max) for n, f in fields.items()},
    }
    out = {"impressions": imp}
    for log in ("clicks", "conversions", "feed"):
        spec = getattr(SCHEMA, log)
        out[log] = {
            "types": dict(spec.fields),
            "required": set(spec.fields) - set(spec.optional),
            "enums": {},
            "ranges": {},
        }
    return out


SPECS = _specs()


def problems(obj: dict, spec: dict) -> list[str]:
    """Every dead-letter reason a parsed line deserves (empty for a valid line)."""
    out = ["missing_field" for n in spec["required"] if n not in obj]
    for name, v in obj.items():
        typ = spec["types"].get(name)
        ok = {
            "string": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, float),
        }.get(typ, False)
        if not ok:
            out.append("wrong_type")
            continue
        if name in spec["enums"] and v not in spec["enums"][name]:
            out.append("unknown_value")
        lo, hi = spec["ranges"].get(name, (None, None))
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            out.append("out_of_range")
    return out


def read_lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dg") / "logs"
    return out, generate(str(out), progress=False, **SETTINGS)


@pytest.fixture(scope="module")
def parsed(logs) -> dict:
    """All lines: (log, file) -> list of raw lines; plus the manifest keyed by (file, line)."""
    out, _ = logs
    files = {p.relative_to(out).as_posix(): read_lines(p) for p in sorted(out.glob("*/*/*.jsonl.gz"))}
    manifest = [json.loads(line) for line in (out / "corruptions.jsonl").read_text().splitlines()]
    return {"files": files, "manifest": {(r["file"], r["line"]): r for r in manifest}}


def _valid(parsed: dict, log: str) -> list[dict]:
    """Parsed lines of ``log`` that the manifest does not list."""
    return [
        json.loads(line)
        for rel, lines in parsed["files"].items()
        if rel.startswith(log + "/")
        for i, line in enumerate(lines, 1)
        if (rel, i) not in parsed["manifest"]
    ]


def test_layout_and_datagen_json(logs, parsed):
    out, info = logs
    dates = ["2026-01-01", "2026-01-02", "2026-01-03"]
    for log in ("impressions", "clicks", "conversions", "feed", "truth"):
        assert [f"{log}/{d}/part-00000.jsonl.gz" for d in dates] == sorted(
            rel for rel in parsed["files"] if rel.startswith(log + "/")
        )
        assert info["counts"][log] == sum(len(v) for k, v in parsed["files"].items() if k.startswith(log + "/"))
    assert json.loads((out / "datagen.json").read_text()) == info
    assert info["counts"]["impressions"] == 6000 and info["counts"]["feed"] == 3000
    assert info["seed"] == 7 and info["dates"] == dates
    assert info["corruptions"] == dict(Counter(r["reason"] for r in parsed["manifest"].values()))


def test_every_unlisted_line_is_valid_and_in_its_day(parsed):
    for rel, lines in parsed["files"].items():
        log, day = rel.split("/")[:2]
        if log == "truth":
            continue
        start = int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())
        for i, line in enumerate(lines, 1):
            reason = parsed["manifest"].get((rel, i), {}).get("reason")
            if reason in LINE_REASONS:
                continue
            obj = json.loads(line)
            assert problems(obj, SPECS[log]) == [], (rel, i, line)
            assert start <= obj["ts"] < start + 86400, (rel, i)


def test_manifest_lines_are_malformed_exactly_as_stated(parsed):
    impressions = {o["trace_id"]: o for o in _valid(parsed, "impressions")}
    all_ids = {
        json.loads(line)["trace_id"]
        for rel, lines in parsed["files"].items()
        if rel.startswith("truth/")
        for line in lines
    }
    clicks: dict[str, list[int]] = {}
    for rel, lines in sorted(parsed["files"].items()):
        if rel.startswith("clicks/"):
            for line in lines:
                try:
                    obj = json.loads(line)
                    clicks.setdefault(obj["trace_id"], []).append(obj["ts"])
                except (ValueError, KeyError, TypeError):
                    pass
    window = SCHEMA.attribution
    seen = Counter()
    for (rel, i), rec in parsed["manifest"].items():
        log, reason = rec["log"], rec["reason"]
        assert rel.startswith(log + "/")
        line = parsed["files"][rel][i - 1]
        seen[(log, reason)] += 1
        if reason == "bad_json":
            with pytest.raises(ValueError):
                json.loads(line)
            continue
        obj = json.loads(line)
        if reason in LINE_REASONS:
            assert problems(obj, SPECS[log]) == [reason], (rec, line)
            continue
        assert problems(obj, SPECS[log]) == [], (rec, line)
        tid, ts = obj["trace_id"], obj["ts"]
        if reason in ("orphan_click", "orphan_conversion"):
            assert tid not in all_ids
        elif reason == "late_click":
            assert ts - impressions[tid]["ts"] > window.click_window_s
        elif reason == "duplicate_click":
            assert min(clicks[tid]) < ts <= min(clicks[tid]) + 30
        elif reason == "late_conversion":
            assert ts - min(clicks[tid]) > window.conversion_window_s
        elif reason == "conversion_without_click":
            assert tid in impressions and tid not in clicks
        else:
            pytest.fail(f"unexpected reason {reason}")
    assert {r for _, r in seen} >= LINE_REASONS | {"duplicate_click", "orphan_click"}


def test_valid_events_join_cleanly(parsed):
    """Unlisted clicks and conversions belong to a valid impression, within the windows, click first."""
    window = SCHEMA.attribution
    impressions = {o["trace_id"]: o["ts"] for o in _valid(parsed, "impressions")}
    clicks = {}
    for c in _valid(parsed, "clicks"):
        assert c["trace_id"] not in clicks, "a second unlisted click for one trace_id"
        assert 0 < c["ts"] - impressions[c["trace_id"]] <= window.click_window_s
        clicks[c["trace_id"]] = c["ts"]
    conversions = _valid(parsed, "conversions")
    assert conversions, "no valid conversion in the sample"
    for c in conversions:
        assert 0 < c["ts"] - clicks[c["trace_id"]] <= window.conversion_window_s
    assert len({c["trace_id"] for c in conversions}) == len(conversions)


def test_same_seed_byte_identical_other_seed_differs(logs, tmp_path):
    out, _ = logs
    again = tmp_path / "again"
    generate(str(again), progress=False, **SETTINGS)
    for path in sorted(out.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(out)).read_bytes(), path
    other = tmp_path / "other"
    generate(str(other), progress=False, **{**SETTINGS, "seed": 8, "days": 1})
    rel = "impressions/2026-01-01/part-00000.jsonl.gz"
    assert (other / rel).read_bytes() != (out / rel).read_bytes()


def test_truth_covers_impressions_and_rates_are_realistic(logs, parsed):
    _, info = logs
    truth = [json.loads(line) for rel, lines in parsed["files"].items() if rel.startswith("truth/") for line in lines]
    assert all(set(t) == {"trace_id", "p_ctr", "p_cvr"} for t in truth)
    assert {t["trace_id"] for t in truth} >= {o["trace_id"] for o in _valid(parsed, "impressions")}
    assert len(truth) == len({t["trace_id"] for t in truth}) == 6000
    p_ctr = np.array([t["p_ctr"] for t in truth])
    p_cvr = np.array([t["p_cvr"] for t in truth])
    assert ((p_ctr > 0) & (p_ctr < 1) & (p_cvr > 0) & (p_cvr < 1)).all()
    assert 0.015 < p_ctr.mean() < 0.05
    assert 0.05 < np.average(p_cvr, weights=p_ctr) < 0.15
    assert info["true_rates"]["mean_p_ctr"] == pytest.approx(p_ctr.mean(), rel=1e-4)
    sampled_ctr = len(_valid(parsed, "clicks")) / 6000
    assert abs(sampled_ctr - p_ctr.mean()) < 0.01
    assert not ({"p_ctr", "p_cvr"} & set(SCHEMA.fields))


@pytest.fixture(scope="module")
def worlds() -> tuple[World, World]:
    """World 3 with the default interest term, and without it (``interest_scale=0``)."""
    return World(3), World(3, interest_scale=0.0)


def test_world_rates_drift_and_clusters(worlds):
    """On a larger in-memory sample: rates in range, effects drift over days, clusters differ."""
    world, _ = worlds
    x = world.sample(np.random.default_rng(0), 50_000, 0, 0)
    assert 0.02 < x["p_ctr"].mean() < 0.05
    assert 0.05 < np.average(x["p_cvr"], weights=x["p_ctr"]) < 0.15
    base = np.log(x["p_ctr"])
    corr = [np.corrcoef(base, np.log(world.probabilities(x, x["second"] / 86400 + d)[0]))[0, 1] for d in (1, 10)]
    assert 0.5 < corr[1] < corr[0] < 1.0
    # Clusters differ in their cross matrix; scenarios of one cluster share most of their weights.
    cross = world.ctr.cluster_cross
    assert np.abs(cross - cross.mean(axis=0)).mean() > 0.3
    w, cluster = world.ctr.scenario_w, world.scenario_cluster
    within = np.mean([w[cluster == c].std(axis=0).mean() for c in np.unique(cluster)])
    assert within < 0.5 * w.std(axis=0).mean()


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def test_interest_scale_zero_is_the_world_without_the_term(worlds):
    """The interest parameters have their own random stream: with scale 0 every other parameter and
    every sample is the same and the term contributes exactly nothing; with the default scale the
    logits differ from scale 0's by exactly the scaled term (plus the recalibrated intercepts)."""
    world, plain = worlds
    assert world.interest_scale == W.INTEREST_SCALE > 0 and plain.interest_scale == 0
    for name in ("user_cdf", "user_bias", "user_group", "ad_cdf", "ad_bias", "ad_campaign", "scenario_cluster"):
        assert np.array_equal(getattr(world, name), getattr(plain, name)), name
    assert np.array_equal(world.ctr.scenario_w, plain.ctr.scenario_w)
    assert np.array_equal(world.cvr.cat_emb_b, plain.cvr.cat_emb_b)
    x = plain.sample(np.random.default_rng(1), 20_000, 2, 3)
    y = world.sample(np.random.default_rng(1), 20_000, 2, 3)
    assert all(np.array_equal(x[k], y[k]) for k in x if k not in ("p_ctr", "p_cvr"))
    t = 2 + x["second"] / 86400.0
    term = W.INTEREST_SCALE * world.interest(x, t)
    assert 0.5 * W.INTEREST_SCALE < term.std() < 2 * W.INTEREST_SCALE
    ctr_rest = _logit(y["p_ctr"]) - _logit(x["p_ctr"]) - term
    cvr_rest = _logit(y["p_cvr"]) - _logit(x["p_cvr"]) - W.CVR_INTEREST * term
    assert ctr_rest.std() < 1e-6 and cvr_rest.std() < 1e-6  # only the intercepts are left
    assert abs(ctr_rest.mean()) < 0.5 and abs(cvr_rest.mean()) < 0.5
    # Scale 0: other interest parameters change nothing, bit for bit (ads and the organic feed);
    # at the default scale they do.
    feed = plain.sample_feed(np.random.default_rng(2), 5_000, 2, 3)
    tf = 2 + feed["second"] / 86400.0
    for w, changes in ((plain, False), (world, True)):
        other = copy.copy(w)
        other.user_interest_a = w.user_interest_b
        other.category_interest = -w.category_interest
        other.ad_interest = -w.ad_interest
        p, q = w.probabilities(x, t), other.probabilities(x, t)
        same = [np.array_equal(p[0], q[0]), np.array_equal(p[1], q[1])]
        same.append(np.array_equal(w._feed_prob(feed, tf), other._feed_prob(feed, tf)))
        assert same == [not changes] * 3


def test_interests_persist_and_drift(worlds):
    world, _ = worlds
    users = np.arange(0, W.N_USERS, 97)

    def u(t: float) -> np.ndarray:
        return world.user_interest(users, np.full(len(users), t))

    def change(t0: float, t1: float) -> np.ndarray:
        return np.linalg.norm(u(t1) - u(t0), axis=1) / np.linalg.norm(u(t0), axis=1)

    assert np.quantile(change(0.0, 30.0), 0.25) > 0.5  # a month changes most users' interests ...
    assert np.median(change(0.0, 1.0)) < 0.2  # ... a day only a little ...
    assert np.quantile(change(5.0, 5.01), 0.99) < 0.01  # ... and they move continuously
    sizes = np.linalg.norm(u(0.0), axis=1) / np.linalg.norm(u(30.0), axis=1)
    assert 0.9 < np.median(sizes) < 1.1  # drift, not decay


def _read(out: Path, log: str) -> pd.DataFrame:
    files = sorted(out.glob(f"{log}/*/*.jsonl.gz"))
    return pd.concat([pd.read_json(f, lines=True, dtype={"trace_id": str}) for f in files], ignore_index=True)


def _history_match(out: Path) -> pd.DataFrame:
    """Impressions (with truth) of users who clicked strictly before them; ``match``: the ad's category
    is (one of) the user's most-clicked categories among those earlier clicks."""
    imps = _read(out, "impressions")[["trace_id", "ts", "user_id", "category"]].merge(_read(out, "truth"))
    clicks = _read(out, "clicks").groupby("trace_id", as_index=False)["ts"].min()  # first click per impression
    clicks = clicks.merge(imps[["trace_id", "user_id", "category"]], on="trace_id")
    events = pd.concat([imps.assign(kind=0), clicks.assign(kind=1)], ignore_index=True)
    # An impression sorts before a click of the same second: only strictly earlier clicks count.
    events = events[events["user_id"].isin(clicks["user_id"])].sort_values(["user_id", "ts", "kind"], kind="stable")
    earlier: dict[int, Counter] = defaultdict(Counter)
    rows = []
    for tid, user, category, kind in events[["trace_id", "user_id", "category", "kind"]].itertuples(index=False):
        if kind == 1:
            earlier[user][category] += 1
        elif earlier[user]:
            rows.append((tid, earlier[user][category] == max(earlier[user].values())))
    return imps.merge(pd.DataFrame(rows, columns=["trace_id", "match"]), on="trace_id")


@pytest.fixture(scope="module")
def interest_runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same impressions generated with the default interest scale and with scale 0."""
    base = tmp_path_factory.mktemp("interest")
    settings = {"days": 2, "impressions_per_day": 20_000, "seed": 0, "progress": False}
    generate(str(base / "default"), **settings)
    generate(str(base / "zero"), interest_scale=0.0, **settings)
    return base / "default", base / "zero"


def test_true_ctr_follows_the_users_earlier_clicks(interest_runs):
    """For users who clicked before, the true CTR is higher on ads of their most-clicked earlier
    category. Part of that is there without interests too (a category or user-group x category effect
    also makes a category both clicked before and clicked again), so the interest term's share is
    measured on the same impressions: the logit of the default run minus that of the scale-0 run."""
    default, zero = interest_runs
    info = [json.loads((out / "datagen.json").read_text())["settings"] for out in interest_runs]
    assert [s["interest_scale"] for s in info] == [W.INTEREST_SCALE, 0.0]
    rows = _history_match(default).merge(
        _read(zero, "truth").rename(columns={"p_ctr": "p_ctr_zero"})[["trace_id", "p_ctr_zero"]]
    )
    rows["interest"] = _logit(rows["p_ctr"]) - _logit(rows["p_ctr_zero"])
    by = rows.groupby("match").agg(n=("p_ctr", "size"), p_ctr=("p_ctr", "mean"), interest=("interest", "mean"))
    assert by.loc[True, "n"] >= 50 and by.loc[False, "n"] >= 1000
    assert by.loc[True, "p_ctr"] > 1.2 * by.loc[False, "p_ctr"]
    assert by.loc[True, "interest"] - by.loc[False, "interest"] > 0.15  # 0 without the term


def test_scenario_traffic_is_long_tailed(parsed):
    counts = Counter(f"{o['media']}|{o['slot']}" for o in _valid(parsed, "impressions"))
    assert all(len(k) == 7 and k[0] == "m" and k[4] == "s" for k in counts)
    top = sorted(counts.values(), reverse=True)
    assert sum(top[:30]) > 0.5 * sum(top)  # 10 % of the 300 scenarios carry most traffic
    assert sum(v < 10 for v in counts.values()) + 300 - len(counts) > 150  # most are long tail


def test_cli_help_bad_flag_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["datagen", "--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0 and "--corrupt-rate" in help_text and "--interest-scale" in help_text
    with pytest.raises(SystemExit) as e:
        cli.main(["datagen", "--out", str(tmp_path / "x"), "--corrupt-rate", "2"])
    assert e.value.code == 2 and "--corrupt-rate: expected a number in [0, 0.5], got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["datagen", "--out", str(tmp_path / "x"), "--interest-scale", "-1"])
    assert e.value.code == 2 and "--interest-scale: expected a number in [0, 10], got -1.0" in capsys.readouterr().err
    args = ["--days", "1", "--impressions-per-day", "300", "--interest-scale", "0.5", "--no-progress"]
    assert cli.main(["datagen", "--out", str(tmp_path / "y"), *args]) == 0
    assert "impressions 300" in capsys.readouterr().out
    assert json.loads((tmp_path / "y" / "datagen.json").read_text())["settings"]["interest_scale"] == 0.5
    assert cli.main(["datagen", "--out", str(tmp_path / "y"), "--start-date", "2026-02-30"]) == 2
    assert "start_date must be YYYY-MM-DD" in capsys.readouterr().err


def test_generate_rejects_what_it_cannot_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate(str(tmp_path), days=1, impressions_per_day=10, progress=False)
    fields = dict(SCHEMA.fields)
    fields["device"] = dataclasses.replace(fields["device"], values=["phone", "watch"])
    bad = dataclasses.replace(SCHEMA, fields=fields)
    with pytest.raises(ValueError, match="interest_scale must be in"):
        generate(str(tmp_path / "z"), days=1, impressions_per_day=10, interest_scale=-0.5, progress=False)
    with pytest.raises(ValueError, match=r"fields\.device\.values"):
        generate(str(tmp_path / "z"), days=1, impressions_per_day=10, schema=bad, progress=False)


def test_launched_scenes_and_late_segments_appear_on_the_launch_day_and_differ():
    spec = LaunchPlan(scenes=2, segments=3, launch_day=4)
    plain, world = World(3), World(3, launch_plan=spec)
    launches = world.launches
    for name in ("user_cdf", "user_city", "ad_cdf", "scenario_logw", "scenario_cluster"):
        assert np.array_equal(getattr(world, name), getattr(plain, name)), name
    # only the launched scenes' weights deviate from the world without launches
    moved = np.flatnonzero(np.any(world.ctr.scenario_w != plain.ctr.scenario_w, axis=1))
    assert moved.tolist() == launches.scenes.tolist()
    before = world.sample(np.random.default_rng(0), 30_000, 3, 0)
    after = world.sample(np.random.default_rng(0), 30_000, 4, 0)
    late = np.isin(before["city"], launches.segments), np.isin(after["city"], launches.segments)
    assert not np.isin(before["scenario"], launches.scenes).any() and not late[0].any()
    assert np.isin(after["scenario"], launches.scenes).mean() > 0.005 and late[1].mean() > 0.005
    # every city has an own CTR term once segments launch; the late cities' share the established ones' spread
    term = launches.segment_logit(after["city"], after["category"])
    assert 0.2 * spec.segment_scale < term.std() < 2 * spec.segment_scale
    assert 0.3 < term[late[1]].std() / term[~late[1]].std() < 3
    with pytest.raises(ValueError, match="launch_day must be >= 1"):
        LaunchPlan(scenes=1)
    late = World(3, launch_plan=LaunchPlan(segments=3, launch_day=1, segment_launch_day=5))
    x = late.sample(np.random.default_rng(0), 20_000, 4, 0)
    assert not np.isin(x["city"], late.launches.segments).any()


def test_datagen_records_the_launches(tmp_path, capsys):
    main = cli.main
    out = tmp_path / "logs"
    assert main(["datagen", "--out", str(out), "--days", "3", "--impressions-per-day", "3000", "--launch-scenes", "1",
                 "--launch-segments", "2", "--no-progress"]) == 0
    assert "launched: scenes m" in capsys.readouterr().out
    launched = json.loads((out / "datagen.json").read_text())["settings"]["launches"]
    assert launched["launch_day"] == 1 and len(launched["scenes"]) == 1 and len(launched["segments"]) == 2
    assert main(["datagen", "--out", str(out), "--days", "3", "--launch-segments", "2", "--launch-day", "3"]) == 2
    assert "launch days must be < days (3)" in capsys.readouterr().err
