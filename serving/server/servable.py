"""One loaded model version: its SavedModel in a Session, signatures and their input/output specs.

Like tensorflow_model_server (``LoadSavedModel`` -> ``Session::Run``), the ``serve`` MetaGraph is loaded
into a graph-mode Session and each signature runs as one callable feeding and fetching the tensor
names its SignatureDef lists: no eager dispatch, no Python function tracing on the request path.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.server.errors import ServingError
from serving.server.tensors import dtype_name, to_ndarray

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SERVE_TAG = "serve"
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2 SavedModels' table initializer, not a servable signature

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
log = logging.getLogger(__name__)


def session_config(session_parallelism: int = 0, intra_op: int = 0, inter_op: int = 0) -> tf.compat.v1.ConfigProto:
    """TF Serving's session threading: intra/inter-op threads, each falling back to session_parallelism.

    0 lets TensorFlow pick (one thread per core), as tensorflow_model_server does by default.
    """
    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra_op or session_parallelism,
        inter_op_parallelism_threads=inter_op or session_parallelism,
    )


def run_options(config: tf.compat.v1.ConfigProto | None) -> tf.compat.v1.RunOptions:
    """Run a request's graph in the request's own thread unless an inter-op pool of >= 2 threads is asked for.

    Concurrent requests already run in parallel on the gRPC/REST handler threads, and a serving graph
    of 100 candidates is mostly a chain of small ops: handing each op to a pool thread and waking the
    caller costs more than it overlaps (docs/decisions/0015-server-engine-session-callables.md).
    ``inter_op_thread_pool = -1`` is TF's documented "use the caller thread" setting; ops still use the
    intra-op pool for their own work.
    """
    pool_size = config.inter_op_parallelism_threads if config is not None else 0
    return tf.compat.v1.RunOptions(inter_op_thread_pool=0 if pool_size >= 2 else -1)


@dataclass
class Signature:
    """A serving signature: specs read from the SavedModel, and the concrete function that runs it."""

    name: str
    method_name: str
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    session_run: Callable[..., list[np.ndarray]] = field(repr=False)  # feeds sorted input aliases
    feed_names: dict[str, str] = field(default_factory=dict)  # alias -> graph tensor name
    defaults: dict[str, np.ndarray] = field(default_factory=dict)  # SignatureDef.defaults, decoded
    runner: RunFn | None = field(default=None, repr=False)  # set by batching; defaults to run_direct

    def run_direct(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One Session run on validated numpy inputs; TF errors become ServingErrors with TF's code."""
        try:
            values = self.session_run(*(inputs[alias] for alias in self._input_order))
        except tf.errors.OpError as e:
            raise ServingError(_grpc_code(e.error_code), e.message) from e
        except (TypeError, ValueError) as e:
            raise ServingError.invalid_argument(str(e)) from e
        return dict(zip(self._output_order, values, strict=True))

    def run(self, inputs: dict[str, np.ndarray], output_filter: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Check inputs like TF Serving's Predict, run (batched if enabled and the request fetches every
        output, see :meth:`batchable`), keep filtered outputs."""
        inputs = self.check_inputs(inputs)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise ServingError.invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(self.outputs))}}}."
                )
            if alias in seen:
                raise ServingError.invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        if self.runner is not None and self.batchable(output_filter):
            outputs = self.runner(inputs)
        else:
            if self.runner is not None:
                _log_bypass(self.name, output_filter)
            outputs = self.run_direct(inputs)
        return {k: outputs[k] for k in output_filter} if output_filter else outputs

    def batchable(self, output_filter: tuple[str, ...]) -> bool:
        """Whether TF Serving's batching would take a request fetching ``output_filter`` (empty: all).

        Its BatchingSession keeps one scheduler per SignatureDef, keyed by the signature's input and output
        tensor names, and looks a Run up by the tensors it feeds and fetches (``BatchingSession::InternalRun``
        in ``batching/batching_session.cc``). A Predict feeds every input (request values or defaults) but
        fetches only its ``output_filter`` (``PreProcessPrediction``, ``servables/tensorflow/predict_util.cc``),
        and SavedModel bundles are wrapped without a default scheduler creator (``WrapSessionForBatching``
        in ``servables/tensorflow/saved_model_bundle_factory.cc``, ``enable_default_schedule_creator`` false),
        so a Predict whose filter names fewer outputs than the signature has bypasses the batcher and runs on
        its own (TFRT likewise: ``tfrt_predict_util.cc`` runs a filtered Predict by tensor names, unbatched).
        """
        return not output_filter or set(output_filter) == set(self.outputs)

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """TF Serving's checks (predict_util.cc, saved_model/util.cc GetInputValues), then the dtype.

        Aliases: too many, or too few without signature defaults, is INVALID_ARGUMENT; a missing alias
        takes the signature's default. Shapes are not checked against the SignatureDef: like
        tensorflow_model_server, the tensor is fed and the TF runtime decides. A wrong dtype gets the
        error the runtime's Session::Run gives (``Expects arg[i] to be ...``). Returns the full feed.
        """
        sent, expected = set(inputs), set(self.inputs)
        if len(sent) > len(expected) or (len(sent) < len(expected) and not self.defaults):
            raise ServingError.invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        feed = dict(inputs)
        for alias in self._input_order:
            if alias in sent:
                continue
            if alias not in self.defaults:
                raise ServingError.invalid_argument(
                    f"Signature input alias: {alias}(feed name: {self.feed_names.get(alias, '')}) not found in "
                    f"request and no default value provided. Inputs expected to be in the request "
                    f"{{{','.join(sorted(sent))}}}, or default input alias set: {','.join(sorted(self.defaults))}"
                )
            feed[alias] = self.defaults[alias]
        if sent and not sent <= expected:
            raise ServingError.invalid_argument(
                f"Inputs contains invalid name. Used request inputs: {','.join(sorted(sent & expected))}, "
                f"request input: {','.join(sorted(sent))}"
            )
        for i, alias in enumerate(self._input_order):
            spec, value = self.inputs[alias], feed[alias]
            if not _dtype_matches(spec.dtype, value):
                got = "string" if value.dtype.kind in "OSU" else dtype_name(tf.as_dtype(value.dtype).as_datatype_enum)
                raise ServingError.invalid_argument(
                    f"Expects arg[{i}] to be {dtype_name(spec.dtype.as_datatype_enum)} but {got} is provided"
                )
        return feed

    @functools.cached_property
    def _input_order(self) -> list[str]:
        """Input aliases in the order ``session_run`` feeds them (and TF Serving numbers them: arg[i])."""
        return alias_order(self.inputs)

    @functools.cached_property
    def _output_order(self) -> list[str]:
        """Output aliases in the order ``session_run`` fetches them."""
        return alias_order(self.outputs)


_bypass_logged_at = [float("-inf")]  # like TF Serving's LOG_EVERY_N_SEC(WARNING, 120)


def _log_bypass(signature: str, output_filter: tuple[str, ...]) -> None:
    now = time.monotonic()
    if now - _bypass_logged_at[0] >= 120:
        _bypass_logged_at[0] = now
        log.warning(
            "Request doesn't match any declared signature and no default scheduler creator specified. "
            "Bypassing batcher. Request signature: %s, output_filter %s", signature, list(output_filter),
        )


def alias_order(aliases: Iterable[str]) -> list[str]:
    """The one order of a signature's aliases: its callable's feeds and fetches, and TF Serving's arg[i]."""
    return sorted(aliases)


_NUMPY_DTYPES: dict[tf.DType, np.dtype] = {}


def _dtype_matches(dtype: tf.DType, value: np.ndarray) -> bool:
    if dtype == tf.string:
        return value.dtype == object or value.dtype.kind in "SU"
    expected = _NUMPY_DTYPES.get(dtype)
    if expected is None:
        expected = _NUMPY_DTYPES.setdefault(dtype, np.dtype(dtype.as_numpy_dtype))
    return value.dtype == expected


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == tf_code), grpc.StatusCode.UNKNOWN)


def _tensor_name(sig_key: str, alias: str, info: meta_graph_pb2.TensorInfo) -> str:
    if info.WhichOneof("encoding") != "name":
        raise ServingError.internal(
            f"signature '{sig_key}': tensor '{alias}' is {info.WhichOneof('encoding')}-encoded; "
            "only dense tensors are supported"
        )
    return info.name


def _spec(info: meta_graph_pb2.TensorInfo) -> tf.TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return tf.TensorSpec(shape, tf.as_dtype(info.dtype))


def _signature(
    session: tf.compat.v1.Session, key: str, sig_def: meta_graph_pb2.SignatureDef, options: tf.compat.v1.RunOptions
) -> Signature:
    callable_options = config_pb2.CallableOptions(
        feed=[_tensor_name(key, alias, sig_def.inputs[alias]) for alias in alias_order(sig_def.inputs)],
        fetch=[_tensor_name(key, alias, sig_def.outputs[alias]) for alias in alias_order(sig_def.outputs)],
        run_options=options,
    )
    # C++ Session::MakeCallable / RunCallable: the feeds and fetches are resolved and the graph pruned
    # once, at load; a request is one call with its numpy arrays. Session.run (and make_callable with a
    # feed list, which delegates to it) redoes that in Python on every call: 0.5 ms of a 1.5 ms request.
    return Signature(
        name=key,
        method_name=sig_def.method_name,
        inputs={k: _spec(v) for k, v in sig_def.inputs.items()},
        outputs={k: _spec(v) for k, v in sig_def.outputs.items()},
        session_run=session._make_callable_from_options(callable_options),
        feed_names={alias: info.name for alias, info in sig_def.inputs.items()},
        defaults={alias: to_ndarray(proto, alias) for alias, proto in sig_def.defaults.items()},
    )


def _load_meta_graph(
    path: str, config: tf.compat.v1.ConfigProto | None
) -> tuple[tf.compat.v1.Session, meta_graph_pb2.MetaGraphDef]:
    """Restore the ``serve`` MetaGraph (variables, asset-backed tables) into a new Session."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], path)
    except BaseException:
        session.close()
        raise
    return session, meta_graph


# The v1 loader is the API tensorflow_model_server uses; its "use tf.saved_model.load" notice is noise here.
logging.getLogger("tensorflow").addFilter(lambda record: "tf.saved_model.load" not in record.getMessage())


@dataclass
class Servable:
    """A loaded (name, version) ready to answer requests."""

    name: str
    version: int
    path: str
    signatures: dict[str, Signature]
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    load_seconds: float
    session: tf.compat.v1.Session = field(repr=False, default=None)  # owns the graph, variables and tables

    @classmethod
    def load(cls, name: str, version: int, path: str, config: tf.compat.v1.ConfigProto | None = None) -> Servable:
        """Load ``path`` as a SavedModel; any failure becomes a ServingError naming the path."""
        start = time.perf_counter()
        try:
            session, meta_graph = _load_meta_graph(path, config)
        except Exception as e:  # noqa: BLE001 - any load failure is reported in GetModelStatus
            raise ServingError.internal(f"Failed to load SavedModel at {path}: {type(e).__name__}: {e}") from e
        signature_defs = dict(meta_graph.signature_def)
        served = {key: sig_def for key, sig_def in signature_defs.items() if key != INIT_OP_SIGNATURE}
        options = run_options(config)
        signatures = {key: _signature(session, key, sig_def, options) for key, sig_def in served.items()}
        return cls(name, version, path, signatures, signature_defs, time.perf_counter() - start, session)

    def signature(self, name: str) -> Signature:
        """The signature ``name`` (empty = serving_default); FAILED_PRECONDITION if absent (predict_util.cc)."""
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise ServingError.failed_precondition(f'Serving signature key "{key}" not found.')
        return sig

    def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The SignatureDefMap GetModelMetadata returns under ``signature_def``."""
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig_def in self.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig_def)
        return sig_map
