"""Conformance of the embedded server's gRPC API with TF Serving, through the official stubs."""

from __future__ import annotations

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc
import tensorflow as tf
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    regression_pb2,
)

from serving.server import ModelServer, parse_flags
from serving.server.servable import run_options, session_config
from serving.server.testing import Stubs, predict_request
from serving.server.toy_model import OUTPUTS, candidates, example

CONFIG = """
model_config_list {
  config {
    name: "toy"
    base_path: "%s"
    model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""
MAX_MESSAGE = 256 * 1024


@pytest.fixture(scope="module")
def server(toy_base, tmp_path_factory):
    config = tmp_path_factory.mktemp("cfg") / "models.config"
    config.write_text(CONFIG % toy_base)
    args = parse_flags(
        [
            "--port=0",
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=0",
            f"--grpc_channel_arguments=grpc.max_receive_message_length={MAX_MESSAGE}",
        ]
    )
    with ModelServer(args) as srv:
        yield srv


@pytest.fixture(scope="module")
def stubs(server) -> Stubs:
    stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
    stubs.wait_serving()
    yield stubs
    stubs.channel.close()


def reference(toy_base: str, version: int, inputs: dict, signature: str = "serving_default") -> dict:
    fn = tf.saved_model.load(f"{toy_base}/{version}").signatures[signature]
    specs = fn.structured_input_signature[1]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()}).items()}


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)
    return info.value


def test_health_serving_for_server_and_services(stubs):
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        reply = stubs.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_tf_serving_services(stubs):
    services = set(ProtoReflectionDescriptorDatabase(stubs.channel).get_services())
    assert {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
    } <= services


def test_model_status_all_versions_one_version_and_label(stubs):
    assert stubs.version_states("toy") == {1: "AVAILABLE", 2: "AVAILABLE"}
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    request.model_spec.version_label = "canary"
    response = stubs.model.GetModelStatus(request, timeout=5)
    assert [s.version for s in response.model_version_status] == [2]
    assert response.model_version_status[0].status.error_code == 0


@pytest.mark.parametrize(
    "spec, code, message",
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope"),
        ({"name": "toy", "version": {"value": 7}}, grpc.StatusCode.NOT_FOUND, "Could not find version 7 of model toy"),
        ({"name": "toy", "version_label": "beta"}, grpc.StatusCode.INVALID_ARGUMENT, "version label: beta"),
    ],
)
def test_model_status_errors(stubs, spec, code, message):
    error = rpc_error(stubs.model.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
    assert error.code() == code and message in error.details()


def test_metadata_lists_signatures_with_input_dtypes(stubs):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    response = stubs.predict.GetModelMetadata(request, timeout=5)
    assert response.model_spec.version.value == 2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    default = sig_map.signature_def["serving_default"]
    assert {k: tf.as_dtype(v.dtype).name for k, v in default.inputs.items()} == {
        "media": "string",
        "slot_id": "int64",
        "bid_floor": "float32",
    }
    assert set(default.outputs) == set(OUTPUTS)
    assert {"predict_examples", "tensorflow/serving/regress", "tensorflow/serving/classify"} <= set(
        sig_map.signature_def
    )
    request.ClearField("metadata_field")
    assert rpc_error(stubs.predict.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_matches_in_process_call_and_resolves_latest(stubs, toy_base):
    inputs = candidates(100)
    response = stubs.predict.Predict(predict_request("toy", inputs), timeout=10)
    assert response.model_spec.version.value == 2 and response.model_spec.signature_name == "serving_default"
    expected = reference(toy_base, 2, inputs)
    assert set(response.outputs) == set(OUTPUTS)
    for name in OUTPUTS:
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), expected[name], rtol=1e-6)


def test_predict_by_label_version_and_output_filter(stubs, toy_base):
    inputs = candidates(5)
    stable = stubs.predict.Predict(predict_request("toy", inputs, version_label="stable"), timeout=10)
    assert stable.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(stable.outputs["ctr"]), reference(toy_base, 1, inputs)["ctr"], rtol=1e-6)
    request = predict_request("toy", inputs, version=2)
    request.output_filter.extend(["ctr", "cvr"])
    filtered = stubs.predict.Predict(request, timeout=10)
    assert filtered.model_spec.version.value == 2 and set(filtered.outputs) == {"ctr", "cvr"}


def test_predict_examples_signature(stubs, toy_base):
    examples = np.array([example("m1", 3, 1.5).SerializeToString()], dtype=object)
    response = stubs.predict.Predict(
        predict_request("toy", {"examples": examples}, signature_name="predict_examples"), timeout=10
    )
    expected = reference(toy_base, 2, {"media": [b"m1"], "slot_id": [3], "bid_floor": [1.5]})
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["ctcvr"]), expected["ctcvr"], rtol=1e-6)


def _broken_requests():
    good = candidates(3)
    missing = {k: v for k, v in good.items() if k != "bid_floor"}
    extra = good | {"age": np.array([1, 2, 3])}
    wrong_dtype = good | {"slot_id": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    wrong_shape = good | {"bid_floor": np.ones((3, 2), dtype=np.float32)}  # fed as is, the runtime rejects it
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        (predict_request("toy", missing), invalid, "Missing but required: {bid_floor}"),
        (predict_request("toy", extra), invalid, "Sent extra: {age}"),
        (predict_request("toy", wrong_dtype), invalid, "to be int64 but float is provided"),
        (predict_request("toy", wrong_shape), invalid, "Incompatible shapes: [3] vs. [3,2]"),  # from the TF runtime
        (predict_request("toy", good, signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION, '"nope" not found'),
        (predict_request("nope", good), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (predict_request("toy", good, version=9), grpc.StatusCode.NOT_FOUND, "Specific(toy, 9)"),
        (predict_request("toy", good, version_label="beta"), invalid, "Unrecognized servable version label: beta"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_predict_errors_have_tf_serving_codes(stubs, index):
    request, code, message = _broken_requests()[index]
    error = rpc_error(stubs.predict.Predict, request)
    assert error.code() == code, error.details()
    assert message in error.details()


def test_output_filter_unknown_alias(stubs):
    request = predict_request("toy", candidates(2))
    request.output_filter.append("bid")
    error = rpc_error(stubs.predict.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: bid" in error.details()


def test_oversized_message_is_resource_exhausted_and_server_stays_up(stubs):
    big = {"media": np.array([b"x" * 1000] * 400, dtype=object)} | {
        "slot_id": np.zeros(400, np.int64),
        "bid_floor": np.zeros(400, np.float32),
    }
    error = rpc_error(stubs.predict.Predict, predict_request("toy", big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stubs.predict.Predict(predict_request("toy", candidates(2)), timeout=10).model_spec.version.value == 2


def _input(examples, context=None):
    request = classification_pb2.ClassificationRequest()
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        request.input.example_list_with_context.examples.extend(examples)
        request.input.example_list_with_context.context.CopyFrom(context)
    return request.input


def test_classify_and_regress(stubs, toy_base):
    examples = [example("m1", 3, 1.5), example("m2", 4, 0.5)]
    expected = reference(toy_base, 2, {"media": [b"m1", b"m2"], "slot_id": [3, 4], "bid_floor": [1.5, 0.5]})
    request = classification_pb2.ClassificationRequest(input=_input(examples))
    request.model_spec.name, request.model_spec.signature_name = "toy", "tensorflow/serving/classify"
    result = stubs.predict.Classify(request, timeout=10)
    assert result.model_spec.version.value == 2
    scores = [[c.score for c in row.classes] for row in result.result.classifications]
    labels = [[c.label for c in row.classes] for row in result.result.classifications]
    assert labels == [["0", "1"], ["0", "1"]]
    np.testing.assert_allclose(np.array(scores)[:, 1], expected["ctr"], rtol=1e-6)
    regress = regression_pb2.RegressionRequest(input=_input(examples))
    regress.model_spec.name, regress.model_spec.signature_name = "toy", "tensorflow/serving/regress"
    values = [r.value for r in stubs.predict.Regress(regress, timeout=10).result.regressions]
    np.testing.assert_allclose(values, expected["ctcvr"], rtol=1e-6)


def test_regress_with_context_merges_shared_features(stubs, toy_base):
    context = example("m1", 3, 0.0)
    partial = tf.train.Example()
    partial.features.feature["bid_floor"].float_list.value.append(2.0)
    request = regression_pb2.RegressionRequest(input=_input([partial], context))
    request.model_spec.name, request.model_spec.signature_name = "toy", "tensorflow/serving/regress"
    value = stubs.predict.Regress(request, timeout=10).result.regressions[0].value
    expected = reference(toy_base, 2, {"media": [b"m1"], "slot_id": [3], "bid_floor": [2.0]})["ctcvr"][0]
    assert value == pytest.approx(expected, rel=1e-6)


def test_classify_on_predict_signature_is_failed_precondition(stubs):
    request = classification_pb2.ClassificationRequest(input=_input([example("m", 1, 1.0)]))
    request.model_spec.name = "toy"
    error = rpc_error(stubs.predict.Classify, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Expected classification signature method_name to be tensorflow/serving/classify" in error.details()
    request.ClearField("input")
    request.model_spec.signature_name = "tensorflow/serving/classify"
    assert rpc_error(stubs.predict.Classify, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_multi_inference_runs_classify_and_regress_on_one_input(stubs):
    request = inference_pb2.MultiInferenceRequest(input=_input([example("m1", 3, 1.5)]))
    for signature, method in (
        ("tensorflow/serving/classify", "tensorflow/serving/classify"),
        ("tensorflow/serving/regress", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "toy", signature
    response = stubs.predict.MultiInference(request, timeout=10)
    classification, regression = response.results
    ctr = classification.classification_result.classifications[0].classes[1].score
    ctcvr = regression.regression_result.regressions[0].value
    assert 0 < ctcvr < ctr < 1 and regression.model_spec.version.value == 2
    request.tasks[1].model_spec.signature_name = "tensorflow/serving/classify"
    error = rpc_error(stubs.predict.MultiInference, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Duplicate evaluation of signature" in error.details()


def test_grpc_socket_path_serves_the_same_api(toy_base, tmp_path):
    socket_path = tmp_path / "tfs.sock"
    args = parse_flags(
        [
            "--port=0",
            "--model_name=toy",
            f"--model_base_path={toy_base}",
            f"--grpc_socket_path={socket_path}",
            "--file_system_poll_wait_seconds=0",
        ]
    )
    with ModelServer(args):
        stubs = Stubs.connect(f"unix:{socket_path}")
        stubs.wait_serving()
        response = stubs.predict.Predict(predict_request("toy", candidates(3)), timeout=10)
        assert response.model_spec.version.value == 2 and len(response.outputs["ctr"].float_val) == 3
        stubs.channel.close()


def test_session_threading_flags_follow_tf_serving(toy_base):
    config = session_config(session_parallelism=1, inter_op=2)
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (1, 2)
    assert run_options(config).inter_op_thread_pool == 0  # an inter-op pool was asked for: use it
    assert run_options(session_config()).inter_op_thread_pool == -1  # auto: ops run in the request's thread
    args = parse_flags(
        [
            "--port=0",
            "--model_name=toy",
            f"--model_base_path={toy_base}",
            "--file_system_poll_wait_seconds=0",
            "--tensorflow_session_parallelism=1",
            "--tensorflow_inter_op_parallelism=2",
        ]
    )
    with ModelServer(args) as server:
        stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
        stubs.wait_serving()
        inputs = candidates(4)
        response = stubs.predict.Predict(predict_request("toy", inputs), timeout=10)
        expected = reference(toy_base, 2, inputs)["ctr"]
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["ctr"]), expected, rtol=1e-6)
        stubs.channel.close()
