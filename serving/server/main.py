"""The embedded TF-Serving-compatible model server: ``tfads serve`` / ``python -m serving.server``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from serving.server import flags
from serving.server.batching import Batching
from serving.server.configs import (
    DEFAULT_PROMETHEUS_PATH,
    BatchingParameters,
    ModelServerConfig,
    MonitoringConfig,
    batching_options,
    read_text_proto,
    single_model_config,
)
from serving.server.errors import ServingError
from serving.server.grpc_service import GrpcServer
from serving.server.model_manager import ModelManager
from serving.server.monitoring import Metrics
from serving.server.rest import RestServer
from serving.server.servable import session_config

log = logging.getLogger(__name__)

add_arguments = flags.add_arguments


def _model_config(args: argparse.Namespace) -> ModelServerConfig:
    if args.model_config_file:
        return read_text_proto(args.model_config_file, ModelServerConfig)
    if not args.model_base_path:
        raise ServingError.invalid_argument("Both server_model_config_file and model_base_path are empty!")
    return single_model_config(args.model_name, args.model_base_path)


def _metrics_path(args: argparse.Namespace) -> str | None:
    if not args.monitoring_config_file:
        return None
    prometheus = read_text_proto(args.monitoring_config_file, MonitoringConfig).prometheus_config
    return (prometheus.path or DEFAULT_PROMETHEUS_PATH) if prometheus.enable else None


class ModelServer:
    """gRPC + REST front ends over one ModelManager, configured from tensorflow_model_server flags."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.rest_api_port and args.rest_api_port == args.port:
            raise ServingError.invalid_argument("--rest_api_port cannot be same as --port.")
        self.args = args
        self.metrics = Metrics()
        self._batching = None
        if args.enable_batching:
            params = (
                read_text_proto(args.batching_parameters_file, BatchingParameters)
                if args.batching_parameters_file
                else BatchingParameters()
            )
            self._batching = Batching(batching_options(params))
        metrics_path = _metrics_path(args)
        self.manager = ModelManager(
            _model_config(args),
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
            on_load=self._batching.attach if self._batching else None,
            on_unload=self._batching.detach if self._batching else None,
            on_load_attempt=self.metrics.load_attempt,
            on_change=self._update_health,
            session_config=session_config(
                args.tensorflow_session_parallelism,
                args.tensorflow_intra_op_parallelism,
                args.tensorflow_inter_op_parallelism,
            ),
        )
        self.grpc = GrpcServer(
            self.manager,
            self.metrics,
            address=f"{args.host}:{args.port}",
            socket_path=args.grpc_socket_path,
            channel_arguments=args.grpc_channel_arguments,
            max_workers=args.grpc_max_threads,
        )
        self.rest = None
        if args.rest_api_port:
            self.rest = RestServer(
                self.manager,
                self.metrics,
                host=args.host,
                port=args.rest_api_port,
                metrics_path=metrics_path,
                timeout_s=args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else None,
            )
        elif metrics_path:
            log.warning("Prometheus metrics are served on the REST port; set --rest_api_port to expose them")
        self._stop = threading.Event()
        self._config_thread: threading.Thread | None = None

    @property
    def grpc_port(self) -> int:
        return self.grpc.port

    @property
    def rest_port(self) -> int | None:
        return self.rest.port if self.rest else None

    def _update_health(self) -> None:
        self.grpc.set_serving(self.manager.ready())

    def start(self) -> ModelServer:
        """Start gRPC (health NOT_SERVING), load the models, then REST and the config poller."""
        self.grpc.start()
        try:
            self.manager.start()
        except ServingError:
            self.grpc.stop()
            raise
        if self.rest:
            self.rest.start()
        if self.args.model_config_file and self.args.model_config_file_poll_wait_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_config, name="config-poll", daemon=True)
            self._config_thread.start()
        log.info("Running gRPC ModelServer at %s:%d ...", self.args.host, self.grpc_port)
        if self.rest:
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.args.host, self.rest_port)
        return self

    def _poll_config(self) -> None:
        path = self.args.model_config_file
        last = self.manager.config()
        while not self._stop.wait(self.args.model_config_file_poll_wait_seconds):
            try:
                config = read_text_proto(path, ModelServerConfig)
                if config != last:
                    self.manager.reload_config(config)
                    last = config
                    log.info("Reloaded model config from %s", path)
            except ServingError as e:
                log.error("Failed to reload model config %s: %s", path, e.message)
            except Exception:  # noqa: BLE001 - keep polling; the serving models stay in place
                log.exception("Failed to reload model config %s", path)

    def stop(self) -> None:
        """Stop accepting requests, stop the pollers and unload every model."""
        self._stop.set()
        if self._config_thread is not None:
            self._config_thread.join()
        if self.rest:
            self.rest.stop()
        self.grpc.stop(grace=1.0)
        self.manager.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_stopped(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit code 2 for a configuration error."""
    try:
        server = ModelServer(args).start()
    except ServingError as e:
        print(f"tfads serve: error: {e.message}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(
        f"serving gRPC on {args.host}:{server.grpc_port}"
        + (f", REST on {args.host}:{server.rest_port}" if server.rest else ""),
        flush=True,
    )
    done.wait()
    server.stop()
    return 0
