"""gRPC PredictionService and ModelService (official tensorflow-serving-api stubs), health, reflection."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from serving.server import inference
from serving.server.batching import request_deadline
from serving.server.errors import ServingError
from serving.server.model_manager import ModelManager
from serving.server.monitoring import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
SIGNATURE_DEF_FIELD = "signature_def"


def _answer(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Run ``fn``; a ServingError aborts the call with its code, anything else with INTERNAL."""
    try:
        return fn()
    except ServingError as e:
        context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001 - the server stays up whatever it is sent
        log.exception("internal error")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


def model_metadata(
    manager: ModelManager, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata: the resolved version's SignatureDefMap under ``signature_def``."""
    if not request.HasField("model_spec"):
        raise ServingError.invalid_argument("Missing ModelSpec")
    if not request.metadata_field:
        raise ServingError.invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for name in request.metadata_field:
        if name != SIGNATURE_DEF_FIELD:
            raise ServingError.invalid_argument(f"Metadata field {name} is not supported")
    servable = manager.resolve(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.metadata())
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over a ModelManager."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self._manager, self._metrics = manager, metrics

    def _run(self, context, api: str, spec, fn: Callable) -> object:
        def call():
            with self._metrics.request(spec.name, api, "GRPC"), request_deadline(context.time_remaining()):
                return fn(self._manager.resolve(spec))

        return _answer(context, call)

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        return self._run(context, "predict", request.model_spec, lambda s: inference.predict(s, request))

    def Classify(self, request, context):  # noqa: N802
        return self._run(context, "classify", request.model_spec, lambda s: inference.classify(s, request))

    def Regress(self, request, context):  # noqa: N802
        return self._run(context, "regress", request.model_spec, lambda s: inference.regress(s, request))

    def MultiInference(self, request, context):  # noqa: N802
        def call():
            spec = inference.check_multi_inference(request)
            metered = self._metrics.request(spec.name, "multi_inference", "GRPC")
            with metered, request_deadline(context.time_remaining()):
                return inference.multi_inference(self._manager.resolve(spec), request)

        return _answer(context, call)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, lambda: model_metadata(self._manager, request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, lambda: self._manager.model_status(request.model_spec))

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        def call():
            self._manager.reload_config(request.config)
            return model_management_pb2.ReloadConfigResponse()

        return _answer(context, call)


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments ``k=v,k2=v2``: integer values passed as ints, others as strings."""
    args: list[tuple[str, int | str]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ServingError.invalid_argument(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        args.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return args


class GrpcServer:
    """The gRPC front end: services, health checking (SERVING once models are up) and reflection."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        *,
        address: str,
        socket_path: str = "",
        channel_arguments: str = "",
        max_workers: int = 16,
    ) -> None:
        options = parse_channel_arguments(channel_arguments)
        given = {key for key, _ in options}
        # tensorflow_model_server lifts gRPC's 4 MB default to INT32_MAX unless told otherwise.
        for key in ("grpc.max_receive_message_length", "grpc.max_send_message_length"):
            if key not in given:
                options.append((key, 2**31 - 1))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(manager, metrics), self.server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (PREDICTION_SERVICE, MODEL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise ServingError.unavailable(f"cannot bind the gRPC server to {address}")
        if socket_path:
            self.server.add_insecure_port(f"unix:{socket_path}")
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the server and each service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float | None = None) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
