"""`tfads evaluate`: metrics per head beside the oracle, per-scenario AUC and the plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    assert set(metrics) == {"ctr", "cvr", "ctcvr"}
    ctr = metrics["ctr"]
    for key in ("AUC", "LogLoss", "GAUC", "PCOC", "ECE", "Field-RCE", "Oracle AUC", "Oracle LogLoss"):
        assert key in ctr, key
    assert ctr["Oracle AUC"] > ctr["AUC"] > 0.5  # the true probabilities are the ceiling
    assert metrics["cvr"]["rows"] < metrics["ctr"]["rows"]  # pCVR is evaluated on clicked rows only
    for name in ("per_scenario_auc.csv", "per_scenario_auc.png", "reliability.png", "sparsity_map.png"):
        assert os.path.getsize(out / name) > 0, name


def test_evaluate_cli_reports_a_missing_model_clearly(manifest_path, tmp_path):
    result = _evaluate(str(tmp_path / "nothing"), manifest_path)
    assert result.returncode == 2
    assert "no trained model" in result.stderr and "Traceback" not in result.stderr
