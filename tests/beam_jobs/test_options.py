"""User mistakes give one clear error line and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from beam_jobs.build_examples import run
from beam_jobs.options import JobError, split_days
from tfads.cli import main as tfads_main
from tfads.core.schema import Splits


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_logs_dir(tmp_path, capsys):
    assert run(["--logs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert "--logs" in err and "directory not found" in err


def test_logs_without_impressions(tmp_path, capsys):
    assert run(["--logs", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no impressions files" in _error(capsys)


def test_unknown_flag(feed_logs, tmp_path, capsys):
    assert run(["--logs", feed_logs, "--out", str(tmp_path), "--no_such_flag", "3"]) == 2
    assert "unknown flag(s): --no_such_flag" in _error(capsys)


def test_cold_start_needs_feed(logs_dir, tmp_path, capsys):
    assert run(["--logs", logs_dir, "--out", str(tmp_path), "--cold-start"]) == 2
    assert "no feed files" in _error(capsys)


def test_bad_schema_names_the_file(feed_logs, tmp_path, capsys):
    bad = tmp_path / "schema.yaml"
    bad.write_text("key: trace_id\nbogus: 1\n")
    assert run(["--logs", feed_logs, "--out", str(tmp_path / "out"), "--schema", str(bad)]) == 2
    assert str(bad) in _error(capsys)


def test_tfads_build_uses_the_same_flags(tmp_path, capsys):
    argv = ["build", "--logs", str(tmp_path / "nope"), "--out", str(tmp_path), "--runner", "DirectRunner"]
    assert tfads_main(argv) == 2
    assert "directory not found" in _error(capsys)


def test_split_days_needs_enough_days():
    days = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]
    assert split_days(days, Splits(1, 1, 1)) == {
        "train": days[:2], "valid": days[2:3], "calib": days[3:4], "test": days[4:]
    }
    with pytest.raises(JobError, match="at least 4"):
        split_days(days[:3], Splits(1, 1, 1))
