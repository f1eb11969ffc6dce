"""The layer contract in pyproject.toml covers every module of tfads/, and lint-imports keeps it."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import tfads

ROOT = Path(__file__).resolve().parents[1]


def _layer_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return {name for layer in layers for name in re.split(r"\s*[|:]\s*", layer)}


def test_every_tfads_module_sits_in_a_layer():
    listed = _layer_modules()
    top_level = {f"tfads.{m.name}" for m in pkgutil.iter_modules(tfads.__path__)} - {"tfads.configs"}
    assert top_level - listed == set(), "add these modules to a layer in pyproject.toml [tool.importlinter]"
    assert {"beam_jobs", "serving", "tfads.cli", "tfads.jobs", "tfads.core"} <= listed


def test_lint_imports_rejects_an_upward_import(tmp_path):
    # A copy of the package where the library imports a job: the contracts must break.
    import shutil

    for pkg in ("tfads", "beam_jobs", "serving"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "tfads" / "metrics.py").open("a") as f:
        f.write("\n\ndef _upward():\n    import tfads.jobs.calibrate  # noqa: F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-logo", "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "tfads.metrics is not allowed to import tfads.jobs" in result.stdout
