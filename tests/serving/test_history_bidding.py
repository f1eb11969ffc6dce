"""Bidding with user behaviour histories through the embedded server (real gRPC on 127.0.0.1) on a DIN
model trained on data with histories: the user's history sent once for all candidates, new users, long
and malformed histories, a server with --enable_batching (TF Serving's batching needs equal 0th
dimensions), the model-input check at start-up and the export's warmup requests."""

from __future__ import annotations

import threading
from concurrent import futures

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.bidding import BiddingParams, compute_bids
from serving.client import BidClient, BidRequestError, ModelInputsError
from serving.experiment import Arm, Experiment
from serving.server import ModelServer, parse_flags
from serving.server.testing import Stubs, predict_request
from tfads.core.manifest import history_length_input

MODEL = "ctr"
EXPERIMENT = Experiment("history", "salt", [Arm("only", 1.0, model_name=MODEL)])
ARM = EXPERIMENT.arms[0]
CANDIDATES = 6
OUTPUTS = ("ctr", "cvr")  # what the arm bids on (BiddingParams() = calibrated outputs)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_base(din_model_dir, history_manifest, tmp_path_factory) -> str:
    """The DIN model exported as version 1 of ``ctr`` (with its warmup requests)."""
    from serving.export import export_model
    from tfads.model_io import load_trained_model

    base = str(tmp_path_factory.mktemp("history_models") / MODEL)
    export_model(load_trained_model(din_model_dir, float32_matmuls=True), history_manifest, base, version=1,
                 model_name=MODEL, warmup_examples=4)
    return base


@pytest.fixture(scope="module")
def keras_model(din_model_dir):
    from tfads.model_io import load_trained_model

    return load_trained_model(din_model_dir, float32_matmuls=True)


class Running:
    """The embedded server in this process, on a free 127.0.0.1 port; stopped by ``stop``."""

    def __init__(self, base: str, *flags: str) -> None:
        self.server = ModelServer(parse_flags(["--port=0", f"--model_name={MODEL}", f"--model_base_path={base}",
                                               *flags])).start()
        self.target = f"127.0.0.1:{self.server.grpc_port}"
        self.stubs = Stubs.connect(self.target)
        self.stubs.wait_serving()

    def stop(self) -> None:
        self.stubs.channel.close()
        self.server.stop()


@pytest.fixture(scope="module")
def plain_server(model_base):
    running = Running(model_base)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def batching_server(model_base, tmp_path_factory):
    """--enable_batching: requests wait up to 20 ms for others to share a Session run."""
    params = tmp_path_factory.mktemp("batching") / "batching.config"
    params.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 20000 }\n"
                      "max_enqueued_batches { value: 16 }\nnum_batch_threads { value: 1 }\n")
    running = Running(model_base, "--enable_batching", f"--batching_parameters_file={params}")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rows(history_manifest) -> dict[str, np.ndarray]:
    """Test rows in the model's input form (padded histories and lengths), the longest histories first."""
    from tfads.data import feature_spec, parse_examples

    records = tf.data.TFRecordDataset(history_manifest.split_files("test"), compression_type="GZIP").batch(2048)
    batch = parse_examples(next(iter(records)), history_manifest, feature_spec(history_manifest, with_labels=False))
    order = tf.argsort(batch["hist_ad_length"] * 16 + batch["hist_category_length"], direction="DESCENDING")[:32]
    out = {name: tf.gather(batch[name], order).numpy() for name in history_manifest.model_inputs}
    assert out["hist_ad_length"][0] == 8 and out["hist_category_length"][0] >= 2  # a user with real histories
    return out


def _python(value):
    value = value.item() if isinstance(value, np.generic) else value
    return value.decode() if isinstance(value, bytes) else value


def user_history(rows, manifest, user: int = 0) -> dict[str, list]:
    """Row ``user``'s histories as a bid request carries them: lists of its real values, most recent first."""
    return {name: [_python(v) for v in rows[name][user][: rows[history_length_input(name)][user]]]
            for name in manifest.history_inputs}


def bid_request(rows, manifest, *, candidates=range(CANDIDATES), history=None, rid: str = "h1") -> dict:
    """A bid request whose candidates are logged test rows (their raw fields) and whose user is row 0."""
    scalars = list(manifest.input_dtypes)
    request = {
        "request_id": rid, "user_id": _python(rows["user_id"][0]), "features": {},
        "candidates": [{name: _python(rows[name][i]) for name in scalars} for i in candidates],
    }
    if history is not None:
        request["history"] = history
    return request


def per_candidate_inputs(rows, manifest, *, candidates=range(CANDIDATES), user: int | None = 0):
    """The model inputs of those candidates with row ``user``'s histories copied to every candidate
    (``user=None``: empty histories, length 0)."""
    index = list(candidates)
    inputs = {name: rows[name][index] for name in manifest.input_dtypes}
    for name, (dtype, _) in manifest.history_inputs.items():
        length = history_length_input(name)
        if user is None:
            inputs[name] = np.full(rows[name][index].shape, b"" if dtype == "string" else 0, rows[name].dtype)
            inputs[length] = np.zeros_like(rows[length][index])
        else:
            inputs[name] = np.repeat(rows[name][user : user + 1], len(index), axis=0)
            inputs[length] = np.repeat(rows[length][user : user + 1], len(index), axis=0)
    return inputs


def direct_predict(stubs: Stubs, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Predict of ``inputs`` as they are (no output filter): every output."""
    response = stubs.predict.Predict(predict_request(MODEL, inputs), timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def client(target: str, manifest, **kwargs) -> BidClient:
    return BidClient.from_manifest(target, manifest.data, EXPERIMENT, deadline_ms=10_000, **kwargs)


def shape(tensor) -> list[int]:
    return [d.size for d in tensor.tensor_shape.dim]


# ------------------------------------------------------------------------- the history, once per request


def test_history_sent_once_bids_like_per_candidate_copies_and_keras(plain_server, history_manifest, rows,
                                                                    keras_model):
    history = user_history(rows, history_manifest)
    request = bid_request(rows, history_manifest, history=history)
    with client(plain_server.target, history_manifest) as bidder:
        assert bidder.histories == {"hist_category": ("string", 5), "hist_ad": ("int64", 8)}
        assert bidder.wait_until_available(timeout_s=60) == {MODEL: [1]}  # check_inputs passes
        predict, _ = bidder.build_request(ARM, request)
        got = bidder.bid(request)
    # one row per history for all candidates, padded with the dtype's default
    assert shape(predict.inputs["hist_ad"]) == [1, 8] and shape(predict.inputs["price"]) == [CANDIDATES]
    assert list(predict.inputs["hist_ad"].int64_val) == history["hist_ad"]
    n = len(history["hist_category"])
    assert shape(predict.inputs["hist_category"]) == [1, 5]
    assert list(predict.inputs["hist_category"].string_val) == [v.encode() for v in history["hist_category"]] + [
        b""] * (5 - n)
    assert list(predict.inputs["hist_category_length"].int64_val) == [n]
    assert shape(predict.inputs["hist_category_length"]) == [1]
    assert list(predict.output_filter) == list(OUTPUTS)

    assert (got.source, got.model_version) == ("model", 1)
    copies = per_candidate_inputs(rows, history_manifest)
    direct = direct_predict(plain_server.stubs, copies)
    np.testing.assert_allclose(got.p_ctr, direct["ctr"], atol=1e-7)
    np.testing.assert_allclose(got.p_cvr, direct["cvr"], atol=1e-7)
    bid_types = [c["bid_type"] for c in request["candidates"]]
    prices = [c["price"] for c in request["candidates"]]
    np.testing.assert_allclose(got.bids, compute_bids(direct["ctr"], direct["cvr"], bid_types, prices,
                                                      BiddingParams()), rtol=1e-6)
    expected = keras_model({k: tf.constant(v) for k, v in copies.items()}, training=False)
    np.testing.assert_allclose(got.p_ctr, expected["ctr"].numpy()[:, 0], atol=1e-5)
    np.testing.assert_allclose(got.p_cvr, expected["cvr"].numpy()[:, 0], atol=1e-5)


@pytest.mark.parametrize("history", [None, {}, {"hist_category": [], "hist_ad": []}, {"hist_ad": None}],
                         ids=["no_history", "empty_mapping", "empty_lists", "none_value"])
def test_a_new_user_without_history_has_length_zero_and_still_bids(plain_server, history_manifest, rows,
                                                                   history):
    request = bid_request(rows, history_manifest, history=history)
    with client(plain_server.target, history_manifest) as bidder:
        predict, _ = bidder.build_request(ARM, request)
        got = bidder.bid(request)
        known = bidder.bid(bid_request(rows, history_manifest, history=user_history(rows, history_manifest)))
    for name, padding in (("hist_category", [b""] * 5), ("hist_ad", [0] * 8)):
        assert list(predict.inputs[history_length_input(name)].int64_val) == [0]
        field = "string_val" if name == "hist_category" else "int64_val"
        assert list(getattr(predict.inputs[name], field)) == padding
    assert got.source == "model" and np.all(np.isfinite(got.bids)) and np.all(got.bids >= 0)
    direct = direct_predict(plain_server.stubs, per_candidate_inputs(rows, history_manifest, user=None))
    np.testing.assert_allclose(got.p_ctr, direct["ctr"], atol=1e-7)
    assert np.abs(got.p_ctr - known.p_ctr).max() > 1e-6  # the model reads the history: no history, other pCTRs


def test_a_long_history_keeps_its_most_recent_max_len_values(plain_server, history_manifest, rows):
    history = user_history(rows, history_manifest)
    older = [_python(v) for v in rows["hist_ad"][1][:4]]  # values beyond max_len 8
    long = {**history, "hist_ad": history["hist_ad"] + older}
    with client(plain_server.target, history_manifest) as bidder:
        predict, _ = bidder.build_request(ARM, bid_request(rows, history_manifest, history=long))
        truncated = bidder.bid(bid_request(rows, history_manifest, history=long))
        exact = bidder.bid(bid_request(rows, history_manifest, history=history))
    assert list(predict.inputs["hist_ad"].int64_val) == history["hist_ad"]  # the first (most recent) 8
    assert list(predict.inputs["hist_ad_length"].int64_val) == [8]
    np.testing.assert_array_equal(truncated.p_ctr, exact.p_ctr)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ({"hist_ad": [812, "77"]}, "history 'hist_ad': value 1 must be an integer in int64 range, got '77'"),
        ({"hist_ad": [True]}, "history 'hist_ad': value 0 must be an integer in int64 range, got True"),
        ({"hist_category": ["news", 5]}, "history 'hist_category': value 1 must be a string, got 5"),
        ({"hist_category": "news"}, "history 'hist_category' must be a list of values (string, most recent "
                                    "first), got 'news'"),
        (["news"], "'history' must be a mapping of history name -> list of values (most recent first), "
                   "got ['news']"),
    ],
)
def test_a_malformed_history_is_a_bid_request_error_naming_it(plain_server, history_manifest, rows, history,
                                                              message):
    with client(plain_server.target, history_manifest) as bidder:
        with pytest.raises(BidRequestError) as info:
            bidder.bid(bid_request(rows, history_manifest, history=history, rid="bad-1"))
        assert str(info.value) == f"bid request 'bad-1': {message}"
        assert bidder.metrics.value("tfads_bid_invalid_requests_total") == 1


def test_start_up_check_names_a_history_the_client_does_not_send(plain_server, history_manifest):
    without = BidClient(plain_server.target, history_manifest.input_dtypes, EXPERIMENT)
    with without, pytest.raises(ModelInputsError) as info:
        without.check_inputs()
    assert ("takes the history input(s) ['hist_ad', 'hist_category'] (padded (batch, max_len) values) with "
            "their lengths ['hist_ad_length', 'hist_category_length'], which this client does not send"
            ) in str(info.value)
    shorter = {**history_manifest.history_inputs, "hist_ad": ("int64", 6)}
    other_len = BidClient(plain_server.target, history_manifest.input_dtypes, EXPERIMENT, histories=shorter)
    with other_len, pytest.raises(ModelInputsError,
                                  match=r"input 'hist_ad': the signature takes shape \[-1, 8\], requests send "
                                        r"\[batch, 6\] \(a history's max_len differs"):
        other_len.check_inputs()


# ------------------------------------------------------------------------- --enable_batching


def test_batching_server_needs_equal_0th_dimensions_like_tf_serving(plain_server, batching_server,
                                                                     history_manifest, rows):
    request = bid_request(rows, history_manifest, history=user_history(rows, history_manifest))
    with client(plain_server.target, history_manifest) as bidder:
        reference = bidder.bid(request)

    # A Predict that fetches every output goes through the batcher, which refuses a (1, L) history
    # with (B,) candidates: TF Serving's ComputeTensorBatchSize error, before any batch is formed.
    with client(batching_server.target, history_manifest, filter_outputs=False) as bidder:
        predict, _ = bidder.build_request(ARM, request)
        assert not predict.output_filter
        with pytest.raises(grpc.RpcError) as info:
            batching_server.stubs.predict.Predict(predict, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("Batching Run() input tensors must have equal 0th-dimension size")
        assert "has 1" in info.value.details() and f"has {CANDIDATES}" in info.value.details()
        refused = bidder.bid(request)
        assert (refused.source, refused.fallback_reason) == ("none", "invalid_argument")

    # broadcast_history=False: the history copied per candidate, batched like any request
    with client(batching_server.target, history_manifest, filter_outputs=False, broadcast_history=False) as bidder:
        predict, _ = bidder.build_request(ARM, request)
        assert shape(predict.inputs["hist_ad"]) == [CANDIDATES, 8]
        assert list(predict.inputs["hist_ad_length"].int64_val) == [8] * CANDIDATES
        copied = bidder.bid(request)
    assert copied.source == "model"
    np.testing.assert_allclose(copied.p_ctr, reference.p_ctr, atol=1e-6)
    np.testing.assert_allclose(copied.bids, reference.bids, rtol=1e-5)

    # The default client filters its outputs: TF Serving's batcher matches no signature and runs it
    # unbatched, so the history sent once works with --enable_batching too.
    with client(batching_server.target, history_manifest) as bidder:
        filtered = bidder.bid(request)
    assert filtered.source == "model"
    np.testing.assert_allclose(filtered.p_ctr, reference.p_ctr, atol=1e-7)


def test_concurrent_per_candidate_copies_batch_and_split_back(plain_server, batching_server, history_manifest,
                                                             rows):
    """Requests of different users and candidate counts, sent together, share Session runs (merged along
    dimension 0, histories included) and each gets its own candidates' predictions."""
    requests = [bid_request(rows, history_manifest, candidates=range(i, i + 2 + i % 3), rid=f"c{i}",
                            history=user_history(rows, history_manifest, user=i)) for i in range(6)]
    with client(plain_server.target, history_manifest) as bidder:
        expected = [bidder.bid(r).p_ctr for r in requests]
    start = threading.Barrier(len(requests))
    with client(batching_server.target, history_manifest, filter_outputs=False, broadcast_history=False) as copier:

        def send(request):
            start.wait(timeout=30)
            return copier.bid(request)

        with futures.ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(send, requests))
    for response, want in zip(got, expected, strict=True):
        assert response.source == "model"
        np.testing.assert_allclose(response.p_ctr, want, atol=1e-6)


# ------------------------------------------------------------------------- warmup


def test_warmup_requests_carry_the_histories_row_aligned(model_base, batching_server, history_manifest):
    path = f"{model_base}/1/assets.extra/tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    for log, rows_ in zip(logs, (1, 4), strict=True):
        inputs = log.predict_log.request.inputs
        assert set(inputs) == set(history_manifest.model_inputs)
        for name, (_, per_row) in history_manifest.model_inputs.items():
            assert shape(inputs[name]) == [rows_, *per_row], name  # every input: the same 0th dimension
        assert shape(inputs["hist_ad"]) == [rows_, 8] and shape(inputs["hist_category"]) == [rows_, 5]
        assert tf.make_ndarray(inputs["hist_ad_length"]).dtype == np.int64
    # the batching server replayed them through its batcher at load: they pass its 0th-dimension check
    assert batching_server.stubs.version_states(MODEL) == {1: "AVAILABLE"}


# ------------------------------------------------------------------------- the batcher's 0th-dimension check


def test_batch_size_is_tf_servings_compute_tensor_batch_size():
    from serving.server import ServingError
    from serving.server.batching import batch_size

    assert batch_size({"x": np.zeros((3, 8)), "y": np.zeros(3)}) == 3
    for inputs, message in [
        ({}, "Batching Run() must have at least one input tensor"),
        ({"x": np.zeros(3), "s": np.float32(1.0) * np.ones(())},
         "Batching Run() input tensors must have at least one dimension: 's' is a scalar"),
        ({"price": np.zeros(3), "hist": np.zeros((1, 8))},
         "Batching Run() input tensors must have equal 0th-dimension size: 'hist' has 1, 'price' has 3"),
    ]:
        with pytest.raises(ServingError) as info:
            batch_size(inputs)
        assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)
