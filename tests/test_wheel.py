"""The wheel a user installs carries its default configs: `pip wheel .`, a fresh venv, commands run elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the tfads wheel installed; the dependencies come from this venv's
    site-packages through a path file (plain paths: this venv's editable tfads is not seen there)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: setuptools writes build/ beside the sources it builds
    for package in ("tfads", "beam_jobs", "serving"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source)],
                   check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("tfads-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps_from_test_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    return env_dir


def _run(env_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(env_dir / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_wheel_runs_datagen_and_the_beam_build_outside_the_checkout(installed, tmp_path):
    where = _run(installed, tmp_path, "-c", "import tfads.core.defaults as d; print(d.default_config('schema.yaml'))")
    assert where.returncode == 0, where.stderr
    assert str(installed) in where.stdout and str(ROOT) not in where.stdout  # the wheel's copy, not the checkout

    cli = ("-m", "tfads.cli")
    help_text = subprocess.run([str(installed / "bin" / "tfads"), "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "datagen" in help_text.stdout
    gen = _run(installed, tmp_path, *cli, "datagen", "--out", "logs", "--days", "4", "--impressions-per-day", "300")
    assert gen.returncode == 0, gen.stderr
    build = _run(installed, tmp_path, *cli, "build", "--logs", "logs", "--out", "data", "--runner", "DirectRunner")
    assert build.returncode == 0, build.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert sum(s["examples"] for s in manifest["splits"].values()) > 0
    assert manifest["schema"]  # the shipped schema.yaml, copied into the manifest
