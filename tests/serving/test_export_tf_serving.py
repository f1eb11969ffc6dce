"""Exports that the stock tensorflow/serving image loads: TensorFlow's own saved_model_cli reads and runs
every exported version (answers compared with Keras), and every op in the graphs is a core TF op."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.export import WARMUP_FILE
from tfads.train import load_trained_model

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
SIGNATURES = ("serving_default", "predict_examples", "regress", "classify")
# Run with only TensorFlow imported (no tf_keras, tfrs or tfads): is every op of the exported graphs,
# functions included, registered? Prints the missing ones as JSON.
_CORE_OPS_SCRIPT = """
import json, sys
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
proto = saved_model_pb2.SavedModel()
proto.ParseFromString(open(sys.argv[1], "rb").read())
ops = set()
for meta_graph in proto.meta_graphs:
    graph = meta_graph.graph_def
    ops |= {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
functions = {f.signature.name for m in proto.meta_graphs for f in m.graph_def.library.function}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_keras", "tfrs", "tensorflow_recommenders", "tfads"))
print(json.dumps({"missing": sorted(op for op in ops - functions if op_def_registry.get(op) is None),
                  "ops": len(ops), "foreign_modules": loaded}))
"""


def _tensorflow_only_env() -> dict[str, str]:
    """This environment without TF_USE_LEGACY_KERAS (set by ``import tfads``; it makes TF load tf_keras)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def versions(ab_models) -> list[str]:
    """Every version the session's trained model was exported as (serving/export.py's output)."""
    base = ab_models.parent / "ctr"
    return [str(base / v) for v in sorted(os.listdir(base), key=int)]


def _cli(*args: str) -> str:
    proc = subprocess.run([SAVED_MODEL_CLI, *args], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _warmup_rows(version: str) -> dict[str, np.ndarray]:
    """Raw feature columns of the version's first warmup request (real rows of the data)."""
    record = next(iter(tf.data.TFRecordDataset(os.path.join(version, WARMUP_FILE))))
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    return {k: tf.make_ndarray(v) for k, v in request.inputs.items()}


def _examples_literal(rows: dict[str, np.ndarray]) -> str:
    """saved_model_cli's --input_examples value: a list of {feature: [values]} dicts."""
    n = len(next(iter(rows.values())))
    examples = [
        {k: [v[i].decode() if isinstance(v[i], bytes) else v[i].item()] for k, v in rows.items()} for i in range(n)
    ]
    return repr(examples)


def test_saved_model_cli_show_all(versions):
    for version in versions:
        out = _cli("show", "--all", "--dir", version)
        for name in SIGNATURES:
            assert f"signature_def['{name}']" in out
        assert "Method name is: tensorflow/serving/predict" in out


def test_saved_model_cli_run_with_input_examples_matches_keras(versions, trained_model_dir, tmp_path):
    model = load_trained_model(trained_model_dir, float32_matmuls=True)  # what `tfads export` serves
    for version in versions:
        rows = _warmup_rows(version)
        expected = model({k: tf.constant(v) for k, v in rows.items()}, training=False)
        outdir = tmp_path / os.path.basename(version)
        examples = f"examples={_examples_literal(rows)}"
        _cli(
            "run",
            "--dir",
            version,
            "--tag_set",
            "serve",
            "--signature_def",
            "predict_examples",
            "--input_examples",
            examples,
            "--outdir",
            str(outdir),
        )
        served = tf.saved_model.load(version).signatures["serving_default"](
            **{k: tf.constant(v) for k, v in rows.items()}
        )
        for name in ("ctr", "cvr", "ctcvr"):
            got = np.load(outdir / f"{name}.npy")
            np.testing.assert_allclose(got, served[name].numpy(), rtol=1e-6, atol=1e-7)  # same graph, other runner
            np.testing.assert_allclose(got, np.reshape(expected[name], [-1]), rtol=1e-5, atol=1e-6)


def test_every_op_is_a_core_tensorflow_op(versions):
    for version in versions:
        proc = subprocess.run(
            [sys.executable, "-c", _CORE_OPS_SCRIPT, os.path.join(version, "saved_model.pb")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            env=_tensorflow_only_env(),
        )
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["foreign_modules"] == [], report
        assert report["ops"] > 0 and report["missing"] == [], f"{version}: ops TF alone does not register: {report}"
