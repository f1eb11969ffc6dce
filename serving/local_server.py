"""The embedded model server as a subprocess on a free 127.0.0.1 port, for demos, tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import grpc

from serving.client import wait_for_models


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_config_text(name: str, base_path: str, labels: Mapping[str, int]) -> str:
    """A text-format ModelServerConfig serving the labelled versions of one model."""
    versions = "".join(f"        versions: {v}\n" for v in sorted(set(labels.values())))
    label_lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{name}"\n    base_path: "{os.path.abspath(base_path)}"\n    model_platform: "tensorflow"\n'
        f"    model_version_policy {{\n      specific {{\n{versions}      }}\n    }}\n{label_lines}"
        "  }\n}\n"
    )


@contextlib.contextmanager
def embedded_server(
    flags: Sequence[str], models: Sequence[str], *, timeout_s: float = 120.0, log_path: str | None = None
) -> Iterator[str]:
    """Run ``python -m serving.server <flags>`` on a free 127.0.0.1 port; yield its gRPC target once
    every model in ``models`` has an AVAILABLE version (ModelService.GetModelStatus); stop it after.

    Raises:
      RuntimeError: the server exited or its models did not become available (with its log's tail).
    """
    port = free_port()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(
            open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")  # noqa: SIM115
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", f"--port={port}", *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )
        target = f"127.0.0.1:{port}"
        try:
            channel = stack.enter_context(grpc.insecure_channel(target))
            try:
                wait_for_models(channel, [(m, None) for m in models], timeout_s=timeout_s,
                                alive=lambda: proc.poll() is None)
            except TimeoutError as e:
                log.seek(0)
                tail = log.read()[-2000:]
                raise RuntimeError(f"embedded server on {target} not ready ({e}); its log ends:\n{tail}") from e
            yield target
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
