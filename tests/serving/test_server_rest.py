"""Conformance of the embedded server's REST API with TF Serving's api_rest.md (JSON shapes, errors)."""

from __future__ import annotations

import base64
import http.client
import json

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import tensorflow as tf

from serving.server import ModelServer, parse_flags
from serving.server.testing import Stubs, free_port
from serving.server.toy_model import OUTPUTS, candidates, example

CONFIG = """
model_config_list {
  config {
    name: "toy"
    base_path: "%s"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""
MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'


@pytest.fixture(scope="module")
def server(toy_base, tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg")
    (cfg / "models.config").write_text(CONFIG % toy_base)
    (cfg / "monitoring.config").write_text(MONITORING)
    args = parse_flags(
        [
            "--port=0",
            f"--rest_api_port={free_port()}",
            f"--model_config_file={cfg / 'models.config'}",
            f"--monitoring_config_file={cfg / 'monitoring.config'}",
            "--file_system_poll_wait_seconds=0",
        ]
    )
    with ModelServer(args) as srv:
        Stubs.connect(f"127.0.0.1:{srv.grpc_port}").wait_serving()
        yield srv


def call(server, method: str, path: str, body=None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(raw) if is_json else raw.decode()


def reference(toy_base: str, version: int, inputs: dict) -> dict:
    fn = tf.saved_model.load(f"{toy_base}/{version}").signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def test_model_status_json_shape(server):
    status, body = call(server, "GET", "/v1/models/toy")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in (2, 1)
        ]
    }
    assert [s["version"] for s in call(server, "GET", "/v1/models/toy/versions/1")[1]["model_version_status"]] == ["1"]
    assert [s["version"] for s in call(server, "GET", "/v1/models/toy/labels/canary")[1]["model_version_status"]] == [
        "2"
    ]


def test_metadata_json_shape(server):
    status, body = call(server, "GET", "/v1/models/toy/labels/stable/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    default = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["bid_floor"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["media"]["tensor_shape"]["dim"][0]["size"] == "-1"


def test_predict_row_format_matches_model(server, toy_base):
    inputs = candidates(4)
    rows = [
        {"media": m.decode(), "slot_id": int(s), "bid_floor": float(b)}
        for m, s, b in zip(inputs["media"], inputs["slot_id"], inputs["bid_floor"], strict=True)
    ]
    status, body = call(server, "POST", "/v1/models/toy:predict", {"instances": rows})
    assert status == 200
    expected = reference(toy_base, 2, inputs)
    assert len(body["predictions"]) == 4 and set(body["predictions"][0]) == set(OUTPUTS)
    np.testing.assert_allclose([p["ctr"] for p in body["predictions"]], expected["ctr"], rtol=1e-6)


def test_predict_columnar_format_with_b64_and_version(server, toy_base):
    inputs = candidates(3)
    columns = {
        "media": [{"b64": base64.b64encode(m).decode()} for m in inputs["media"]],
        "slot_id": inputs["slot_id"].tolist(),
        "bid_floor": inputs["bid_floor"].tolist(),
    }
    status, body = call(server, "POST", "/v1/models/toy/versions/1:predict", {"inputs": columns})
    assert status == 200 and set(body["outputs"]) == set(OUTPUTS)
    np.testing.assert_allclose(body["outputs"]["cvr"], reference(toy_base, 1, inputs)["cvr"], rtol=1e-6)


def test_predict_single_input_signature_accepts_plain_lists(server):
    serialized = example("m1", 3, 1.5).SerializeToString()
    payload = {"signature_name": "predict_examples", "instances": [{"b64": base64.b64encode(serialized).decode()}]}
    status, body = call(server, "POST", "/v1/models/toy/labels/canary:predict", payload)
    assert status == 200 and 0 < body["predictions"][0]["ctr"] < 1


def test_classify_and_regress_json(server):
    examples = [{"media": "m1", "slot_id": 3, "bid_floor": 1.5}, {"media": "m2", "slot_id": 4, "bid_floor": 0.5}]
    body = {"signature_name": "tensorflow/serving/classify", "examples": examples}
    status, classified = call(server, "POST", "/v1/models/toy:classify", body)
    assert status == 200
    assert [[label for label, _ in row] for row in classified["results"]] == [["0", "1"], ["0", "1"]]
    body = {"signature_name": "tensorflow/serving/regress", "context": {"media": "m1"}, "examples": examples}
    status, regressed = call(server, "POST", "/v1/models/toy:regress", body)
    assert status == 200 and len(regressed["results"]) == 2
    ctr = [row[1][1] for row in classified["results"]]
    assert all(0 < r < c for r, c in zip(regressed["results"], ctr, strict=True))


@pytest.mark.parametrize(
    "method, path, body, http_status, message",
    [
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/toy/versions/9", None, 404, "Could not find version 9 of model toy"),
        ("GET", "/v1/models/toy/labels/beta", None, 400, "Unrecognized servable version label: beta"),
        ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/toy:predict", {}, 400, "Missing 'inputs' or 'instances' key"),
        ("POST", "/v1/models/toy:predict", {"instances": [1], "inputs": [1]}, 400, "only one of"),
        ("POST", "/v1/models/toy:predict", {"instances": [{"media": "a"}]}, 400, "must only have keys"),
        ("POST", "/v1/models/toy:predict", {"instances": [1, 2]}, 400, "plain list"),
        (
            "POST",
            "/v1/models/toy:predict",
            {"inputs": {"media": ["a"], "slot_id": [1], "age": ["x"]}},
            400,
            "Missing named input: bid_floor in 'inputs' object.",
        ),
        ("POST", "/v1/models/toy:predict", b"{not json", 400, "JSON Parse error"),
        ("POST", "/v1/models/toy:predict", {"signature_name": 3, "instances": [1]}, 400, "must be a string"),
        ("POST", "/v1/models/toy:predict", {"signature_name": "x", "instances": [1]}, 400, '"x" not found'),
        (
            "POST",
            "/v1/models/toy:predict",
            {"instances": [{"media": "a", "slot_id": "b", "bid_floor": 1.0}]},
            400,
            "is not of expected type: int64",
        ),
        ("POST", "/v1/models/toy:explain", {}, 400, "Malformed request"),
        ("POST", "/v1/models/toy:classify", {"examples": [{"media": "a"}]}, 400, "method_name"),
        ("GET", "/v2/whatever", None, 400, "Malformed request"),
    ],
)
def test_errors_are_json_with_tf_serving_http_status(server, method, path, body, http_status, message):
    status, payload = call(server, method, path, body)
    assert status == http_status, payload
    assert set(payload) == {"error"} and message in payload["error"]


def test_prometheus_endpoint_counts_requests(server):
    call(server, "POST", "/v1/models/toy:predict", {"instances": [{"media": "a", "slot_id": 1, "bid_floor": 1.0}]})
    status, text = call(server, "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count_total{model_name="toy",status="OK"}' in text
    assert ":tensorflow:cc:saved_model:load_attempt_count_total" in text
