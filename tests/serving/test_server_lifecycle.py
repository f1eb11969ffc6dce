"""Model lifecycle like TF Serving: polling, atomic swap under load, failed loads, policies, reloads."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter

import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.server import ModelServer, ServingError, parse_flags
from serving.server.testing import Stubs, predict_request
from serving.server.toy_model import candidates, save_toy_model


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[float, str]:
    """Toy SavedModels by bias, built once and copied into each test's model directory."""
    root = tmp_path_factory.mktemp("built")
    return {bias: save_toy_model(str(root / f"bias{bias}"), bias=bias) for bias in (0.0, 0.5, 1.0)}


def publish(built: dict[float, str], base, version: int, bias: float) -> None:
    """Copy a built version into ``base`` under a temp name, then rename: never half-visible."""
    tmp = base.parent / f".tmp-{base.name}-{version}"
    shutil.copytree(built[bias], tmp)
    os.rename(tmp, base / str(version))


def start(*flags: str) -> tuple[ModelServer, Stubs]:
    server = ModelServer(parse_flags(["--port=0", *flags])).start()
    stubs = Stubs.connect(f"127.0.0.1:{server.grpc_port}")
    stubs.wait_serving()
    return server, stubs


def served_version(stubs: Stubs, name: str = "toy", **spec) -> int:
    return stubs.predict.Predict(predict_request(name, candidates(2), **spec), timeout=10).model_spec.version.value


def test_new_version_swapped_in_under_load_with_zero_failures(built, tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    publish(built, base, 1, 0.0)
    server, stubs = start("--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1")
    versions: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    request = predict_request("toy", candidates(100))

    def load() -> None:
        while not stop.is_set():
            try:
                versions[stubs.predict.Predict(request, timeout=10).model_spec.version.value] += 1
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        publish(built, base, 2, 0.5)
        stubs.wait_for_states("toy", {2: "AVAILABLE", 1: "END"})
        answered = sum(versions.values())
        while sum(versions.values()) < answered + 20 and not failures:
            threads[0].join(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert failures == []
    assert versions[1] > 0 and versions[2] >= 20


def test_corrupt_new_version_leaves_old_one_serving(built, tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    publish(built, base, 1, 0.0)
    server, stubs = start("--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0")
    try:
        corrupt = base / "2"
        corrupt.mkdir()
        (corrupt / "saved_model.pb").write_bytes(b"definitely not a protobuf")
        server.manager.poll()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "toy"
        status = stubs.model.GetModelStatus(request, timeout=10).model_version_status
        by_version = {s.version: s for s in status}
        assert by_version[2].state == by_version[2].END and by_version[2].status.error_code != 0
        assert f"{base}/2" in by_version[2].status.error_message
        assert by_version[1].state == by_version[1].AVAILABLE
        assert served_version(stubs) == 1
    finally:
        server.stop()


def test_failing_warmup_keeps_version_from_becoming_available(built, tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    publish(built, base, 1, 0.0)
    server, stubs = start("--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0")
    try:
        publish(built, base, 2, 0.5)
        (base / "2" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x00" * 40)
        server.manager.poll()
        states = stubs.version_states("toy")
        assert states == {2: "END", 1: "AVAILABLE"}
        assert served_version(stubs) == 1
    finally:
        server.stop()


def _config(*models: tuple[str, str, str]) -> model_server_config_pb2.ModelServerConfig:
    """ModelServerConfig from (name, base_path, extra text-format fields)."""
    body = "".join(
        f'config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" {extra} }}' for n, p, extra in models
    )
    return text_format.Parse(f"model_config_list {{ {body} }}", model_server_config_pb2.ModelServerConfig())


def reload(stubs: Stubs, config) -> None:
    stubs.model.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)


def test_version_policies_and_reload_replacing_model_list(built, tmp_path):
    base = tmp_path / "toy"
    other = tmp_path / "other"
    base.mkdir(), other.mkdir()
    for version, bias in ((1, 0.0), (2, 0.5), (3, 1.0)):
        publish(built, base, version, bias)
    publish(built, other, 7, 0.0)
    server, stubs = start("--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0")
    try:
        assert stubs.version_states("toy") == {3: "AVAILABLE"}
        reload(stubs, _config(("toy", base, "model_version_policy { all {} }")))
        assert stubs.version_states("toy") == {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}
        reload(stubs, _config(("toy", base, "model_version_policy { specific { versions: 2 } }")))
        assert stubs.version_states("toy") == {1: "END", 2: "AVAILABLE", 3: "END"}
        assert served_version(stubs) == 2
        reload(stubs, _config(("toy", base, "model_version_policy { latest { num_versions: 2 } }")))
        assert {v for v, s in stubs.version_states("toy").items() if s == "AVAILABLE"} == {2, 3}
        reload(stubs, _config(("other", other, "")))
        assert served_version(stubs, "other") == 7
        with pytest.raises(grpc.RpcError) as info:
            served_version(stubs, "toy")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_labels_must_point_at_available_versions_unless_allowed(built, tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    publish(built, base, 1, 0.0)
    publish(built, base, 2, 0.5)
    server, stubs = start("--model_name=toy", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0")
    try:
        labelled = ("toy", base, 'model_version_policy { all {} } version_labels { key: "stable" value: 1 }')
        reload(stubs, _config(labelled))
        assert served_version(stubs, version_label="stable") == 1
        dangling = ("toy", base, 'model_version_policy { all {} } version_labels { key: "canary" value: 5 }')
        with pytest.raises(grpc.RpcError) as info:
            reload(stubs, _config(dangling))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not currently available for inference" in info.value.details()
        assert served_version(stubs, version_label="stable") == 1  # the old labels stay
    finally:
        server.stop()
    server, stubs = start(
        f"--model_config_file={_write(tmp_path / 'm.config', _config(dangling))}",
        "--file_system_poll_wait_seconds=0",
        "--allow_version_labels_for_unavailable_models",
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            served_version(stubs, version_label="canary")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "Specific(toy, 5)" in info.value.details()
    finally:
        server.stop()


def _write(path, config) -> str:
    path.write_text(text_format.MessageToString(config))
    return str(path)


def test_model_config_file_is_polled(built, tmp_path):
    base, other = tmp_path / "toy", tmp_path / "other"
    base.mkdir(), other.mkdir()
    publish(built, base, 1, 0.0)
    publish(built, other, 4, 0.5)
    config_file = _write(tmp_path / "models.config", _config(("toy", base, "")))
    server, stubs = start(
        f"--model_config_file={config_file}",
        "--model_config_file_poll_wait_seconds=1",
        "--file_system_poll_wait_seconds=0",
    )
    try:
        _write(tmp_path / "models.config", _config(("toy", base, ""), ("other", other, "")))
        stubs.wait_for_states("other", {4: "AVAILABLE"})
        assert served_version(stubs, "other") == 4 and served_version(stubs, "toy") == 1
    finally:
        server.stop()


@pytest.mark.parametrize(
    "text, message",
    [
        ("model_config_list { config { name: 'a' base_path: '/x' } ", "Invalid protobuf file"),
        ("model_config_list { config { name: 'a' bogus: 1 } }", "Invalid protobuf file"),
        ("model_config_list { config { name: 'a' } }", "base_path is empty"),
        (
            "model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
            "multiple times",
        ),
    ],
)
def test_bad_model_config_is_rejected_with_its_file_named(tmp_path, text, message):
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(ServingError) as info:
        ModelServer(parse_flags(["--port=0", f"--model_config_file={path}"]))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.message
