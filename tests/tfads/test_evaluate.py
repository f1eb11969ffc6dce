"""`tfads evaluate`: metrics per head beside the oracle, per-scenario AUC and the plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import tfads  # noqa: F401


def _evaluate(model_dir: str, manifest_path: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tfads.cli", "evaluate", "--model-dir", model_dir, "--data", manifest_path, *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_evaluate_cli_writes_metrics_and_plots(trained_model_dir, manifest_path, logs_dir, tmp_path):
    out = tmp_path / "eval"
    result = _evaluate(trained_model_dir, manifest_path, "--logs", logs_dir, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "oracle" in result.stdout
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics) == {"ctr", "cvr", "ctcvr", "against_truth"}
    ctr = metrics["ctr"]
    for key in ("AUC", "LogLoss", "GAUC", "PCOC", "ECE", "Field-RCE", "Oracle AUC", "Oracle LogLoss"):
        assert key in ctr, key
    assert ctr["Oracle AUC"] > ctr["AUC"] > 0.5  # the true probabilities are the ceiling
    assert metrics["cvr"]["rows"] < metrics["ctr"]["rows"]  # pCVR is evaluated on clicked rows only
    for name in ("per_scenario_auc.csv", "per_scenario_auc.png", "reliability.png", "sparsity_map.png"):
        assert os.path.getsize(out / name) > 0, name
    # ESMM over the entire space: pCVR / pCTCVR of every impression against the truth, pCTCVR per field value
    truth = metrics["against_truth"]
    assert list(truth) == ["cvr", "cvr (oracle)", "ctcvr", "ctcvr (oracle)"]
    assert truth["cvr (oracle)"]["KL to truth"] == pytest.approx(0, abs=1e-9)
    assert truth["cvr"]["KL to truth"] > 0 and -1 <= truth["cvr"]["Spearman"] <= 1
    assert "Every impression" in result.stdout and "pCTCVR by scenario" in result.stdout
    for field in ("scenario", "advertiser_id"):  # the default fields: domain-aware and calibration ones
        table = pd.read_csv(out / f"by_{field}_ctcvr.csv")
        assert {"auc", "pcoc", "rce", "oracle_auc"} <= set(table.columns) and table["impressions"].iloc[-1] > 0
    assert os.path.getsize(out / "reliability_cvr_truth.png") > 0


def test_evaluate_cli_reports_a_missing_model_clearly(manifest_path, tmp_path):
    result = _evaluate(str(tmp_path / "nothing"), manifest_path)
    assert result.returncode == 2
    assert "no trained model" in result.stderr and "Traceback" not in result.stderr


def test_a_model_dir_whose_manifest_is_gone_is_named(trained_model_dir, tmp_path):
    import shutil

    from tfads.model_io import RECORD, load_trained_model

    moved = tmp_path / "model"
    shutil.copytree(trained_model_dir, moved)
    record = json.loads((moved / RECORD).read_text())
    (moved / RECORD).write_text(json.dumps({**record, "manifest": str(tmp_path / "gone" / "manifest.json")}))
    with pytest.raises(FileNotFoundError, match=r"gone/manifest.json, is gone; .* restore the data directory"):
        load_trained_model(str(moved))
    assert not (moved / "model").exists()  # a model dir is weights + record + config, no Keras SavedModel
