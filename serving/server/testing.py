"""Helpers for tests and benchmarks: free ports, the official stubs, waiting on model status."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for --rest_api_port, where 0 means disabled)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stubs:
    """The official tensorflow-serving-api stubs plus gRPC health on one channel."""

    channel: grpc.Channel
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def connect(cls, target: str) -> Stubs:
        channel = grpc.insecure_channel(target)
        return cls(
            channel,
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
        )

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Block until the health service reports SERVING (waits for the channel too)."""
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            status = self.health.Check(request, wait_for_ready=True, timeout=max(deadline - time.monotonic(), 0.1))
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return
            # Watch streams status changes, so this blocks until the next one instead of spinning.
            for update in self.health.Watch(request, timeout=max(deadline - time.monotonic(), 0.1)):
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    def version_states(self, name: str) -> dict[int, str]:
        """{version: state name} of a model, from GetModelStatus."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = self.model.GetModelStatus(request, timeout=10)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: state_name(s.state) for s in response.model_version_status}

    def wait_for_states(self, name: str, expected: dict[int, str], timeout: float = 60.0) -> dict[int, str]:
        """Poll GetModelStatus until the given versions reach the given states (or time out)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.version_states(name)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                states = {}
            if all(states.get(v) == s for v, s in expected.items()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name}: states {states}, expected {expected}")
            time.sleep(0.05)  # a poll interval on an external process's state, not synchronisation


def predict_request(name: str, inputs: dict[str, np.ndarray], **spec) -> predict_pb2.PredictRequest:
    """A PredictRequest for ``name`` (``spec`` sets signature_name / version_label / version)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request
