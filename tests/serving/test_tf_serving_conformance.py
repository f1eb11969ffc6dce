"""TF Serving's own conformance cases (tensorflow_model_server_test.py, http_rest_api_handler_test.cc)
against the embedded server, on TF Serving's half_plus_two / half_plus_three models made here.

Each test names the TF Serving case it ports and expects TF Serving's answer. Cases that cannot run
here are listed, with why, in docs/tf-serving-fidelity.md.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    regression_pb2,
)

from serving.server import ModelServer, parse_flags
from serving.server.testing import Stubs, free_port
from tests.serving.tf_serving_cases import (
    call_rest,
    half_plus_two_metadata,
    sorted_object,
    verify_predict_request,
)

MONITORING_CONFIG = 'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
CONFIG_ENTRY = 'config: {{ name: "{name}", base_path: "{path}", model_platform: "tensorflow" }}'


def model_config(**models: str) -> str:
    """A model_config_list text proto serving ``name=base_path`` pairs."""
    entries = "\n  ".join(CONFIG_ENTRY.format(name=n, path=p) for n, p in models.items())
    return f"model_config_list: {{\n  {entries}\n}}\n"


class Running:
    """An embedded server on 127.0.0.1 with gRPC stubs and its REST base URL."""

    def __init__(self, *flags: str) -> None:
        self.server = ModelServer(parse_flags(["--port=0", f"--rest_api_port={free_port()}", *flags])).start()
        self.stubs = Stubs.connect(f"127.0.0.1:{self.server.grpc_port}")
        self.stubs.wait_serving()
        self.url = f"http://127.0.0.1:{self.server.rest_port}/v1/models"

    def stop(self) -> None:
        self.stubs.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def default(half_plus, tmp_path_factory):
    """RunServer('default', half_plus_two) with --monitoring_config_file and --grpc_socket_path."""
    tmp = tmp_path_factory.mktemp("default_server")
    (tmp / "monitoring_config.txt").write_text(MONITORING_CONFIG)
    running = Running(
        "--model_name=default",
        f"--model_base_path={half_plus['half_plus_two']}",
        f"--monitoring_config_file={tmp / 'monitoring_config.txt'}",
        f"--grpc_socket_path={tmp / 'tf-serving.sock'}",
    )
    running.socket = str(tmp / "tf-serving.sock")
    yield running
    running.stop()


def verify_predict(stubs: Stubs, expected: float, version: int, **request) -> None:
    """VerifyPredictRequest's checks: output y, DT_FLOAT, one value, and the response model_spec."""
    sent = verify_predict_request(**request)
    result = stubs.predict.Predict(sent, timeout=20)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert result.model_spec.name == sent.model_spec.name
    assert result.model_spec.signature_name == sent.model_spec.signature_name
    assert result.model_spec.version.value == version


def examples_request(cls, signature: str, x: float = 2.0):
    request = cls()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return request


# --- tensorflow_model_server_test.py over gRPC -----------------------------------------------------


def test_get_model_status(default):  # testGetModelStatus
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = default.stubs.model.GetModelStatus(request, timeout=20)
    assert [s.version for s in result.model_version_status] == [123]
    assert result.model_version_status[0].status.error_code == 0


def test_get_model_metadata(default):  # testGetModelMetadata
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    result = default.stubs.predict.GetModelMetadata(request, timeout=20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


def test_classify(default):  # testClassify
    request = examples_request(classification_pb2.ClassificationRequest, "classify_x_to_y")
    result = default.stubs.predict.Classify(request, timeout=20)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name) == ("default", "classify_x_to_y")
    assert result.model_spec.version.value == 123


def test_regress(default):  # testRegress
    request = examples_request(regression_pb2.RegressionRequest, "regress_x_to_y")
    result = default.stubs.predict.Regress(request, timeout=20)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert (result.model_spec.signature_name, result.model_spec.version.value) == ("regress_x_to_y", 123)


def test_multi_inference(default):  # testMultiInference
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "default", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    result = default.stubs.predict.MultiInference(request, timeout=20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        spec = result.results[i].model_spec
        assert (spec.name, spec.signature_name, spec.version.value) == (
            "default",
            request.tasks[i].model_spec.signature_name,
            123,
        )


@pytest.mark.parametrize("specify_output", [True, False])
def test_predict_saved_model(default, specify_output):  # testPredictSavedModel (_TestPredict)
    verify_predict(default.stubs, 3.0, 123, specify_output=specify_output)


def test_predict_uds(default):  # testPredictUDS
    stubs = Stubs.connect(f"unix:{default.socket}")
    try:
        verify_predict(stubs, 3.0, 123, specify_output=False)
    finally:
        stubs.channel.close()


def test_wrong_input_name(default):  # predict_util.cc + saved_model/util.cc GetInputValues
    request = verify_predict_request(specify_output=False)
    request.inputs["z"].CopyFrom(request.inputs.pop("x"))
    with pytest.raises(grpc.RpcError) as error:
        default.stubs.predict.Predict(request, timeout=20)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(
        "Signature input alias: x(feed name: x:0) not found in request and no default value provided."
    )


def test_predict_batching(half_plus):  # testPredictBatching
    running = Running("--model_name=default", f"--model_base_path={half_plus['half_plus_two']}", "--enable_batching")
    try:
        for specify_output in (True, False):
            verify_predict(running.stubs, 3.0, 123, specify_output=specify_output)
    finally:
        running.stop()


def test_good_model_config(half_plus, tmp_path):  # testGoodModelConfig (two models in one config file)
    config = tmp_path / "good_model_config.conf"
    config.write_text(
        model_config(half_plus_two=half_plus["half_plus_two"], half_plus_three=half_plus["half_plus_three"])
    )
    running = Running(f"--model_config_file={config}")
    try:
        for name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
            for specify_output in (True, False):
                verify_predict(running.stubs, expected, 123, model_name=name, specify_output=specify_output)
    finally:
        running.stop()


def test_bad_model_config(tmp_path):  # testBadModelConfig: a real server process, its stderr
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file")
    proc = subprocess.run(
        [sys.executable, "-m", "serving.server", "--port=0", f"--model_config_file={config}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert proc.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr


def test_model_config_reload(half_plus, tmp_path):  # testModelConfigReload (poll period 1 s)
    config = tmp_path / "model_config.txt"
    config.write_text(model_config(half_plus_two=half_plus["half_plus_two"]))
    running = Running(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    try:
        verify_predict(running.stubs, 3.0, 123, model_name="half_plus_two", specify_output=False)
        config.write_text(model_config(half_plus_three=half_plus["half_plus_three"]))
        running.stubs.wait_for_states("half_plus_three", {123: "AVAILABLE"}, timeout=60)
        verify_predict(running.stubs, 4.0, 123, model_name="half_plus_three", specify_output=False)
    finally:
        running.stop()


def test_model_config_reload_with_zero_poll_period(half_plus, tmp_path):  # testModelConfigReloadWithZeroPollPeriod
    config = tmp_path / "model_config.txt"
    config.write_text(model_config(half_plus_two=half_plus["half_plus_two"]))
    running = Running(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0")
    try:
        config.write_text(model_config(half_plus_three=half_plus["half_plus_three"]))
        assert running.server._config_thread is None  # nothing will ever re-read the file
        verify_predict(running.stubs, 3.0, 123, model_name="half_plus_two", specify_output=False)
    finally:
        running.stop()


def test_good_grpc_channel_args(half_plus):  # testGoodGrpcChannelArgs
    running = Running(
        "--model_name=default",
        f"--model_base_path={half_plus['half_plus_two']}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
    )
    try:
        verify_predict(running.stubs, 3.0, 123, specify_output=False)
    finally:
        running.stop()


# --- tensorflow_model_server_test.py over REST -----------------------------------------------------


@pytest.mark.parametrize(
    "verb, body, expected",
    [
        ("classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}, {"results": [[["", 3.0]]]}),
        ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}, {"results": [3.0]}),
        ("predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]}),  # x is declared [-1, 1]
        ("predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]}),
    ],
    ids=["testClassifyREST", "testRegressREST", "testPredictREST", "testPredictColumnarREST"],
)
def test_rest_inference(default, verb, body, expected):
    assert call_rest(f"{default.url}/default:{verb}", body) == (200, expected)


def test_get_status_rest(default):  # testGetStatusREST
    status = {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert call_rest(f"{default.url}/default") == (200, {"model_version_status": [status]})


def test_get_model_metadata_rest(default):  # testGetModelMetadataREST
    code, metadata = call_rest(f"{default.url}/default/metadata")
    assert code == 200
    assert sorted_object(metadata) == sorted_object(half_plus_two_metadata())


def test_prometheus_endpoint(default):  # testPrometheusEndpoint
    code, text = call_rest(default.url.replace("/v1/models", "/monitoring/prometheus/metrics"))
    assert code == 200 and "# TYPE" in text


# --- SavedModels written with TF 2 / Keras (test_tf_saved_model_save*, test_sequential_keras_*) ------


def serve_saved(base, *, batch_input=False, **checks) -> None:
    running = Running("--model_name=default", f"--model_base_path={base}")
    try:
        for signature, expected in checks.items():
            verify_predict(running.stubs, expected, 123, batch_input=batch_input, signature_name=signature)
    finally:
        running.stop()


@pytest.mark.parametrize("batch_input", [False, True], ids=["shape_1", "shape_1x1"])
def test_tf_saved_model_save(tmp_path, batch_input):  # test_tf_saved_model_save; [1, 1] for an unknown shape
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    signature = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(tmp_path / "00000123"), signature)
    serve_saved(tmp_path, batch_input=batch_input, serving_default=12.0)


def test_tf_saved_model_save_multiple_signatures(tmp_path):  # test_tf_saved_model_save_multiple_signatures
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    signatures = {"serving_default": root.f, "custom_signature_key": root.g}
    tf.saved_model.save(root, str(tmp_path / "00000123"), signatures=signatures)
    serve_saved(tmp_path, custom_signature_key=2.0, serving_default=1.0)


def test_sequential_keras_saved_model_save(tmp_path):  # test_sequential_keras_saved_model_save
    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
    tf.saved_model.save(model, str(tmp_path / "00000123"))
    serve_saved(tmp_path, batch_input=True, serving_default=2.0)


# --- http_rest_api_handler_test.cc on the two-version model (version policy: specific 123) ----------

TWO = "saved_model_half_plus_two_2_versions"


@pytest.fixture(scope="module")
def two_versions(half_plus, tmp_path_factory):
    config = tmp_path_factory.mktemp("two_versions_config") / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{TWO}" base_path: "{half_plus["two_versions"]}" '
        'model_platform: "tensorflow" model_version_policy { all {} } '
        'version_labels { key: "stable" value: 123 } version_labels { key: "canary" value: 124 } } }'
    )
    running = Running(f"--model_config_file={config}")
    running.stubs.wait_for_states(TWO, {123: "AVAILABLE", 124: "AVAILABLE"})
    yield running
    running.stop()


@pytest.mark.parametrize(
    "path, body, expected",
    [
        (":predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        ("/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (
            "/versions/123:predict",
            {"signature_name": "serving_default", "instances": [3.0, 4.0]},
            {"predictions": [3.5, 4.0]},
        ),
        ("/versions/123:predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]}, {"outputs": [3.5, 4.0]}),
        (":regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}, {"results": [42.0]}),
        ("/versions/123:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}, {"results": [42.0]}),
        (":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}, {"results": [[["", 12.0]]]}),
        (
            "/labels/stable:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
            {"results": [[["", 7.0]]]},
        ),
    ],
)
def test_handler_predict_regress_classify(two_versions, path, body, expected):  # Predict, Regress, Classify
    assert call_rest(f"{two_versions.url}/{TWO}{path}", body) == (200, expected)


def test_handler_get_status_of_one_version(two_versions):  # GetStatus
    status = {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert call_rest(f"{two_versions.url}/{TWO}/versions/123") == (200, {"model_version_status": [status]})


def test_label_resolves_to_its_version(two_versions):  # version_labels (server_core.cc)
    for label, version in (("stable", 123), ("canary", 124)):
        request = verify_predict_request(model_name=TWO, specify_output=False)
        request.model_spec.version_label = label
        assert two_versions.stubs.predict.Predict(request, timeout=20).model_spec.version.value == version


@pytest.mark.parametrize(
    "method, path, body, http_status, message",
    [
        ("POST", "/v1/models/foo:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(foo)"),
        ("POST", "/v1/models/foo/versions/50:predict", {"instances": [1]}, 404, "Specific(foo, 50)"),
        ("POST", f"/v1/models/{TWO}/versions/99:predict", {"instances": [1]}, 404, f"Specific({TWO}, 99)"),
        (
            "POST",
            f"/v1/models/{TWO}/labels/nope:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable version label: nope",
        ),
        ("GET", "/v1/foo", None, 400, "Malformed request"),
        ("POST", "/v1/foo", {}, 400, "Malformed request"),
        ("GET", "/v1/models", None, 400, "Missing model name"),
        ("POST", "/v1/models", {}, 400, "Malformed request"),
        ("GET", "/v1/models/foo:predict", None, 400, "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", None, 400, "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", {}, 400, "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", {}, 400, "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", {}, 400, "Failed to convert version"),
        ("POST", f"/v1/models/{TWO}:predict", None, 400, "JSON Parse error: The document is empty"),
        ("POST", f"/v1/models/{TWO}:predict", b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
        ("POST", f"/v1/models/{TWO}:predict", {"instances": ["a"]}, 400, "is not of expected type: float"),
        ("POST", f"/v1/models/{TWO}:predict", {"instances": [{"z": 1.0}]}, 400, "does not have named input: z"),
        ("POST", f"/v1/models/{TWO}:predict", {"signature_name": "x", "inputs": [1.0]}, 400, '"x" not found'),
    ],
)
def test_handler_errors(two_versions, method, path, body, http_status, message):
    url = two_versions.url.replace("/v1/models", "") + path
    code, payload = call_rest(url, b"" if method == "POST" and body is None else body)
    assert code == http_status, payload
    assert message in payload["error"]
