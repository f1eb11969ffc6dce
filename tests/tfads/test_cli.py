"""The command line: one module per command with one convention, and the commands that wrap serving."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from tfads import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_module_has_add_arguments_and_run(command):
    module = importlib.import_module(cli.module_name(command))
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert callable(module.run)
    assert parser.format_help()  # every flag has a help text that renders


def test_bid_command_sends_requests_and_writes_responses(ab_server, manifest_path, tmp_path, capsys):
    out = tmp_path / "bids.jsonl"
    code = cli.main(["bid", "--target", ab_server, "--data", manifest_path, "--limit", "3", "--candidates", "2",
                     "--deadline-ms", "2000", "--output", str(out), "--quiet"])
    assert code == 0
    responses = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(responses) == 3
    assert all(r["source"] == "model" and len(r["bids"]) == 2 and r["model_version"] in (1, 2) for r in responses)
    summary = capsys.readouterr().out
    assert "arm" in summary.splitlines()[0] and sum(int(line.split()[1]) for line in summary.splitlines()[1:]) == 3


def test_export_command_adds_the_next_version(trained_model_dir, manifest_path, tmp_path, capsys):
    base = tmp_path / "ctr"
    for _ in range(2):
        assert cli.main(["export", "--model-dir", trained_model_dir, "--data", manifest_path,
                         "--model-base-path", str(base)]) == 0
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
    assert "exported" in capsys.readouterr().out


def test_a_missing_model_dir_is_one_error_line(manifest_path, tmp_path, capsys):
    code = cli.main(["export", "--model-dir", str(tmp_path / "nothing"), "--data", manifest_path,
                     "--model-base-path", str(tmp_path / "ctr")])
    err = capsys.readouterr().err
    assert code == 2 and "tfads export: error:" in err and "Traceback" not in err
