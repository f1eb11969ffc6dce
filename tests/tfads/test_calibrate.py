"""`tfads calibrate` end to end on the session model: Beam statistics, AdaCalib, the combined model."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401

from tfads.core.manifest import load_manifest
from tfads.metrics import field_rce, per_field_auc
from tfads.predict import predict_split
from tfads.train import load_trained_model


@pytest.fixture(scope="module")
def calibrated(trained_model_dir, manifest_path, logs_dir, tmp_path_factory):
    from tfads.jobs.calibrate import calibrate_and_report

    out = str(tmp_path_factory.mktemp("calibrated"))
    return calibrate_and_report(trained_model_dir, manifest_path, out, logs=logs_dir, epochs=3)


def test_combined_model_has_raw_and_calibrated_heads(calibrated, trained_model_dir, manifest_path):
    manifest = load_manifest(manifest_path)
    scored = predict_split(load_trained_model(calibrated.model_path), manifest, "test")
    base = predict_split(load_trained_model(trained_model_dir), manifest, "test")
    for k in ("ctr", "cvr", "ctcvr"):
        # the frozen base model is untouched: raw outputs equal the base model's outputs
        np.testing.assert_allclose(scored[f"{k}_raw"].to_numpy(), base[k].to_numpy(), atol=1e-6)
        assert np.all((scored[k] > 0) & (scored[k] < 1))
    # the served pCTCVR is what an oCPA bid multiplies: calibrated pCTR x calibrated pCVR (decision 0035)
    np.testing.assert_allclose(scored["ctcvr"], scored["ctr"] * scored["cvr"], rtol=1e-5)
    assert not np.allclose(scored["cvr"], scored["cvr_raw"])  # pCVR has a layer of its own
    for head in ("ctr", "cvr"):  # monotone per scenario: sorted by the raw head, the calibrated one never drops
        ordered = scored.sort_values(["scenario", f"{head}_raw"], kind="stable")
        steps = ordered.groupby("scenario")[head].diff().dropna()
        assert steps.min() >= -1e-6, (head, steps.min())
    # the ranking inside each scenario is unchanged
    y = scored["click"].to_numpy()
    raw = per_field_auc(y, scored["ctr_raw"].to_numpy(), scored["scenario"].to_numpy()).set_index("value")
    cal = per_field_auc(y, scored["ctr"].to_numpy(), scored["scenario"].to_numpy()).set_index("value")
    both = raw.merge(cal, left_index=True, right_index=True, suffixes=("", "_cal")).dropna()
    assert len(both) > 10
    np.testing.assert_allclose(both["auc"], both["auc_cal"], atol=2e-3)


def test_report_compares_adacalib_with_baselines(calibrated, manifest_path):
    rows = calibrated.rows
    assert {"uncalibrated", "Platt", "isotonic", "per-field isotonic", "NeuCalib", "AdaCalib"} <= set(rows)
    assert all(str(f).endswith((".md", ".json", ".png")) for f in calibrated.files)
    # The calib day (~6k rows, ~300 scenarios, ~200 clicks): the layer removes much of the per-scenario bias.
    # Since the generator's user interests (a per-user term the scenario cannot explain) the in-sample ratio
    # varies with the session model: 0.72 in one CI run (0.375 vs 0.520), below 0.6 in another.
    calib = predict_split(calibrated.model, load_manifest(manifest_path), "calib")
    y, scenario = calib["click"].to_numpy(), calib["scenario"].to_numpy()
    raw_rce = field_rce(y, calib["ctr_raw"].to_numpy(), scenario)
    cal_rce = field_rce(y, calib["ctr"].to_numpy(), scenario)
    assert cal_rce < 0.85 * raw_rce, (cal_rce, raw_rce)
    # The test day: no per-scenario Field-RCE claim here. The fixture's scenario biases drift from one day to
    # the next (docs/methods/calibration.md "AdaCalib": even the calib day's true per-scenario shifts barely
    # transfer), so on 6k rows a field-level calibrator cannot be expected to beat the raw model there. What must
    # hold out of sample: the likelihood does not get worse (a wrong calibrator, e.g. overfitted noise or a
    # wrong level, raises log loss) and the ranking stays close (within a scenario it is unchanged).
    # Over five local runs of the session model: log-loss ratio 0.985-1.005, AUC change -0.017 to -0.023; one CI
    # run's model gave -0.043 (the per-scenario shifts learnt on the calib day move scenarios past each other on
    # the test day; inside a scenario the order is unchanged, see the test above). The bound below catches a
    # calibrator that scrambles the ranking, not that drift.
    assert rows["AdaCalib"]["LogLoss"] <= 1.02 * rows["uncalibrated"]["LogLoss"]
    assert rows["AdaCalib"]["AUC"] >= rows["uncalibrated"]["AUC"] - 0.07
    assert 0.5 < rows["AdaCalib"]["PCOC"] < 1.5


def test_report_covers_every_head_on_its_own_rows(calibrated):
    assert set(calibrated.results) == {"test"}  # no --holdout: the test day only
    rows = calibrated.results["test"]
    assert set(rows) == {"ctr", "cvr", "ctcvr"}
    test = calibrated.test
    clicked, impressions = int(test["click"].sum()), len(test)
    for head, n in (("ctr", impressions), ("cvr", clicked), ("ctcvr", impressions)):
        assert {"uncalibrated", "per-field isotonic", "AdaCalib"} <= set(rows[head])
        assert len(calibrated.preds["test"][head]["AdaCalib"]) == n  # pCVR on clicked rows only
    # a baseline's pCTCVR is its pCTR x its pCVR, as AdaCalib's is
    preds, clicks = calibrated.preds["test"], test["click"].to_numpy() == 1
    np.testing.assert_allclose(preds["ctcvr"]["isotonic"][clicks], (preds["ctr"]["isotonic"][clicks]
                                                                    * preds["cvr"]["isotonic"]), rtol=1e-6)
    assert "pCTCVR on the test day" in calibrated.table and "pCVR on the test day" in calibrated.table


def test_calibrate_without_a_calib_split_says_what_it_needs(logs_dir, trained_model_dir, tmp_path, capsys):
    import yaml

    from tfads import cli
    from tfads.core.schema import DEFAULT_SCHEMA
    from tfads.jobs.dataset import build_dataset

    schema = yaml.safe_load(DEFAULT_SCHEMA.read_text())
    schema["splits"]["calib_days"] = 0
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    manifest = build_dataset(logs_dir, str(tmp_path / "data"), schema=str(tmp_path / "schema.yaml"))
    code = cli.main(["calibrate", "--model-dir", trained_model_dir, "--data", manifest, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "no calib split; set splits.calib_days >= 1" in err and "Traceback" not in err
    assert "--calib-from-valid" in err
    # ... or a held-out slice of valid: one of each valid day's two shards
    held = load_manifest(manifest).with_calib_from("valid", 0.5)
    valid = load_manifest(manifest).data["splits"]["valid"]["files"]
    assert held.data["splits"]["calib"]["files"] == [f for f in valid if "part-00001-of-00002" in f]
    assert held.data["splits"]["valid"]["files"] == [f for f in valid if "part-00000-of-00002" in f]
    code = cli.main(["calibrate", "--model-dir", trained_model_dir, "--data", manifest, "--out", str(tmp_path / "c"),
                     "--calib-from-valid", "0.5", "--epochs", "1"])
    assert code == 0 and (tmp_path / "c" / "report" / "calibration.md").exists()
    assert cli.main(["calibrate", "--model-dir", trained_model_dir, "--data", manifest, "--out", str(tmp_path / "d"),
                     "--calib-from-valid", "1.5"]) == 2
    assert "expected a fraction between 0 and 1" in capsys.readouterr().err
