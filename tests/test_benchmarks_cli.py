"""`make bench` (benchmarks.run_all): every benchmark's command line is accepted, and a missing demo is named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks import run_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "--not-a-flag-of-any-benchmark"


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_every_benchmark_accepts_the_arguments_run_all_gives_it(name, tmp_path):
    # argparse reports missing or malformed arguments before unrecognized ones, so the probe flag being
    # the only complaint means every argument run_all passes is accepted (and the benchmark never runs).
    argv = run_all.benchmark_args(name, run_all.demo_files(str(tmp_path / "demo")), str(tmp_path / "out"))
    command = [sys.executable, "-m", f"benchmarks.{name}", *argv, PROBE]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"error: unrecognized arguments: {PROBE}" in proc.stderr, proc.stderr[-2000:]


def test_missing_demo_exports_are_named_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(["--demo-dir", str(tmp_path), "--only", "serving_latency"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "models" / "ctr") in err and "make demo" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sustain_s", "0.1"], "--sustain_s 0.1: need at least 0.4 s"),
        (["--gaps_ms", "-1"], "--idle_s and --gaps_ms must be >= 0"),
    ],
)
def test_host_idle_names_a_bad_setting(argv, message, capsys):
    from benchmarks import host_idle

    with pytest.raises(SystemExit) as exit_info:
        host_idle.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_beam_build_bare_runner_runs_in_two_watched_worker_processes(monkeypatch):
    # The memory study's "bare runner" row: its subprocess must run and show the DirectRunner's two SDK
    # workers to the same process filter as the job's rows (their peak is what the study reports).
    from benchmarks.beam_build import _row
    from benchmarks.process_tree import run_watched

    monkeypatch.chdir(ROOT)
    run = run_watched([sys.executable, "-m", "benchmarks.beam_build", "--bare-runner", "3000000", "10000", "2"])
    row = _row("bare runner", run, 1)
    assert len(row["worker_cpu_s"]) == 2
    assert row["worker_peak_mib"] > 0
