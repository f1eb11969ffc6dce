"""serving/tfserving: each file parses as its TF Serving proto, and the embedded server runs with them."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf
from google.protobuf import text_format

from serving.server import ModelServer, parse_flags
from serving.server.configs import BatchingParameters, ModelServerConfig, MonitoringConfig
from serving.server.testing import Stubs, free_port, predict_request
from serving.server.toy_model import candidates, save_toy_model
from tfads import cli

ROOT = Path(__file__).resolve().parents[2]
TFSERVING = ROOT / "serving" / "tfserving"
PROTOS = {
    "models.config": ModelServerConfig,
    "batching.config": BatchingParameters,
    "monitoring.config": MonitoringConfig,
}


@pytest.mark.parametrize("name", sorted(PROTOS))
def test_config_file_parses_strictly_as_its_proto(name):
    message = text_format.Parse((TFSERVING / name).read_text(), PROTOS[name]())
    assert message.ByteSize() > 0


def test_models_config_labels_point_at_served_versions():
    config = text_format.Parse((TFSERVING / "models.config").read_text(), ModelServerConfig())
    (model,) = config.model_config_list.config
    assert set(model.version_labels) == {"stable", "canary"}
    assert set(model.version_labels.values()) <= set(model.model_version_policy.specific.versions)


def test_compose_and_k8s_launch_tf_serving_with_the_same_files():
    compose = yaml.safe_load((TFSERVING / "docker-compose.yml").read_text())["services"]["tfserving"]
    deployment = next(d for d in yaml.safe_load_all((TFSERVING / "k8s.yaml").read_text()) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert compose["image"] == container["image"] and compose["image"].startswith("tensorflow/serving:")
    assert compose["command"] == container["args"]
    for name in PROTOS:
        assert any(arg.endswith(f"=/config/{name}") for arg in container["args"])
    flags = parse_flags(container["args"])  # the embedded server accepts the production flags
    assert flags.enable_batching and flags.rest_api_port == 8501
    model = text_format.Parse((TFSERVING / "models.config").read_text(), ModelServerConfig())
    assert any(v.endswith(":" + model.model_config_list.config[0].base_path + ":ro") for v in compose["volumes"])


@pytest.fixture(scope="module")
def local_configs(tmp_path_factory) -> Path:
    """The production files, with base_path moved to a temp dir holding toy versions 1 and 2."""
    root = tmp_path_factory.mktemp("prod")
    base = root / "ctr"
    save_toy_model(str(base / "1"), bias=0.0, model_name="ctr")
    save_toy_model(str(base / "2"), bias=0.5, model_name="ctr")
    for name in PROTOS:
        (root / name).write_text((TFSERVING / name).read_text().replace('"/models/ctr"', f'"{base}"'))
    return root


def production_flags(configs: Path, rest_port: int) -> list[str]:
    return [
        "--port=0",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={configs / 'models.config'}",
        "--file_system_poll_wait_seconds=0",
        "--enable_batching=true",
        f"--batching_parameters_file={configs / 'batching.config'}",
        f"--monitoring_config_file={configs / 'monitoring.config'}",
    ]


def test_embedded_server_runs_with_production_configs(local_configs):
    rest_port = free_port()
    with ModelServer(parse_flags(production_flags(local_configs, rest_port))) as server:
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        stubs.wait_serving()
        for label, version in (("stable", 1), ("canary", 2)):
            response = stubs.predict.Predict(predict_request("ctr", candidates(100), version_label=label), timeout=10)
            assert response.model_spec.version.value == version and len(response.outputs["ctr"].float_val) == 100
        # concurrent requests may share a batch; each must get back its own rows
        requests = [predict_request("ctr", candidates(50 + i, seed=i), version_label="canary") for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda r: stubs.predict.Predict(r, timeout=30), requests))
        fn = tf.saved_model.load(str(local_configs / "ctr" / "2")).signatures["serving_default"]
        for i, response in enumerate(responses):
            expected = fn(**{k: tf.constant(v) for k, v in candidates(50 + i, seed=i).items()})["ctr"].numpy()
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["ctr"]), expected, rtol=1e-6)
        conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
        conn.request("GET", "/monitoring/prometheus/metrics")
        metrics = conn.getresponse().read().decode()
        assert 'model_name="ctr",status="OK"' in metrics
        stubs.channel.close()


def test_cli_serves_until_sigterm(local_configs):
    rest_port = free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", *production_flags(local_configs, rest_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the models are loaded
        assert line.startswith("serving gRPC on 127.0.0.1:"), line
        grpc_port = int(line.split(":")[1].split(",")[0])
        stubs = Stubs.connect(f"127.0.0.1:{grpc_port}")
        stubs.wait_serving()
        conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=10)
        conn.request("GET", "/v1/models/ctr/labels/canary")
        assert json.loads(conn.getresponse().read())["model_version_status"][0]["version"] == "2"
        stubs.channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 'x' ")
    assert cli.main(["serve", "--port=0", f"--model_config_file={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"Invalid protobuf file: '{bad}'" in err and "Traceback" not in err
    assert cli.main(["serve", "--port=0"]) == 2
    assert "model_base_path are empty" in capsys.readouterr().err
