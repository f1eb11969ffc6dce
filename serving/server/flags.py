"""tensorflow_model_server's command-line flags (same names, meanings and defaults), plus --host."""

from __future__ import annotations

import argparse


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the model server flags on ``parser``."""
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
    add("--grpc_socket_path", default="", help="also listen for gRPC on this UNIX socket")
    add("--rest_api_port", type=int, default=0, help="REST (HTTP/JSON) port; 0 disables the REST API")
    add("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout (ms)")
    add("--host", default="127.0.0.1", help="interface to listen on (tfads addition; TF Serving binds 0.0.0.0)")
    add("--model_name", default="default", help="name of the single model (without --model_config_file)")
    add("--model_base_path", default="", help="directory of <version>/ SavedModels of the single model")
    add("--model_config_file", default="", help="text-format ModelServerConfig; overrides --model_name/_base_path")
    add(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="re-read --model_config_file every N seconds (0 = read once)",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="look for new model versions every N seconds (0 = only at start-up)",
    )
    add("--monitoring_config_file", default="", help="text-format MonitoringConfig (Prometheus endpoint)")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False, help="batch concurrent requests")
    add("--batching_parameters_file", default="", help="text-format BatchingParameters")
    add(
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="allow version labels to point at versions that are not yet AVAILABLE",
    )
    add(
        "--tensorflow_session_parallelism",
        type=int,
        default=0,
        help="threads per Session for intra- and inter-op work when the two flags below are 0 (0 = auto)",
    )
    add("--tensorflow_intra_op_parallelism", type=int, default=0, help="threads for one op, e.g. a matmul (0 = auto)")
    add(
        "--tensorflow_inter_op_parallelism",
        type=int,
        default=0,
        help="threads running ops in parallel (0 = --tensorflow_session_parallelism); if that is below 2, "
        "a request's ops run in its own handler thread",
    )
    add("--grpc_channel_arguments", default="", help="comma-separated gRPC server arguments, key=value")
    add("--grpc_max_threads", type=int, default=16, help="threads handling gRPC requests")


def parse_flags(argv: list[str]) -> argparse.Namespace:
    """Parse model server flags (for tests and embedding)."""
    parser = argparse.ArgumentParser(prog="tfads serve")
    add_arguments(parser)
    return parser.parse_args(argv)
