"""Tests of tfads.calibration: posterior statistics, the AdaCalib layer, its fitting and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from tfads.calibration import (
    AdaCalib,
    CalibStats,
    HistogramBinning,
    IsotonicCalibrator,
    NeuCalib,
    PerFieldIsotonic,
    PlattScaling,
    TemperatureScaling,
    compute_calibration_stats,
    fit_adacalib,
)
from tfads.calibration.adacalib import PREDICTION
from tfads.calibration.fit import calibration_inputs

N_SCENARIOS = 50


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Long-tailed scenarios; model p = sigmoid(logit(true p) + scenario bias + noise).

    Returns (model p, label, scenario, true p). The scenario effects and biases are fixed (seed 0) so
    every split shares them; ``seed`` draws the rows.
    """
    world = np.random.default_rng(0)
    effect, bias = world.normal(0, 0.5, N_SCENARIOS), world.normal(0, 0.5, N_SCENARIOS)
    share = 1.0 / np.arange(1, N_SCENARIOS + 1)
    rng = np.random.default_rng(seed)
    s = rng.choice(N_SCENARIOS, n, p=share / share.sum())
    true_logit = rng.normal(-3, 0.8, n) + effect[s]
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float64)
    model_logit = true_logit + bias[s] + rng.normal(0, 0.3, n)
    return 1 / (1 + np.exp(-model_logit)), y, np.array([f"s{i:02d}" for i in s]), 1 / (1 + np.exp(-true_logit))


def field_rce(y: np.ndarray, p: np.ndarray, field: np.ndarray) -> float:
    """Field-RCE = (1/N) sum_z N_z |sum_z (y - p)| / sum_z y, values without positives skipped."""
    total = 0.0
    for value in np.unique(field):
        m = field == value
        if y[m].sum() > 0:
            total += m.sum() * abs((y[m] - p[m]).sum()) / y[m].sum()
    return total / len(y)


def oracle_shift(p: np.ndarray, y: np.ndarray, field: np.ndarray, p_new: np.ndarray, field_new: np.ndarray
                 ) -> np.ndarray:
    """Knows the bias is one logit shift per value: fits it by maximum likelihood (Newton) on (p, y)."""
    z, z_new, out = np.log(p / (1 - p)), np.log(p_new / (1 - p_new)), p_new.copy()
    for value in np.unique(field):
        m, b = field == value, 0.0
        for _ in range(25):
            q = 1 / (1 + np.exp(-(z[m] + b)))
            b += (y[m] - q).sum() / (q * (1 - q)).sum()
        out[field_new == value] = 1 / (1 + np.exp(-(z_new[field_new == value] + b)))
    return out


@pytest.fixture(scope="module")
def calib() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, y, s, _ = synthetic(100_000, seed=1)
    return p, y, s


@pytest.fixture(scope="module")
def stats(calib) -> CalibStats:
    p, y, s = calib
    return compute_calibration_stats(p, y, {"scenario": s})


@pytest.fixture(scope="module")
def layer(stats, calib) -> AdaCalib:
    p, y, s = calib
    return fit_adacalib(stats, p, y, {"scenario": s}, epochs=5, batch_size=2048, lr=0.003, seed=0)


def _quantile(sorted_p: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile written out by hand."""
    pos = q * (len(sorted_p) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(sorted_p) - 1)
    return float(sorted_p[lo] + (pos - lo) * (sorted_p[hi] - sorted_p[lo]))


def test_stats_equal_straightforward_recomputation():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.3, 700)
    y = (rng.random(700) < p).astype(float)
    field = np.array(["a"] * 400 + ["b"] * 250 + ["c"] * 50)
    m, lam = 20, 5.0
    st = compute_calibration_stats(p, y, {"f": field}, bin_counts=(2, 4, 8), min_per_bin=m,
                                   min_positives_per_bin=1, prior_strength=lam)
    g_rate = y.mean()
    assert st.global_stats.impressions == 700 and st.global_stats.rate == pytest.approx(g_rate)
    for value in ("a", "b", "c"):
        rows = field == value
        pv, yv = p[rows], y[rows]
        rate = (yv.sum() + lam * g_rate) / (rows.sum() + lam)
        got = st.fields["f"][value]
        assert (got.impressions, got.positives) == (rows.sum(), yv.sum())
        assert got.rate == pytest.approx(rate)
        assert got.mean_pred == pytest.approx(pv.mean())
        expected_max = max([k for k in (2, 4, 8) if rows.sum() >= k * m and yv.sum() >= k], default=0)
        assert got.max_bins == expected_max
        for k in (2, 4, 8):
            edges = [_quantile(np.sort(pv), j / k) for j in range(k + 1)]
            imps, hits, sums = np.zeros(k), np.zeros(k), np.zeros(k)
            for pi, yi in zip(pv, yv, strict=True):
                b = 0
                while b < k - 1 and pi >= edges[b + 1]:
                    b += 1
                imps[b], hits[b], sums[b] = imps[b] + 1, hits[b] + yi, sums[b] + pi
            t = got.tables[k]
            np.testing.assert_allclose(t.boundaries, edges, rtol=1e-12)
            np.testing.assert_array_equal(t.impressions, imps)
            np.testing.assert_array_equal(t.positives, hits)
            np.testing.assert_allclose(t.posterior, (hits + lam * rate) / (imps + lam))
            np.testing.assert_allclose(t.mean_pred, sums / imps)


def test_stats_json_round_trip_and_version_check(tmp_path, stats):
    path = str(tmp_path / "stats.json")
    stats.write(path)
    assert CalibStats.read(path) == stats
    (tmp_path / "bad.json").write_text('{"format_version": 99}')
    with pytest.raises(ValueError, match="bad.json.*format_version"):
        CalibStats.read(str(tmp_path / "bad.json"))


def test_stats_reject_bad_input():
    with pytest.raises(ValueError, match="bin_counts"):
        compute_calibration_stats([0.1, 0.2], [0, 1], {}, bin_counts=(4, 2))
    with pytest.raises(ValueError, match="probabilities"):
        compute_calibration_stats([1.5, 0.2], [0, 1], {})


def _sweep(values: list[str]) -> tuple[dict[str, np.ndarray], int]:
    grid = np.concatenate([np.logspace(-6, -0.3, 400), 1 - np.logspace(-0.31, -3, 100)])
    return {PREDICTION: np.tile(grid, len(values)).astype(np.float32),
            "scenario": np.repeat(np.array(values, dtype=object), grid.size)}, grid.size


def _randomized(layer: AdaCalib, x: dict[str, np.ndarray]) -> AdaCalib:
    """Build ``layer`` on ``x`` and set its trainable weights to random values."""
    layer(x)
    rng = np.random.default_rng(0)
    trainable = {id(w) for w in layer.trainable_weights}
    layer.set_weights([rng.normal(0, 1, w.shape) if id(w) in trainable else w.numpy() for w in layer.weights])
    return layer


@pytest.mark.parametrize("selection", ["soft", "hard"])
def test_monotone_for_every_value_and_bin_count(stats, calib, layer, selection):
    p, _, s = calib
    values = [*stats.fields["scenario"], "never-seen"]
    x, n = _sweep(values)
    if selection == "soft":
        model = layer
    else:  # monotone by construction: holds for arbitrary weights, not only trained ones
        model = _randomized(AdaCalib(stats, selection="hard"), calibration_inputs(p[:10], {"scenario": s[:10]}))
    z = model.calibrated_logit(x).numpy().reshape(len(values), n)
    assert np.all(np.diff(z, axis=1) > 0), "calibrated logit not strictly increasing"
    out = model(x).numpy()
    assert np.all(np.diff(out.reshape(len(values), n), axis=1) >= 0) and np.all((out > 0) & (out < 1))
    cands = model.candidate_logits(x, "scenario").numpy().reshape(len(values), n, -1)
    assert np.all(np.diff(cands, axis=1) > 0), "a candidate bin-count function is not strictly increasing"


def test_unseen_value_uses_global_function(calib, layer):
    p, y, s = calib

    def run(pred: np.ndarray, value: str) -> np.ndarray:
        return layer({PREDICTION: pred.astype(np.float32), "scenario": np.array([value] * pred.size, dtype=object)}
                     ).numpy()

    grid = np.linspace(0.001, 0.5, 50)
    np.testing.assert_array_equal(run(grid, "unseen-1"), run(grid, "unseen-2"))
    assert not np.allclose(run(grid, "unseen-1"), run(grid, "s00"))
    # the global function is built from all rows: applied to all rows it matches the overall rate
    assert run(p, "unseen-1").mean() / y.mean() == pytest.approx(1.0, abs=0.05)


def test_auc_within_each_value_unchanged(calib, layer):
    p, y, s = calib
    q = layer(calibration_inputs(p, {"scenario": s})).numpy()
    p32 = p.astype(np.float32)
    for value in np.unique(s):
        m = s == value
        order = np.argsort(p32[m], kind="stable")
        assert np.all(np.diff(q[m][order]) >= 0), f"ranking changed within {value}"
        if 0 < y[m].sum() < m.sum():  # float32 rounding can only turn near-ties into ties
            assert roc_auc_score(y[m], q[m]) == pytest.approx(roc_auc_score(y[m], p32[m]), abs=1e-4)


def test_model_with_adacalib_survives_savedmodel(tmp_path, calib):
    p, y, s = calib
    small = compute_calibration_stats(p[:5000], y[:5000], {"scenario": s[:5000]}, bin_counts=(4, 8))
    x = calibration_inputs(p[:500], {"scenario": np.concatenate([s[:499], ["unseen"]])})
    inputs = {PREDICTION: keras.Input(shape=(), name=PREDICTION),
              "scenario": keras.Input(shape=(), dtype="string", name="scenario")}
    layer = _randomized(AdaCalib(small, selection="hard"), x)
    model = keras.Model(inputs, layer(inputs))
    before = model.predict(x, verbose=0)
    model.save(str(tmp_path / "m"), save_format="tf")
    loaded = keras.models.load_model(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
    restored = tf.saved_model.load(str(tmp_path / "m"))  # self-contained: no Python class needed
    got = restored.signatures["serving_default"](**{k: tf.constant(v) for k, v in x.items()})
    np.testing.assert_allclose(next(iter(got.values())).numpy().reshape(-1), before.reshape(-1), rtol=1e-6)
    assert AdaCalib.from_config(layer.get_config()).get_config() == layer.get_config()


def test_baselines_share_one_interface(calib):
    p, y, s = calib
    for calibrator in (PlattScaling(), TemperatureScaling(), HistogramBinning(), IsotonicCalibrator(),
                       PerFieldIsotonic(), NeuCalib(epochs=1)):
        q = calibrator.fit(p[:20000], y[:20000], s[:20000]).predict(p[:1000], s[:1000])
        assert q.shape == (1000,) and np.all((q >= 0) & (q <= 1))
        assert abs(q.mean() / y[:20000].mean() - 1) < 0.25, type(calibrator).__name__


def test_adacalib_removes_injected_scenario_bias(calib, stats, layer):
    p, y, s = calib
    pt, yt, st, true_p = synthetic(300_000, seed=2)
    baselines = {"platt": PlattScaling(), "temperature": TemperatureScaling(), "histogram": HistogramBinning(),
                 "isotonic": IsotonicCalibrator(), "per_field_isotonic": PerFieldIsotonic(),
                 "neucalib": NeuCalib()}
    table = {"uncalibrated": field_rce(yt, pt, st), "true_p": field_rce(yt, true_p, st),
             "oracle_shift": field_rce(yt, oracle_shift(p, y, s, pt, st), st)}
    for name, calibrator in baselines.items():
        table[name] = field_rce(yt, calibrator.fit(p, y, s).predict(pt, st), st)
    table["adacalib"] = field_rce(yt, layer(calibration_inputs(pt, {"scenario": st})).numpy(), st)
    print("\nField-RCE by scenario (test split):", {k: round(float(v), 4) for k, v in table.items()})
    field_agnostic = min(table[k] for k in ("platt", "temperature", "histogram", "isotonic"))
    field_aware = min(table[k] for k in ("per_field_isotonic", "neucalib"))
    assert table["adacalib"] < table["uncalibrated"] / 2
    assert table["adacalib"] <= field_agnostic / 2
    assert table["adacalib"] <= 1.1 * field_aware
    # the floor for any calibrator fitted on these calib rows: per-scenario shifts known in form
    assert table["adacalib"] <= 1.25 * table["oracle_shift"]


def test_beam_job_writes_the_stats_of_the_scored_calib_split(tmp_path):
    import json

    from beam_jobs.calibration_stats import run
    from serving.server.toy_model import example, save_toy_model

    model_dir = str(tmp_path / "model" / "1")
    save_toy_model(model_dir, warmup_requests=0)
    rng = np.random.default_rng(5)
    n = 1500
    scenario = rng.choice(["m1|s1", "m1|s2", "m2|s1"], n)
    click = rng.random(n) < 0.3
    conversion = click & (rng.random(n) < 0.4)
    records = []
    for i in range(n):
        ex = example(f"media_{i % 13}", int(rng.integers(0, 1000)), float(rng.uniform(0, 5)))
        ex.features.feature["scenario"].bytes_list.value.append(scenario[i].encode())
        ex.features.feature["click"].int64_list.value.append(int(click[i]))
        ex.features.feature["conversion"].int64_list.value.append(int(conversion[i]))
        records.append(ex.SerializeToString())
    (tmp_path / "examples").mkdir()
    for part in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / "examples" / f"part-{part}.tfrecord.gz"), "GZIP") as w:
            for r in records[part::2]:
                w.write(r)
    with tf.io.TFRecordWriter(str(tmp_path / "examples" / "bad.tfrecord.gz"), "GZIP") as w:
        w.write(b"not an example")
    manifest = {"features": {"scenario": {"kind": "categorical", "dtype": "string", "calibration": True}},
                "splits": {"calib": {"files": ["examples/part-0.tfrecord.gz", "examples/part-1.tfrecord.gz",
                                               "examples/bad.tfrecord.gz"]}},
                "days": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "stats"
    assert run(["--model", model_dir, "--data", str(tmp_path / "manifest.json"), "--out", str(out),
                "--bin-counts", "2", "4", "--min-per-bin", "20", "--batch-size", "256"]) == 0

    scores = tf.saved_model.load(model_dir).signatures["predict_examples"](examples=tf.constant(records))
    for task, rows, label in (("ctr", np.ones(n, bool), click), ("cvr", click, conversion)):
        p = scores[f"{task}_raw"].numpy().reshape(-1).astype(np.float64)
        expected = compute_calibration_stats(p[rows], label[rows], {"scenario": scenario[rows]}, bin_counts=(2, 4),
                                             min_per_bin=20, task=task)
        got = CalibStats.read(str(out / f"calibration_stats_{task}.json"))
        assert got.fields["scenario"].keys() == expected.fields["scenario"].keys()
        assert got.global_stats.impressions == rows.sum()
        for value, vs in expected.fields["scenario"].items():  # same rows, any order: same statistics
            g = got.fields["scenario"][value]
            assert (g.impressions, g.positives, g.max_bins) == (vs.impressions, vs.positives, vs.max_bins)
            np.testing.assert_allclose(g.tables[4].boundaries, vs.tables[4].boundaries, rtol=1e-6)
            np.testing.assert_array_equal(g.tables[4].positives, vs.tables[4].positives)
    (malformed,) = out.glob("malformed*.txt")
    assert malformed.read_text().split() == [b"not an example".hex()]


def test_two_fields_int_values_and_logit_input(calib):
    p, y, s = calib
    p, y, s = p[:20000], y[:20000], s[:20000]
    advertiser = np.random.default_rng(0).integers(0, 30, p.size)
    st = compute_calibration_stats(p, y, {"scenario": s, "advertiser_id": advertiser})
    z = np.log(p / (1 - p))
    layer = fit_adacalib(st, z, y, {"scenario": s, "advertiser_id": advertiser}, epochs=1, input_space="logit")
    grid = np.linspace(-8, 2, 200).astype(np.float32)
    out = layer({PREDICTION: grid, "scenario": np.array(["s03"] * 200, dtype=object),
                 "advertiser_id": np.full(200, 7, dtype=np.int64)}).numpy()
    assert np.all(np.diff(out) > 0)
    q = layer({PREDICTION: z.astype(np.float32), "scenario": s.astype(object),
               "advertiser_id": advertiser.astype(np.int64)}).numpy()
    assert q.mean() / y.mean() == pytest.approx(1.0, abs=0.05)


def _shifted_values(shift_sd: float, seed: int) -> tuple[CalibStats, np.ndarray, list[str]]:
    """Zipf-sized values whose true rate is the prediction shifted by N(0, shift_sd) in logit."""
    rng = np.random.default_rng(seed)
    sizes = (20_000 / np.arange(1, 41) ** 1.5).astype(int) + 20
    shift = rng.normal(0, shift_sd, sizes.size)
    v = np.repeat(np.arange(sizes.size), sizes)
    z = rng.normal(-3, 0.7, v.size)
    y = (rng.random(v.size) < 1 / (1 + np.exp(-(z + shift[v])))).astype(float)
    names = np.array([f"v{i:02d}" for i in range(sizes.size)])
    stats = compute_calibration_stats(1 / (1 + np.exp(-z)), y, {"scenario": names[v]})
    return stats, shift, sorted(stats.fields["scenario"])


def test_empirical_bayes_shrinks_tail_values_and_keeps_head_values():
    from tfads.calibration.shrinkage import shrink

    stats, shift, names = _shifted_values(0.25, seed=3)
    values = [stats.fields["scenario"][k] for k in names]
    eb = shrink(stats.global_stats, values, stats.bin_counts)
    n = np.array([s.impressions for s in values])
    head, tail = n >= 3000, n < 200
    est = eb.shift[1:]
    true = shift - np.mean(shift[head] - est[head])  # the global function absorbs a common offset
    assert 1 < eb.value_strength < 1000  # values really differ: a finite prior strength
    np.testing.assert_allclose(est[head], true[head], atol=0.12)  # big values keep their own shift
    # tail values: shrunken toward the global function, closer to the truth than their own noisy rates
    raw = np.array([np.log((s.positives + 0.5) / (s.impressions * s.mean_pred)) for s in values])
    raw = raw - np.average(raw, weights=n)  # each value's own (unshrunken) shift
    raw = raw - np.mean(raw[head] - est[head])  # same origin as the estimates
    assert np.mean((est[tail] - true[tail]) ** 2) < 0.7 * np.mean((raw[tail] - true[tail]) ** 2)

    null_stats, _, null_names = _shifted_values(0.0, seed=4)  # no differences: everything pools
    null = shrink(null_stats.global_stats, [null_stats.fields["scenario"][k] for k in null_names],
                  null_stats.bin_counts)
    assert null.value_strength > 1000 and np.all(np.abs(null.shift) < 0.05)


def test_values_without_impressions_fall_back_to_the_global_function():
    """A decay-0 online refresh keeps the old vocabulary with zero counts: those values must calibrate
    like the global function, not to NaN."""
    from tfads.calibration.shrinkage import shrink
    from tfads.jobs.online.calibration import refresh_stats

    stats, _, names = _shifted_values(0.25, seed=5)
    rng = np.random.default_rng(0)
    p = 1 / (1 + np.exp(-rng.normal(-3, 0.7, 4000)))
    y = (rng.random(p.size) < p).astype(float)
    fresh = refresh_stats(stats, p, y, {"scenario": np.array(names[:3])[rng.integers(0, 3, p.size)]}, decay=0.0)
    gone = [k for k in names if fresh.fields["scenario"][k].impressions == 0]
    assert len(gone) == len(names) - 3
    eb = shrink(fresh.global_stats, [fresh.fields["scenario"][k] for k in names], fresh.bin_counts)
    assert np.all(np.isfinite(eb.shift)) and np.all(eb.shift[4:] == 0)
    assert all(np.all(np.isfinite(post)) for post in eb.posterior.values())

    layer = AdaCalib(fresh)
    pred = np.array([0.02, 0.05])
    out, unseen = (layer(calibration_inputs(pred, {"scenario": np.array(values)})).numpy().reshape(-1)
                   for values in ([gone[0], gone[-1]], ["unseen", "unseen"]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, unseen, rtol=1e-5)


def test_a_small_split_falls_back_to_the_posterior_map():
    """A small calib split whose values do not really differ (the demo's case): the empirical-Bayes posterior
    pools every value into the global function, and training, whose corrections of a value count only as
    much as its credibility E_v / (E_v + alpha), leaves every value there, a 15-row one included. The layer
    before the credibility gate and the bin-centre anchor put values up to 0.54 logit away from the global
    map on this data (0.13 of it from training)."""
    rng = np.random.default_rng(11)
    n = 4000
    values = np.concatenate([rng.choice([f"s{i:02d}" for i in range(20)], n), np.full(15, "tiny")])
    p = np.concatenate([1 / (1 + np.exp(-rng.normal(-3, 0.8, n))), np.full(15, 0.03)])
    y = (rng.random(p.size) < p).astype(float)
    stats = compute_calibration_stats(p, y, {"scenario": values})
    layer = fit_adacalib(stats, p, y, {"scenario": values}, epochs=5)
    credibility = layer.tables["scenario"]["credibility"].numpy()
    assert credibility[0] == 1 and np.all(credibility[1:] < 0.01)  # row 0 = the global function

    grid = np.geomspace(0.005, 0.3, 50)

    def calibrated(model: AdaCalib, value: str) -> np.ndarray:
        return model.calibrated_logit(calibration_inputs(grid, {"scenario": np.full(grid.size, value)})).numpy()

    anchor = AdaCalib(stats)  # untrained: the posterior map
    global_map = calibrated(anchor, "never-seen")
    for value in stats.fields["scenario"]:
        np.testing.assert_allclose(calibrated(layer, value), calibrated(anchor, value), atol=0.01)
        np.testing.assert_allclose(calibrated(layer, value), global_map, atol=0.05)
