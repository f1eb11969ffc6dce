"""keras-tuner sweeps: search-space validation, a tiny sweep whose best config trains, resume after a
kill, and a chief with two workers on 127.0.0.1 running every trial exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import free_port
from tfads.cli import main
from tfads.core.configtools import ConfigError
from tfads.jobs.tune.config import load_tune_config

REPO = Path(__file__).resolve().parents[2]
TINY_EXPERIMENT = {
    "schema": str(REPO / "configs" / "schema.yaml"),
    "model": {"embedding_dim": 4, "deep_units": [16], "tower_units": [8], "cross": {"layers": 1}},
    "train": {"batch_size": 128, "epochs": 1, "steps_per_epoch": 3, "shuffle_buffer": 500},
}
BUDGET = {"epochs": 1, "steps_per_epoch": 2, "validation_steps": 2}


def write_tune(tmp_path: Path, space: dict, *, flags: dict | None = None, **oracle) -> Path:
    """A tune YAML over the tiny experiment, both written into ``tmp_path``."""
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(TINY_EXPERIMENT))
    tune = {"experiment": "exp.yaml", "oracle": {"type": "random", "seed": 3, **oracle}, "budget": BUDGET}
    tune.update(space=space, flags=flags or {})
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(tune, sort_keys=False))
    return path


def tune_argv(config: Path, manifest: str, sweep: Path) -> list[str]:
    return ["tune", "--config", str(config), "--data", manifest, "--dir", str(sweep)]


def results_by_trial(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep / "trials").glob("trial_*/result.json")}


def attempts(sweep: Path, trial: str) -> list[Path]:
    return sorted((sweep / "trials" / trial).glob("attempt-*.json"))


def test_example_tune_config_loads():
    tune = load_tune_config(REPO / "configs" / "tune.yaml")
    names = [p.name for p in tune.space.params]
    assert {"model.cross.projection_dim", "model.adasparse.form", "train.learning_rate"} <= set(names)
    lr = next(p for p in tune.space.params if p.name == "train.learning_rate")
    assert lr.kind == "float" and lr.log


def test_conditional_key_follows_its_flag(tmp_path):
    space = {
        "model.cross.projection_dim": {"choice": [4, 8], "when": {"low_rank": [True]}, "otherwise": None},
        "model.embedding_dim": {"int": [4, 16], "step": 4},
    }
    tune = load_tune_config(write_tune(tmp_path, space, flags={"low_rank": {"choice": [False, True]}}))
    base = tune.experiment.to_dict()
    base["model"]["cross"]["projection_dim"] = 99
    low = tune.space.apply(base, {"low_rank": True, "model.cross.projection_dim": 8, "model.embedding_dim": 12})
    full = tune.space.apply(base, {"low_rank": False, "model.cross.projection_dim": 8, "model.embedding_dim": 4})
    assert low["model"]["cross"]["projection_dim"] == 8 and low["model"]["embedding_dim"] == 12
    assert full["model"]["cross"]["projection_dim"] is None  # inactive: `otherwise`, not the sampled 8
    assert "low_rank" not in full and "low_rank" not in full["model"]
    hp = tune.space.hyperparameters()
    assert not hp.is_active("model.cross.projection_dim")  # default low_rank=False


@pytest.mark.parametrize(
    ("key", "spec", "problem"),
    [
        ("model.cross.projektion_dim", {"int": [2, 8]}, "unknown config key"),
        ("model.cross", {"choice": [1, 2]}, "is a section"),
        ("model.embedding_dim", {"int": [16, 4]}, "low < high"),
        ("model.embedding_dim", {"choice": ["big", "small"]}, "expected an integer"),
        ("model.embedding_dim", {"float": [1, 8]}, "expected an integer"),
        ("model.adasparse.form", {"choice": ["fusion", "pruning"]}, "expected one of"),
        ("train.learning_rate", {"float": [0.0, 0.1], "log": True}, "log sampling needs low > 0"),
        ("train.learning_rate", {"float": [0.001, 0.1], "sample": "log"}, "unknown spec key 'sample'"),
        ("model.cross.projection_dim", {"int": [2, 8], "when": {"low_rank": [True]}}, "not a choice flag"),
        ("model.cross.projection_dim", {"choice": [None, 8]}, "`otherwise: null`"),
    ],
)
def test_bad_search_space_names_file_and_key(tmp_path, key, spec, problem):
    path = write_tune(tmp_path, {key: spec})
    with pytest.raises(ConfigError) as err:
        load_tune_config(path)
    assert str(path) in str(err.value) and f"space.{key}" in str(err.value) and problem in str(err.value)


def test_cli_reports_bad_space_without_traceback(tmp_path, capsys):
    path = write_tune(tmp_path, {"model.embeding_dim": {"choice": [4, 8]}})
    assert main(tune_argv(path, "unused.json", tmp_path / "sweep")) == 2
    err = capsys.readouterr().err
    assert f"tfads tune: error: {path}: space.model.embeding_dim: unknown config key" in err
    assert "Traceback" not in err


def test_tiny_sweep_records_failure_and_writes_best_config_that_trains(tmp_path, manifest_path):
    from tfads.core.experiment import load_experiment
    from tfads.train import train

    # r_min 0.5 > r_max 0.25 makes one of the two trials fail; the sweep must go on and report it.
    path = write_tune(tmp_path, {"model.adasparse.r_min": {"choice": [0.1, 0.5]}}, max_trials=2)
    sweep = tmp_path / "sweep"
    assert main(tune_argv(path, manifest_path, sweep)) == 0

    table = pd.read_csv(sweep / "results.csv")
    assert sorted(table["status"]) == ["COMPLETED", "FAILED"]
    assert table["status"].iloc[0] == "COMPLETED"  # sorted by objective, failures last
    failed = table[table["status"] == "FAILED"].iloc[0]
    assert failed["model.adasparse.r_min"] == 0.5 and "r_min" in failed["error"]
    assert "| trial | status | val_ctr_auc |" in (sweep / "results.md").read_text()
    for png in ("objective.png", "hparams.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"

    config = load_experiment(sweep / "best.yaml")  # unchanged, exactly as `tfads train --config` loads it
    assert config.model.adasparse.r_min == 0.1 and config.model.embedding_dim == 4
    result = train(config, manifest_path, str(tmp_path / "model"), verbose=0)
    assert result.epochs_run == 1 and os.path.isdir(result.model_path)


def test_killed_sweep_resumes_without_redoing_finished_trials(tmp_path, manifest_path):
    path = write_tune(tmp_path, {"train.learning_rate": {"float": [1e-3, 1e-2], "log": True}}, max_trials=2)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "tfads.cli", *tune_argv(path, manifest_path, sweep)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:  # kill it while trial 1 trains, i.e. after trial 0's result file is written
        for line in proc.stderr:
            if "trial 1 started" in line:
                break
        assert (sweep / "trials" / "trial_0" / "result.json").is_file()
        assert not (sweep / "trials" / "trial_1" / "result.json").exists()
    finally:
        proc.kill()
        proc.wait()
    first = results_by_trial(sweep)["trial_0"]

    assert main(tune_argv(path, manifest_path, sweep)) == 0
    results = results_by_trial(sweep)
    assert sorted(results) == ["trial_0", "trial_1"]
    assert all(r["status"] == "COMPLETED" for r in results.values())
    assert results["trial_0"] == first and first["pid"] == proc.pid  # not redone by the second run
    assert len(attempts(sweep, "trial_0")) == 1
    assert results["trial_1"]["pid"] == os.getpid() and len(attempts(sweep, "trial_1")) == 2  # killed one rerun
    assert len(pd.read_csv(sweep / "results.csv")) == 2


def test_distributed_chief_and_two_workers_run_every_trial_once(tmp_path, manifest_path):
    path = write_tune(tmp_path, {"train.learning_rate": {"float": [1e-3, 1e-2], "log": True}}, max_trials=2)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "tfads.cli", *tune_argv(path, manifest_path, sweep)]
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(free_port())}
    procs = {
        tuner_id: subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **oracle, "KERASTUNER_TUNER_ID": tuner_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    try:
        outputs = {tuner_id: p.communicate(timeout=240)[0] for tuner_id, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    tails = {t: out[-3000:] for t, out in outputs.items()}
    assert {t: p.returncode for t, p in procs.items()} == {"chief": 0, "tuner0": 0, "tuner1": 0}, tails
    assert "best config" in outputs["chief"] and "no trials left" in outputs["tuner0"]

    results = results_by_trial(sweep)
    assert sorted(results) == ["trial_0", "trial_1"]
    for trial, result in results.items():
        assert result["status"] == "COMPLETED" and result["tuner_id"] in ("tuner0", "tuner1")
        assert len(attempts(sweep, trial)) == 1, trial  # done exactly once, by one worker
    assert (sweep / "best.yaml").is_file() and len(pd.read_csv(sweep / "results.csv")) == 2
