"""The bidding client: one gRPC channel to TF Serving (or the embedded server), one Predict per bid request.

Only TF Serving's official API is used (``PredictionService.Predict`` and ``GetModelMetadata``,
``ModelService.GetModelStatus`` from tensorflow-serving-api), so the same client talks to the
tensorflow/serving image. A bid request is a mapping::

    {"request_id": "r1", "user_id": 42,
     "features": {...user and context features shared by the candidates...},
     "history": {"hist_category": ["sports", "news"], "hist_ad": [812, 77, 812]},
     "candidates": [{...ad features, incl. bid_type and price...}, ...]}

A candidate's own value of a feature wins over the shared one. ``history`` (optional) holds the user's
behaviour histories the model takes (``Manifest.history_inputs``), each a list of values, most recent
first: sent once per request, as a (1, max_len) tensor padded with the dtype's default ("" / 0) and a (1,)
int64 ``<name>_length``, which the served graph broadcasts to every candidate (``BroadcastRows``). Values
beyond max_len are dropped (the first max_len are kept); a history the request lacks, or an empty list,
has length 0 (a new user); histories the model does not take are ignored. A server that batches the
client's Predicts needs every input to have the same 0th dimension: see ``broadcast_history``.

Predict requests carry raw fields (and histories) only: the served model computes derived features
(``scenario`` = ``media|slot``) itself (decision 0027), so the client never sends them; it builds them
only for its posterior fallback. The arm comes from the experiment (hash of the user id); its model
answers all candidates in one batched Predict within the deadline, retried on UNAVAILABLE by gRPC's
retry policy inside that deadline. When the server is down or the deadline passes, the fallback
(posterior statistics) or no bid answers, and client metrics count it.
"""

from __future__ import annotations

import json
import logging
import reprlib
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
from tensorflow.core.protobuf import meta_graph_pb2
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
from tfads.core.manifest import Manifest, history_length_input
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
      histories: the model's user behaviour histories, name -> (dtype, max_len), as
        ``Manifest.history_inputs``: each Predict carries the history (padded to max_len) and its
        ``<name>_length``, from the request's ``history`` (module docstring).
      broadcast_history: True (default): each history is sent once, a (1, max_len) row and a (1,) length,
        and the served graph broadcasts it to the B candidates. TF Serving feeds a Predict's tensors to the
        session as they are (predict_util.cc), so this works on any server that does not batch the
        request. False: the history is repeated for every candidate, (B, max_len) and (B,). Use False
        when the server batches this client's Predicts: with ``--enable_batching`` TF Serving's batching
        session needs every input of a batched Run to have the same 0th dimension and answers
        INVALID_ARGUMENT "Batching Run() input tensors must have equal 0th-dimension size" otherwise. It
        batches only a Run that fetches every output of a signature, so with ``filter_outputs`` (the
        default) requests bypass its batcher and the broadcast works; with ``filter_outputs=False`` on an
        ``--enable_batching`` server, set ``broadcast_history=False``.
      filter_outputs: True (default): each Predict asks for the outputs the arm bids on only
        (``output_filter``). False: no output_filter, the server returns every output; this is what makes
        TF Serving's ``--enable_batching`` batch the Predicts (a filtered Run matches no signature and
        bypasses the batcher: batching_session.cc ``BatchingSession::InternalRun``).
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
        histories: Mapping[str, tuple[str, int]] | None = None,
        broadcast_history: bool = True,
        filter_outputs: bool = True,
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
        self.histories = _checked_histories(histories or {}, features)
        self.target = target
        self.features = dict(features)
        self.broadcast_history = broadcast_history
        self.filter_outputs = filter_outputs
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
        """A client whose raw inputs, derived features and histories come from a manifest's data mapping."""
        loaded = Manifest(path="manifest.json", data=dict(manifest))
        features = loaded.input_dtypes
        derived = {name: (d.concat, d.separator) for name, d in loaded.derived.items()}
        roles = manifest.get("label_roles") or {}
        with_cvr = "label_roles" not in manifest or roles.get(CONVERSION) is not None
        return cls(target, features, experiment, derived=derived, with_cvr=with_cvr,
                   histories=loaded.history_inputs, **kwargs)

    @property
    def inputs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every input a Predict carries, name -> (dtype, shape of one candidate), as
        ``Manifest.model_inputs``: the raw fields (scalars), then each history (max_len,) and its length."""
        out: dict[str, tuple[str, tuple[int, ...]]] = {name: (dtype, ()) for name, dtype in self.features.items()}
        for name, (dtype, max_len) in self.histories.items():
            out[name] = (dtype, (max_len,))
            out[history_length_input(name)] = ("int64", ())
        return out

    @property
    def experiment(self) -> Experiment:
        """The experiment in force (re-read per request when a watcher is given)."""
        e = self._experiment
        return e.experiment if isinstance(e, ExperimentWatcher) else e

    # ------------------------------------------------------------------ requests

    def build_request(self, arm: Arm, request: Mapping[str, Any]) -> tuple[predict_pb2.PredictRequest, list[dict]]:
        """Validate ``request`` and build the arm's batched PredictRequest of the raw inputs and the user's
        histories (and the merged candidates, with the derived features added for the fallback).

        Raises:
          BidRequestError: no candidates, a missing feature or a wrong-typed value, a history that is not
            a list or holds a wrong-typed value (names them).
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
        histories = request.get("history")
        if histories is None:
            histories = {}
        if not isinstance(histories, Mapping):
            raise BidRequestError(
                f"bid request {rid!r}: 'history' must be a mapping of history name -> list of values "
                f"(most recent first), got {_short(histories)}"
            )
        predict = predict_pb2.PredictRequest(model_spec=_model_spec(arm))
        if self.filter_outputs:
            predict.output_filter.extend(self._outputs(arm))
        for name, dtype in self.features.items():
            values = [_checked(row, name, dtype, rid, i) for i, row in enumerate(merged)]
            predict.inputs[name].CopyFrom(_tensor(dtype, (len(merged),), values))
        rows = 1 if self.broadcast_history else len(merged)  # one row the graph broadcasts, or a copy each
        for name, (dtype, max_len) in self.histories.items():
            values = _history_values(histories.get(name), name, dtype, max_len, rid)
            padded = values + [_PADDING[dtype]] * (max_len - len(values))
            predict.inputs[name].CopyFrom(_tensor(dtype, (rows, max_len), padded * rows))
            predict.inputs[history_length_input(name)].CopyFrom(_tensor("int64", (rows,), [len(values)] * rows))
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
        """Check that every arm's served signature takes exactly the inputs this client sends, with their
        dtypes and per-candidate shapes where the signature gives them (GetModelMetadata): scalar raw
        fields, (max_len,) histories and their scalar lengths.

        Raises:
          ModelInputsError: a signature needs an input the client does not send, e.g. ``scenario`` of a
            model exported before the model computed derived features (re-export it with `tfads export`)
            or a history the client was not given; or it does not take an input the client sends; or it
            takes another dtype or shape (e.g. a history's max_len differs).
          grpc.RpcError: the server did not answer.
        """
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        sent = self.inputs
        for arm in self.experiment.arms:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=_model_spec(arm), metadata_field=["signature_def"]
            )
            response = stub.GetModelMetadata(request, timeout=timeout_s)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            signature = signatures.signature_def[arm.signature_name]
            problems = self._input_problems(signature, sent)
            if problems:
                version = response.model_spec.version.value
                raise ModelInputsError(
                    f"arm {arm.name!r}: model {arm.model_name!r} version {version} signature {arm.signature_name!r} "
                    + "; ".join(problems)
                )

    def _input_problems(
        self, signature: meta_graph_pb2.SignatureDef, sent: Mapping[str, tuple[str, tuple[int, ...]]]
    ) -> list[str]:
        """What differs between a SignatureDef's inputs and the inputs requests carry (empty: nothing)."""
        taken = signature.inputs
        missing = sorted(set(taken) - set(sent) - set(signature.defaults))
        histories = [n for n in missing if _rank(taken[n]) >= 2 or history_length_input(n) in missing]
        lengths = [history_length_input(n) for n in histories if history_length_input(n) in missing]
        others = [n for n in missing if n not in histories and n not in lengths]
        problems = []
        if histories:
            problems.append(
                f"takes the history input(s) {histories} (padded (batch, max_len) values) with their lengths "
                f"{lengths}, which this client does not send: give it the model's histories "
                "(BidClient.from_manifest reads them from the manifest's history block; or histories="
                "{name: (dtype, max_len)}) and put the user's values in each bid request's 'history'"
            )
        if others:
            problems.append(
                f"takes {others}, which requests do not carry (they send raw fields only: {sorted(self.features)}); "
                "a model exported before derived features moved into the model (decision 0027) needs "
                "re-exporting with `tfads export`"
            )
        extra = sorted(set(sent) - set(taken))
        if extra:
            problems.append(
                f"does not take {extra}, which requests carry (TF Serving refuses them: 'input size does not "
                "match signature'); build the client from the manifest the model was trained on"
            )
        for name in sorted(set(sent) & set(taken)):
            problem = _spec_problem(taken[name], *sent[name])
            if problem:
                problems.append(f"input {name!r}: {problem}")
        return problems

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


_INVALID = object()


def _converted(value: Any, dtype: str) -> Any:
    """``value`` converted for a ``dtype`` TensorProto field, or ``_INVALID``."""
    if dtype == "string" and isinstance(value, (str, bytes)):
        return value.encode() if isinstance(value, str) else value
    if dtype == "int64" and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if INT64_MIN <= int(value) <= INT64_MAX:
            return int(value)
    if dtype == "float32" and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if np.isfinite(value):
            return float(value)
    return _INVALID


def _checked(row: Mapping[str, Any], name: str, dtype: str, rid: Any, i: int) -> Any:
    """The value of feature ``name`` in candidate ``i``, converted for its TensorProto field."""
    if name not in row:
        raise BidRequestError(f"bid request {rid!r}: candidate {i}: missing feature {name!r} ({dtype})")
    value = _converted(row[name], dtype)
    if value is _INVALID:
        raise BidRequestError(
            f"bid request {rid!r}: candidate {i}: feature {name!r} must be {_KINDS[dtype]}, got {row[name]!r}"
        )
    return value


_KINDS = {"string": "a string", "int64": "an integer in int64 range", "float32": "a finite number"}
_PADDING = {"string": b"", "int64": 0, "float32": 0.0}  # parse_examples pads histories with these


def _history_values(value: Any, name: str, dtype: str, max_len: int, rid: Any) -> list[Any]:
    """The request's values of history ``name`` (None: none), converted, the first ``max_len`` only."""
    if value is None:
        return []
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise BidRequestError(
            f"bid request {rid!r}: history {name!r} must be a list of values ({dtype}, most recent first), "
            f"got {_short(value)}"
        )
    out = []
    for i, item in enumerate(value[:max_len]):  # the most recent max_len; the rest is dropped unread
        converted = _converted(item, dtype)
        if converted is _INVALID:
            raise BidRequestError(
                f"bid request {rid!r}: history {name!r}: value {i} must be {_KINDS[dtype]}, got {_short(item)}"
            )
        out.append(converted)
    return out


def _short(value: Any) -> str:
    """``repr(value)``, shortened for error messages."""
    return reprlib.repr(value)


def _tensor(dtype: str, shape: Sequence[int], values: Sequence[Any]) -> tensor_pb2.TensorProto:
    """A TensorProto of ``dtype`` and ``shape`` holding ``values`` (row-major) in its typed field."""
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    tensor = tensor_pb2.TensorProto(dtype=DTYPES[dtype], tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))
    getattr(tensor, FIELDS[dtype]).extend(values)
    return tensor


def _checked_histories(
    histories: Mapping[str, tuple[str, int]], features: Mapping[str, str]
) -> dict[str, tuple[str, int]]:
    """``histories`` as name -> (dtype, max_len); ValueError for an unknown dtype, a max_len below 1 or a
    history (or its length input) named like a feature."""
    out = {}
    for name, (dtype, max_len) in histories.items():
        if dtype not in DTYPES:
            raise ValueError(f"history {name!r}: unsupported dtype {dtype!r} (expected string, int64 or float32)")
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"history {name!r}: max_len must be a positive integer, got {max_len!r}")
        clash = sorted({name, history_length_input(name)} & set(features))
        if clash:
            raise ValueError(f"history {name!r}: its input(s) {clash} are also raw features")
        out[name] = (dtype, int(max_len))
    return out


def _rank(info: meta_graph_pb2.TensorInfo) -> int:
    """The rank of a signature's TensorInfo; -1 when unknown or not given."""
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        return -1
    return len(info.tensor_shape.dim)


def _spec_problem(info: meta_graph_pb2.TensorInfo, dtype: str, shape: tuple[int, ...]) -> str | None:
    """How a signature input (TensorInfo) differs from what requests send: ``dtype`` values of shape
    ``(batch, *shape)``; None when it matches or the signature does not say (unknown dtype, shape or dims)."""
    if info.dtype != types_pb2.DT_INVALID and info.dtype != DTYPES[dtype]:
        return f"the signature takes {types_pb2.DataType.Name(info.dtype)}, requests send {dtype}"
    rank = _rank(info)
    if rank < 0:
        return None
    served = [d.size for d in info.tensor_shape.dim]
    if rank != 1 + len(shape) or any(size >= 0 and size != want for size, want in zip(served[1:], shape, strict=True)):
        sent = ", ".join(["batch", *map(str, shape)])
        hint = " (a history's max_len differs: build the client from the model's manifest)" if shape else ""
        return f"the signature takes shape {served}, requests send [{sent}]{hint}"
    return None


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
