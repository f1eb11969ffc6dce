"""benchmarks.results: each result file records its command, commit, date and machine beside the data."""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.results import add_results_argument, publish


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_results_argument(parser)
    return parser.parse_args(list(argv))


def test_publish_writes_json_and_markdown_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--rows", "10"])
    md = publish("probe", {"speedup": 2.5}, "| a | b |\n|---|---|\n| 1 | 2 |", _options("--results-dir", str(tmp_path)))
    data = json.loads((tmp_path / "probe.json").read_text())
    assert data["results"] == {"speedup": 2.5}
    assert data["command"] == "python -m benchmarks.probe --rows 10"
    assert data["commit"] != "" and data["date"].endswith("UTC")
    assert data["machine"]["cpus"] >= 1 and "avx512_bf16" in data["machine"]
    text = md.read_text()
    assert text.startswith("# benchmarks.probe") and "| 1 | 2 |" in text and "[probe.json](probe.json)" in text


def test_a_plain_text_table_is_kept_preformatted(tmp_path):
    md = publish("plain", {}, "seconds  12.5", _options("--results-dir", str(tmp_path), "--results-name", "other"))
    assert md.name == "other.md" and (tmp_path / "other.json").exists()
    assert md.read_text().startswith("# benchmarks.plain") and "```\nseconds  12.5\n```" in md.read_text()
