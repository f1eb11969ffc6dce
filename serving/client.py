"""The bidding client: one gRPC channel to TF Serving (or the embedded server), one Predict per bid request.

Only TF Serving's official API is used (``PredictionService.Predict`` and ``GetModelMetadata``,
``ModelService.GetModelStatus`` from tensorflow-serving-api), so the same client talks to the
tensorflow/serving image. A bid request is a mapping::

    {"request_id": "r1", "user_id": 42,
     "features": {...user and context features shared by the candidates...},
     "candidates": [{...ad features, incl. bid_type and price...}, ...]}

A candidate's own value of a feature wins over the shared one. Predict requests carry raw fields only:
the served model computes derived features (``scenario`` = ``media|slot``) itself (decision 0027), so
the client never sends them; it builds them only for its posterior fallback. The arm comes from the
experiment (hash of the user id); its model answers all candidates in one batched Predict within the
deadline, retried on UNAVAILABLE by gRPC's retry policy inside that deadline. When the server is down or
the deadline passes, the fallback (posterior statistics) or no bid answers, and client metrics count it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import prometheus_client as prom

import tfads  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.bidding import BID_TYPES, compute_bids
from serving.experiment import Arm, Experiment, ExperimentWatcher
from serving.fallback import PosteriorFallback
from tfads.core.manifest import Manifest
from tfads.core.names import CONVERSION

REQUEST_USER = "user_id"  # the bid request field that keys the A/B assignment (protocol, not a data field)

log = logging.getLogger(__name__)

DTYPES = {"string": types_pb2.DT_STRING, "int64": types_pb2.DT_INT64, "float32": types_pb2.DT_FLOAT}
FIELDS = {"string": "string_val", "int64": "int64_val", "float32": "float_val"}
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 1.0)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class BidRequestError(ValueError):
    """A bid request is malformed: the message names the request, the candidate and the feature."""


class ModelInputsError(RuntimeError):
    """A served signature takes inputs the client does not send (e.g. a model exported before derived
    features moved into the model, which still asks for ``scenario``: re-export it)."""


@dataclass(frozen=True)
class BidResponse:
    """The bids for one request, with the arm and the model version that produced them.

    ``source`` is ``model`` (the server answered), ``fallback`` (posterior statistics) or ``none``
    (no bid); ``bids`` are CPM per candidate (0 = no bid), ``model_version`` is None unless the
    model answered.
    """

    request_id: str
    arm: str
    model_name: str
    model_version: int | None
    source: str
    bids: np.ndarray
    p_ctr: np.ndarray
    p_cvr: np.ndarray
    latency_s: float
    fallback_reason: str | None = None

    @property
    def winner(self) -> int | None:
        """Index of the highest positive bid (None if no candidate bids)."""
        if not len(self.bids) or self.bids.max() <= 0:
            return None
        return int(np.argmax(self.bids))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "request_id": self.request_id, "arm": self.arm, "model_name": self.model_name,
            "model_version": self.model_version, "source": self.source, "fallback_reason": self.fallback_reason,
            "winner": self.winner, "bids": [round(float(b), 6) for b in self.bids],
            "p_ctr": [float(p) for p in self.p_ctr], "p_cvr": [float(p) for p in self.p_cvr],
            "latency_ms": round(self.latency_s * 1000, 3),
        }


@dataclass
class ClientMetrics:
    """Prometheus metrics of one client (on its own registry unless one is given)."""

    registry: prom.CollectorRegistry = field(default_factory=prom.CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = prom.Counter("tfads_bid_requests", "Bid requests by arm and source", ["arm", "source"],
                                     registry=r)
        self.fallbacks = prom.Counter("tfads_bid_fallbacks", "Requests the model did not answer, by reason",
                                      ["arm", "reason"], registry=r)
        self.invalid = prom.Counter("tfads_bid_invalid_requests", "Bid requests rejected by validation",
                                    registry=r)
        self.latency = prom.Histogram("tfads_bid_latency_seconds", "End-to-end bid latency", ["arm", "source"],
                                      buckets=LATENCY_BUCKETS, registry=r)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 if never set), e.g. ``value("tfads_bid_fallbacks_total", arm="a", ...)``."""
        return self.registry.get_sample_value(name, labels) or 0.0


def retry_service_config(*, attempts: int, initial_backoff_ms: float, max_backoff_ms: float) -> str:
    """gRPC service config retrying Predict/GetModelStatus on UNAVAILABLE (always inside the call's deadline)."""
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": f"{initial_backoff_ms / 1000:.4f}s",
        "maxBackoff": f"{max_backoff_ms / 1000:.4f}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [{"service": "tensorflow.serving.PredictionService"}, {"service": "tensorflow.serving.ModelService"}]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


class BidClient:
    """Bids for candidate ads through TF Serving's Predict API, one persistent channel per client.

    Args:
      target: ``host:port`` of the model server's gRPC port.
      features: the model's raw inputs, name -> dtype (``string``, ``int64``, ``float32``), as
        ``Manifest.input_dtypes``: what every Predict carries.
      experiment: an Experiment, or an ExperimentWatcher whose current experiment is used per request.
      deadline_ms: deadline of each Predict call, retries included.
      fallback: posterior-statistics predictions when the model does not answer (None: no bid).
      derived: derived feature -> (parts, separator), built for the fallback's lookups when a request
        lacks it (never sent: the model computes its own).
      with_cvr: the served model has a pCVR head (ESMM); a click-only (CTR) model has none, and its
        oCPC / oCPA candidates get no bid (they need pCVR) while CPC and CPM ones bid as usual.
      credentials: TLS channel credentials (None: plaintext, for loopback and sidecars).
      max_message_bytes: gRPC send/receive message size limit.
      retry_attempts, initial_backoff_ms, max_backoff_ms: gRPC retry policy on UNAVAILABLE.
      registry: Prometheus registry for the client metrics (default: a private one; pass
        ``prometheus_client.REGISTRY`` to expose them with the process's other metrics).
    """

    def __init__(
        self,
        target: str,
        features: Mapping[str, str],
        experiment: Experiment | ExperimentWatcher,
        *,
        deadline_ms: float = 10.0,
        fallback: PosteriorFallback | None = None,
        derived: Mapping[str, tuple[Sequence[str], str]] | None = None,
        with_cvr: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        retry_attempts: int = 3,
        initial_backoff_ms: float = 1.0,
        max_backoff_ms: float = 4.0,
        registry: prom.CollectorRegistry | None = None,
    ) -> None:
        unknown = {n: d for n, d in features.items() if d not in DTYPES}
        if unknown:
            name, dtype = next(iter(unknown.items()))
            raise ValueError(f"feature {name!r}: unsupported dtype {dtype!r} (expected string, int64 or float32)")
        if deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be positive, got {deadline_ms}")
        self.target = target
        self.features = dict(features)
        self._experiment = experiment
        self.deadline_s = deadline_ms / 1000.0
        self.fallback = fallback
        self.derived = {k: (list(p), sep) for k, (p, sep) in (derived or {}).items()}
        self.with_cvr = with_cvr
        self.metrics = ClientMetrics(registry or prom.CollectorRegistry())
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", retry_service_config(
                attempts=retry_attempts, initial_backoff_ms=initial_backoff_ms, max_backoff_ms=max_backoff_ms)),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel).Predict

    @classmethod
    def from_manifest(cls, target: str, manifest: Mapping[str, Any], experiment: Experiment | ExperimentWatcher,
                      **kwargs: Any) -> BidClient:
        """A client whose raw inputs and derived features come from a manifest's data mapping."""
        loaded = Manifest(path="manifest.json", data=dict(manifest))
        features = loaded.input_dtypes
        derived = {name: (d.concat, d.separator) for name, d in loaded.derived.items()}
        roles = manifest.get("label_roles") or {}
        with_cvr = "label_roles" not in manifest or roles.get(CONVERSION) is not None
        return cls(target, features, experiment, derived=derived, with_cvr=with_cvr, **kwargs)

    @property
    def experiment(self) -> Experiment:
        """The experiment in force (re-read per request when a watcher is given)."""
        e = self._experiment
        return e.experiment if isinstance(e, ExperimentWatcher) else e

    # ------------------------------------------------------------------ requests

    def build_request(self, arm: Arm, request: Mapping[str, Any]) -> tuple[predict_pb2.PredictRequest, list[dict]]:
        """Validate ``request`` and build the arm's batched PredictRequest of the raw inputs (and the merged
        candidates, with the derived features added for the fallback).

        Raises:
          BidRequestError: no candidates, a missing feature or a wrong-typed value (names them).
        """
        rid = request.get("request_id", "?")
        shared = request.get("features") or {}
        candidates = request.get("candidates")
        if not isinstance(shared, Mapping):
            raise BidRequestError(f"bid request {rid!r}: 'features' must be a mapping")
        if not isinstance(candidates, Sequence) or isinstance(candidates, str) or not candidates:
            raise BidRequestError(f"bid request {rid!r}: 'candidates' must be a non-empty list of mappings")
        merged = []
        for i, cand in enumerate(candidates):
            if not isinstance(cand, Mapping):
                raise BidRequestError(f"bid request {rid!r}: candidate {i} must be a mapping")
            merged.append(with_derived({**shared, **cand}, self.derived))  # for the fallback only
        predict = predict_pb2.PredictRequest(model_spec=_model_spec(arm))
        predict.output_filter.extend(self._outputs(arm))
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(merged))])
        for name, dtype in self.features.items():
            values = [_checked(row, name, dtype, rid, i) for i, row in enumerate(merged)]
            tensor = tensor_pb2.TensorProto(dtype=DTYPES[dtype], tensor_shape=shape)
            getattr(tensor, FIELDS[dtype]).extend(values)
            predict.inputs[name].CopyFrom(tensor)
        return predict, merged

    def bid(self, request: Mapping[str, Any], *, arm: str | None = None) -> BidResponse:
        """Bids for every candidate of ``request`` (the experiment's arm for its user, or ``arm``).

        Raises:
          BidRequestError: the request is malformed (never for server trouble, which falls back).
        """
        start = time.perf_counter()
        experiment = self.experiment
        try:
            if not isinstance(request, Mapping):
                raise BidRequestError(f"a bid request must be a mapping, got {type(request).__name__}")
            chosen = experiment.arm(arm) if arm is not None else experiment.assign(_user_id(request))
            predict, merged = self.build_request(chosen, request)
            prices = [_price_terms(row, request.get("request_id", "?"), i) for i, row in enumerate(merged)]
        except BidRequestError:
            self.metrics.invalid.inc()
            raise
        version, reason = None, None
        try:
            response = self._predict(predict, timeout=self.deadline_s)
            p_ctr, *rest = (_output(response, k, len(merged)) for k in self._outputs(chosen))
            p_cvr = rest[0] if rest else np.full(len(merged), np.nan)
            version = response.model_spec.version.value if response.model_spec.HasField("version") else None
            source = "model"
        except grpc.RpcError as e:
            reason = e.code().name.lower() if e.code() else "unknown"
            if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                log.warning("Predict for arm %r failed with %s: %s", chosen.name, e.code(), e.details())
            p_ctr, p_cvr, source = *self._fallback(merged), "fallback" if self.fallback else "none"
            self.metrics.fallbacks.labels(chosen.name, reason).inc()
        except ValueError as e:
            reason = "bad_response"
            log.warning("arm %r: unusable Predict response: %s", chosen.name, e)
            p_ctr, p_cvr, source = *self._fallback(merged), "fallback" if self.fallback else "none"
            self.metrics.fallbacks.labels(chosen.name, reason).inc()
        bid_types, amounts = zip(*prices, strict=True)
        bids = compute_bids(p_ctr, p_cvr, bid_types, amounts, chosen.bidding)
        elapsed = time.perf_counter() - start
        self.metrics.requests.labels(chosen.name, source).inc()
        self.metrics.latency.labels(chosen.name, source).observe(elapsed)
        return BidResponse(
            request_id=str(request.get("request_id", "")), arm=chosen.name, model_name=chosen.model_name,
            model_version=version, source=source, bids=bids, p_ctr=p_ctr, p_cvr=p_cvr, latency_s=elapsed,
            fallback_reason=reason,
        )

    def _outputs(self, arm: Arm) -> tuple[str, ...]:
        """The outputs the arm bids on: (pCTR, pCVR), or (pCTR,) for a click-only model."""
        names = arm.bidding.output_names
        return names if self.with_cvr else names[:1]

    def _fallback(self, merged: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        if self.fallback is None:
            nan = np.full(len(merged), np.nan)
            return nan, nan.copy()
        return self.fallback.predict(merged)

    # ------------------------------------------------------------------ status

    def wait_until_available(self, timeout_s: float = 30.0) -> dict[str, list[int]]:
        """Block until every arm's model has an AVAILABLE version, check its inputs (:meth:`check_inputs`)
        and return the versions per model.

        Raises:
          TimeoutError: a model is not available within ``timeout_s``.
          ModelInputsError: a served signature needs an input requests do not carry.
        """
        models = {(a.model_name, a.version) for a in self.experiment.arms}
        found = wait_for_models(self.channel, sorted(models, key=str), timeout_s=timeout_s)
        self.check_inputs(timeout_s=timeout_s)
        return found

    def check_inputs(self, timeout_s: float = 10.0) -> None:
        """Check that every arm's served signature takes only inputs this client sends (GetModelMetadata).

        Raises:
          ModelInputsError: a signature needs an input the client does not send, e.g. ``scenario`` of a
            model exported before the model computed derived features (re-export it with `tfads export`).
          grpc.RpcError: the server did not answer.
        """
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        for arm in self.experiment.arms:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=_model_spec(arm), metadata_field=["signature_def"]
            )
            response = stub.GetModelMetadata(request, timeout=timeout_s)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            signature = signatures.signature_def[arm.signature_name]
            missing = sorted(set(signature.inputs) - set(self.features))
            if missing:
                version = response.model_spec.version.value
                raise ModelInputsError(
                    f"arm {arm.name!r}: model {arm.model_name!r} version {version} signature {arm.signature_name!r} "
                    f"takes {missing}, which requests do not carry (they send raw fields only: "
                    f"{sorted(self.features)}); a model exported before derived features moved into the model "
                    "(decision 0027) needs re-exporting with `tfads export`"
                )

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> BidClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_derived(row: Mapping[str, Any], derived: Mapping[str, tuple[Sequence[str], str]]) -> dict[str, Any]:
    """``row`` with each derived feature it lacks (and has the parts of) joined as the Beam job joins it:
    ``str()`` of each part (ints as decimal text), separated by the separator. Used for posterior
    lookups and reports only; a served model computes its own (decision 0027)."""
    out = dict(row)
    for name, (parts, sep) in derived.items():
        if name not in out and all(p in out for p in parts):
            out[name] = sep.join(str(out[p]) for p in parts)
    return out


def wait_for_models(
    channel: grpc.Channel,
    models: Sequence[tuple[str, int | None]],
    *,
    timeout_s: float = 30.0,
    alive: Callable[[], bool] = lambda: True,
) -> dict[str, list[int]]:
    """Poll ModelService.GetModelStatus until each (name, version or None) has an AVAILABLE version
    and no version still loading.

    Returns the AVAILABLE versions per model name. ``alive`` lets a launcher stop waiting on a
    server process that died.

    Raises:
      TimeoutError: a model is not available within ``timeout_s`` or ``alive()`` turned false
        (names the model and the last answer).
    """
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    found: dict[str, list[int]] = {}
    for name, version in models:
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not alive():
                raise TimeoutError(f"model {name!r} not available within {timeout_s:g} s: {last}")
            try:
                status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=spec),
                                             timeout=min(left, 1.0), wait_for_ready=True)
                states = {s.version: s.state for s in status.model_version_status}
                ready = sorted(v for v, state in states.items() if state == AVAILABLE)
                if ready and all(state >= AVAILABLE for state in states.values()):
                    found[name] = ready
                    break
                last = f"version states {states}"
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            pause.wait(min(0.05, max(0.0, deadline - time.monotonic())))
    return found


def _model_spec(arm: Arm) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=arm.model_name, signature_name=arm.signature_name)
    if arm.version_label is not None:
        spec.version_label = arm.version_label
    elif arm.version is not None:
        spec.version.value = arm.version
    return spec


def _user_id(request: Mapping[str, Any]) -> Any:
    """The bid request's user (``REQUEST_USER``, at the top or among the shared features): the A/B key."""
    if REQUEST_USER in request:
        return request[REQUEST_USER]
    shared = request.get("features") or {}
    if isinstance(shared, Mapping) and REQUEST_USER in shared:
        return shared[REQUEST_USER]
    raise BidRequestError(
        f"bid request {request.get('request_id', '?')!r}: no {REQUEST_USER} (needed for the A/B arm)"
    )


def _checked(row: Mapping[str, Any], name: str, dtype: str, rid: Any, i: int) -> Any:
    """The value of feature ``name`` in candidate ``i``, converted for its TensorProto field."""
    if name not in row:
        raise BidRequestError(f"bid request {rid!r}: candidate {i}: missing feature {name!r} ({dtype})")
    value = row[name]
    if dtype == "string" and isinstance(value, (str, bytes)):
        return value.encode() if isinstance(value, str) else value
    if dtype == "int64" and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if INT64_MIN <= int(value) <= INT64_MAX:
            return int(value)
    if dtype == "float32" and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if np.isfinite(value):
            return float(value)
    raise BidRequestError(
        f"bid request {rid!r}: candidate {i}: feature {name!r} must be {_KINDS[dtype]}, got {value!r}"
    )


_KINDS = {"string": "a string", "int64": "an integer in int64 range", "float32": "a finite number"}


def _price_terms(row: Mapping[str, Any], rid: Any, i: int) -> tuple[str, float]:
    """(bid_type, price) of a candidate, checked."""
    bid_type, price = row.get("bid_type"), row.get("price")
    if bid_type not in BID_TYPES:
        raise BidRequestError(
            f"bid request {rid!r}: candidate {i}: 'bid_type' must be one of {', '.join(BID_TYPES)}, got {bid_type!r}"
        )
    if isinstance(price, bool) or not isinstance(price, (int, float, np.integer, np.floating)):
        raise BidRequestError(f"bid request {rid!r}: candidate {i}: 'price' must be a number, got {price!r}")
    return bid_type, float(price)


def _output(response: predict_pb2.PredictResponse, name: str, n: int) -> np.ndarray:
    """Output ``name`` as a float64 vector of length ``n``; ValueError if absent or misshapen."""
    if name not in response.outputs:
        raise ValueError(f"output {name!r} missing (have {sorted(response.outputs)})")
    tensor = response.outputs[name]
    if tensor.float_val:
        values = np.asarray(tensor.float_val, dtype=np.float64)
    elif tensor.double_val:
        values = np.asarray(tensor.double_val, dtype=np.float64)
    elif tensor.tensor_content:
        np_dtype = np.float64 if tensor.dtype == types_pb2.DT_DOUBLE else np.float32
        values = np.frombuffer(tensor.tensor_content, dtype=np_dtype).astype(np.float64)
    else:
        values = np.zeros(0)
    if values.size != n:
        raise ValueError(f"output {name!r} has {values.size} values for {n} candidates")
    return values
