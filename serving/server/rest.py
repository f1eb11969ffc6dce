"""TF Serving's REST API on the stdlib ThreadingHTTPServer (HTTP/1.1 keep-alive)."""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_pb2,
    regression_pb2,
)

from serving.server import inference
from serving.server.batching import request_deadline
from serving.server.errors import ServingError
from serving.server.grpc_service import SIGNATURE_DEF_FIELD, model_metadata
from serving.server.json_codec import decode_examples, decode_predict, encode_predict, float32_json
from serving.server.model_manager import ModelManager
from serving.server.monitoring import Metrics
from serving.server.servable import DEFAULT_SIGNATURE, Servable, Signature

log = logging.getLogger(__name__)

PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[a-z]+))?$"
)


def _to_json(message) -> dict:
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


class RestApi:
    """Request handling independent of HTTP plumbing: (method, path, body) -> (status, JSON)."""

    def __init__(self, manager: ModelManager, metrics: Metrics, timeout_s: float | None = None) -> None:
        self._manager, self._metrics, self._timeout = manager, metrics, timeout_s

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """Answer one request; errors become ``{"error": message}`` with TF Serving's HTTP status."""
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as e:
            return e.http_status, {"error": e.message}
        except Exception as e:  # noqa: BLE001 - the server stays up whatever it is sent
            log.exception("internal error on %s %s", method, path)
            return 500, {"error": f"{type(e).__name__}: {e}"}

    def _dispatch(self, method: str, path: str, body: bytes) -> dict:
        match = PATH.match(path.split("?", 1)[0])
        if method == "GET" and path.split("?", 1)[0].rstrip("/") == "/v1/models":
            raise ServingError.invalid_argument("Missing model name in request.")
        if match is None or (method == "GET") == bool(match["verb"]) or (method == "POST" and match["metadata"]):
            raise ServingError.invalid_argument(f"Malformed request: {method} {path}")
        spec = model_pb2.ModelSpec(name=match["name"])
        if match["version"]:
            if int(match["version"]) >= 2**63:
                raise ServingError.invalid_argument(f"Failed to convert version: {match['version']} to numeric.")
            spec.version.value = int(match["version"])
        elif match["label"]:
            spec.version_label = match["label"]
        if method == "GET":
            if match["metadata"]:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD]
                )
                return self._metadata_json(model_metadata(self._manager, request))
            return _to_json(self._manager.model_status(spec))
        verb = match["verb"]
        if verb not in ("predict", "classify", "regress"):
            raise ServingError.invalid_argument(f"Malformed request: {method} {path}")
        payload = _parse_body(body)
        signature_name = payload.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError.invalid_argument(
                f"JSON Value: {orjson.dumps(payload).decode()} not formatted correctly. "
                "'signature_name' key must be a string value."
            )
        spec.signature_name = signature_name
        with self._metrics.request(spec.name, verb, "REST"), request_deadline(self._timeout):
            servable = self._manager.resolve(spec)
            if verb == "predict":
                sig = _predict_signature(servable, signature_name)
                inputs, row_format = decode_predict(payload, sig)
                return encode_predict(sig.run(inputs), row_format)
            request_input = decode_examples(payload)
            if verb == "classify":
                result = inference.classify(
                    servable, classification_pb2.ClassificationRequest(model_spec=spec, input=request_input)
                ).result
                return {"results": [_classes_json(row.classes) for row in result.classifications]}
            result = inference.regress(
                servable, regression_pb2.RegressionRequest(model_spec=spec, input=request_input)
            ).result
            return {"results": float32_json([r.value for r in result.regressions])}

    @staticmethod
    def _metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(sig_map)
        return {
            "model_spec": _to_json(response.model_spec) | {"version": str(response.model_spec.version.value)},
            "metadata": {SIGNATURE_DEF_FIELD: _to_json(sig_map)},
        }


def _classes_json(classes) -> list[list]:
    """One example's classes as ``[[label, score], ...]`` (MakeJsonFromClassificationResult)."""
    scores = float32_json([c.score for c in classes])
    return [[c.label, score] for c, score in zip(classes, scores, strict=True)]


def _predict_signature(servable: Servable, name: str) -> Signature:
    """The signature a :predict body names; INVALID_ARGUMENT if absent (HttpRestApiHandler::GetInfoMap)."""
    key = name or DEFAULT_SIGNATURE
    sig = servable.signatures.get(key)
    if sig is None:
        raise ServingError.invalid_argument(f'Serving signature name: "{key}" not found in signature def')
    return sig


def _parse_body(body: bytes) -> dict:
    """The request body as a JSON object (json_tensor.cc ParseJson)."""
    if not body.strip():
        raise ServingError.invalid_argument("JSON Parse error: The document is empty")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ServingError.invalid_argument(f"JSON Parse error: Invalid value. at offset: {e.pos} ({e.msg})") from e
    if not isinstance(payload, dict):
        raise ServingError.invalid_argument(f"JSON Value: {orjson.dumps(payload).decode()} Is not object")
    return payload


def _handler_class(api: RestApi, metrics: Metrics, metrics_path: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if metrics_path is not None and self.path.split("?", 1)[0] == metrics_path and method == "GET":
                self._reply(200, metrics.exposition(), metrics.content_type)
                return
            status, payload = api.handle(method, self.path, body)
            self._reply(status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
            log.debug(format, *args)

    return Handler


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog; the default 5 resets connections under concurrency


class RestServer:
    """The REST front end, plus the Prometheus endpoint when monitoring is enabled."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        metrics_path: str | None,
        timeout_s: float | None = None,
    ) -> None:
        handler = _handler_class(RestApi(manager, metrics, timeout_s), metrics, metrics_path)
        self.httpd = _HttpServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
