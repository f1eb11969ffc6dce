"""The A/B switch: deterministic bucketing that matches the shares, hot reload, broken reload."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from serving.bidding import BiddingParams
from serving.experiment import Arm, Experiment, ExperimentWatcher, load_experiment_file
from tfads.core.configtools import ConfigError

DEFAULT = Path(__file__).resolve().parents[2] / "configs" / "ab_experiment.yaml"

YAML = """\
name: {name}
salt: s1
arms:
  - {{name: control, share: {control}, model_name: ctr, version_label: stable, bidding: {{outputs: raw}}}}
  - {{name: treatment, share: {treatment}, model_name: ctr, version_label: canary}}
"""


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or a config push would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_default_experiment_loads():
    experiment = load_experiment_file(DEFAULT)
    assert [a.name for a in experiment.arms] == ["control", "treatment"]
    assert experiment.arm("control").version_label == "stable"
    assert experiment.arm("control").bidding.output_names == ("ctr_raw", "cvr_raw")
    assert experiment.arm("treatment").bidding.output_names == ("ctr", "cvr")


def test_assignment_is_deterministic_and_matches_shares():
    experiment = Experiment("e", "salt", [Arm("a", 0.2), Arm("b", 0.3), Arm("c", 0.5)])
    users = range(100_000)
    first = [experiment.assign(u).name for u in users]
    again = Experiment("e", "salt", [Arm("a", 0.2), Arm("b", 0.3), Arm("c", 0.5)])
    assert first == [again.assign(u).name for u in users]
    counts = Counter(first)
    for arm in experiment.arms:
        assert abs(counts[arm.name] / 100_000 - arm.share) < 0.01
    resalted = Experiment("e", "other", experiment.arms)
    moved = sum(a != resalted.assign(u).name for u, a in zip(users, first, strict=True))
    assert moved > 30_000  # a new salt reshuffles users


def test_shares_and_arms_are_validated(tmp_path):
    path = tmp_path / "ab.yaml"
    write(path, YAML.format(name="x", control=0.5, treatment=0.6))
    with pytest.raises(ConfigError, match="shares must add up to 1"):
        load_experiment_file(path)
    write(path, YAML.format(name="x", control=0.5, treatment=0.5).replace("outputs: raw", "outputs: rawest"))
    with pytest.raises(ConfigError, match=r"arms\[0\]\.bidding\.outputs"):
        load_experiment_file(path)
    with pytest.raises(ValueError, match="not both"):
        Arm("a", 1.0, version_label="stable", version=3)
    with pytest.raises(ValueError, match="shading"):
        BiddingParams(shading=float("nan"))


def test_hot_reload_applies_a_changed_file(tmp_path):
    path = tmp_path / "ab.yaml"
    write(path, YAML.format(name="v1", control=1.0, treatment=0.0))
    with ExperimentWatcher(path, poll_seconds=3600) as watcher:
        assert {watcher.experiment.assign(u).name for u in range(200)} == {"control"}
        assert watcher.check() is False  # unchanged file: nothing to do
        write(path, YAML.format(name="v2", control=0.0, treatment=1.0))
        assert watcher.check() is True
        assert watcher.experiment.name == "v2" and watcher.reloads == 1
        assert {watcher.experiment.assign(u).name for u in range(200)} == {"treatment"}


def test_watcher_thread_picks_up_a_change(tmp_path):
    path = tmp_path / "ab.yaml"
    write(path, YAML.format(name="v1", control=0.5, treatment=0.5))
    watcher = ExperimentWatcher(path, poll_seconds=0.01)
    reloaded = threading.Event()
    original = watcher.check

    def check() -> bool:
        changed = original()
        if changed:
            reloaded.set()
        return changed

    watcher.check = check
    with watcher:
        write(path, YAML.format(name="v2", control=0.5, treatment=0.5))
        assert reloaded.wait(10)
    assert watcher.experiment.name == "v2"


def test_broken_reload_keeps_last_good_config(tmp_path, caplog):
    path = tmp_path / "ab.yaml"
    write(path, YAML.format(name="good", control=0.5, treatment=0.5))
    watcher = ExperimentWatcher(path)
    before = [watcher.experiment.assign(u).name for u in range(500)]
    with caplog.at_level(logging.ERROR, logger="serving.experiment"):
        write(path, "name: broken\nsalt: [unclosed\n")
        assert watcher.check() is False
        write(path, YAML.format(name="bad-shares", control=0.9, treatment=0.9))
        assert watcher.check() is False
    assert watcher.experiment.name == "good" and watcher.reload_errors == 2
    assert "shares must add up to 1" in watcher.last_error
    assert "experiment reload rejected" in caplog.text
    assert [watcher.experiment.assign(u).name for u in range(500)] == before
    write(path, YAML.format(name="fixed", control=0.5, treatment=0.5))
    assert watcher.check() is True and watcher.last_error is None


def test_broken_initial_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        ExperimentWatcher(tmp_path / "missing.yaml")
