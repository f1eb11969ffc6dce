"""benchmarks.results: each result file records its command, commit, date and machine beside the data."""

from __future__ import annotations

import json
import sys

from benchmarks.results import publish


def test_publish_writes_json_and_markdown_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x", "--rows", "10"])
    md = publish("probe", {"speedup": 2.5}, "| a | b |\n|---|---|\n| 1 | 2 |", tmp_path)
    data = json.loads((tmp_path / "probe.json").read_text())
    assert data["results"] == {"speedup": 2.5}
    assert data["command"] == "python -m benchmarks.probe --rows 10"
    assert data["commit"] != "" and data["date"].endswith("UTC")
    assert data["machine"]["cpus"] >= 1 and "avx512_bf16" in data["machine"]
    text = md.read_text()
    assert text.startswith("# benchmarks.probe") and "| 1 | 2 |" in text and "[probe.json](probe.json)" in text


def test_a_plain_text_table_is_kept_preformatted(tmp_path):
    md = publish("plain", {}, "seconds  12.5", tmp_path)
    assert "```\nseconds  12.5\n```" in md.read_text()
