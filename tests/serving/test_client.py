"""The bidding client: bid arithmetic, validation, fallback (server down, deadline), and bids through the
embedded server on a real exported model, including a label move on the server."""

from __future__ import annotations

import json
import math
import threading
from concurrent import futures

import numpy as np
import pytest

import tfads  # noqa: F401  (before TensorFlow)
import grpc
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc as psg
from tensorflow_serving.config import model_server_config_pb2
from google.protobuf import text_format

from serving.local_server import free_port
from serving.traffic import opportunities
from serving.bidding import BiddingParams, compute_bids, ecpm
from serving.client import BidClient, BidRequestError, ModelInputsError
from serving.experiment import Arm, Experiment
from serving.fallback import PosteriorFallback

FEATURES = {"user_id": "int64", "media": "string", "slot": "string", "bid_type": "string", "price": "float32"}
DERIVED = {"scenario": (["media", "slot"], "|")}  # the model computes it; the client only for its fallback
EXPERIMENT = Experiment("t", "salt", [
    Arm("control", 0.5, version_label="stable", bidding=BiddingParams(outputs="raw")),
    Arm("treatment", 0.5, version_label="canary"),
])
OUTPUT_VALUES = {"ctr": 0.1, "cvr": 0.2, "ctr_raw": 0.05, "cvr_raw": 0.1}


def request(**overrides) -> dict:
    base = {"request_id": "r1", "user_id": 7, "features": {"user_id": 7, "media": "app", "slot": "feed"},
            "candidates": [{"bid_type": "CPC", "price": 2.0}, {"bid_type": "OCPC", "price": 10.0}]}
    base.update(overrides)
    return base


# ------------------------------------------------------------------------- bid arithmetic


def test_ecpm_formulas_per_bid_type():
    got = ecpm([0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2], ["CPC", "OCPC", "OCPA", "CPM"], [2.0, 10.0, 10.0, 3.0])
    np.testing.assert_allclose(got, [1000 * 0.1 * 2.0, 1000 * 0.1 * 0.2 * 10.0, 1000 * 0.1 * 0.2 * 10.0, 3.0])


def test_shading_caps_and_floor():
    params = BiddingParams(shading=0.5, max_bid_cpm=50.0, min_bid_cpm=1.0)
    got = compute_bids([0.1, 0.5, 0.0001], [0.2, 0.2, 0.2], ["CPC", "CPC", "CPC"], [0.4, 1.0, 1.0], params)
    np.testing.assert_allclose(got, [20.0, 50.0, 0.0])  # 40*0.5, capped 250, 0.05 below the floor


def test_bids_are_never_nan_infinite_or_negative():
    nan, inf = math.nan, math.inf
    p_ctr = [nan, inf, -0.1, 0.1, 0.1, 0.1, 1e308, 0.1]
    p_cvr = [0.1, 0.1, 0.1, nan, -1.0, 0.1, 1e308, 0.1]
    types = ["CPC", "CPC", "CPC", "OCPC", "OCPC", "CPC", "OCPC", "CPC"]
    price = [1.0, 1.0, 1.0, 1.0, 1.0, inf, 1e308, -3.0]
    got = compute_bids(p_ctr, p_cvr, types, price, BiddingParams(max_bid_cpm=100.0))
    assert np.all(np.isfinite(got)) and np.all(got >= 0) and np.all(got <= 100.0)
    np.testing.assert_array_equal(got[[0, 1, 2, 3, 4, 5, 7]], 0.0)
    assert got[6] == 100.0  # probabilities clipped to 1, huge value capped
    assert compute_bids([nan], [nan], ["CPM"], [2.0], BiddingParams())[0] == 2.0  # CPM ignores predictions
    with pytest.raises(ValueError, match="unknown bid_type 'CPX'"):
        ecpm([0.1], [0.1], ["CPX"], [1.0])


# ------------------------------------------------------------------------- a controllable fake server


class Predictor(psg.PredictionServiceServicer):
    """The official PredictionService servicer base, answering constants; blocks while ``hold`` is set."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.release = threading.Event()
        self.seen: list[predict_pb2.PredictRequest] = []
        self.signature_inputs = list(FEATURES)

    def Predict(self, request, context):  # noqa: N802
        self.seen.append(request)
        if self.hold.is_set():
            self.release.wait()
        n = request.inputs["price"].tensor_shape.dim[0].size
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        for name in request.output_filter:
            response.outputs[name].dtype = 1  # DT_FLOAT
            response.outputs[name].tensor_shape.dim.add().size = n
            response.outputs[name].float_val.extend([OUTPUT_VALUES[name]] * n)
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        for name in self.signature_inputs:
            signature.inputs[name].name = f"serving_default_{name}:0"
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def["serving_default"].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 7
        response.metadata["signature_def"].Pack(signatures)
        return response


@pytest.fixture
def fake_server():
    predictor = Predictor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    psg.add_PredictionServiceServicer_to_server(predictor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield predictor, f"127.0.0.1:{port}"
    predictor.release.set()
    server.stop(grace=None)


def client_for(target: str, **kwargs) -> BidClient:
    return BidClient(target, FEATURES, EXPERIMENT, derived=DERIVED, **kwargs)


def test_batched_request_records_arm_and_version(fake_server):
    predictor, target = fake_server
    with client_for(target, deadline_ms=2000) as client:
        control = client.bid(request(), arm="control")
        treatment = client.bid(request(), arm="treatment")
    sent = predictor.seen[0]
    assert sent.model_spec.version_label == "stable" and list(sent.output_filter) == ["ctr_raw", "cvr_raw"]
    assert set(sent.inputs) == set(FEATURES)  # raw fields only: the model derives scenario itself
    assert sent.inputs["media"].string_val == [b"app", b"app"]  # shared, one batch of 2
    assert predictor.seen[1].model_spec.version_label == "canary"
    assert (control.arm, control.model_version, control.source) == ("control", 7, "model")
    np.testing.assert_allclose(control.bids, [1000 * 0.05 * 2.0, 1000 * 0.05 * 0.1 * 10.0])
    np.testing.assert_allclose(treatment.bids, [1000 * 0.1 * 2.0, 1000 * 0.1 * 0.2 * 10.0])
    assert control.winner == 0 and json.loads(json.dumps(control.to_dict()))["model_version"] == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": {"media": "app", "slot": "feed"}}, "candidate 0: missing feature 'user_id' (int64)"),
        ({"features": {"user_id": "7", "media": "app", "slot": "feed"}}, "feature 'user_id' must be an integer"),
        ({"candidates": [{"bid_type": "CPC", "price": "2"}]}, "candidate 0: feature 'price' must be a finite"),
        ({"candidates": [{"bid_type": "CPC", "price": math.nan}]}, "feature 'price' must be a finite number"),
        ({"candidates": [{"bid_type": "CPX", "price": 1.0}]}, "'bid_type' must be one of"),
        ({"candidates": []}, "'candidates' must be a non-empty list"),
    ],
)
def test_invalid_requests_get_clear_errors(fake_server, change, message):
    predictor, target = fake_server
    with client_for(target) as client:
        with pytest.raises(BidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
            client.bid(request(**change), arm="control")
        assert "request 'r1'" in str(info.value)
        assert client.metrics.value("tfads_bid_invalid_requests_total") == 1
    assert predictor.seen == []  # nothing reached the server


def test_request_without_user_or_not_a_mapping(fake_server):
    _, target = fake_server
    anonymous = request(features={"media": "app", "slot": "feed"})
    del anonymous["user_id"]
    with client_for(target) as client:
        with pytest.raises(BidRequestError, match="no user_id"):
            client.bid(anonymous)
        with pytest.raises(BidRequestError, match="must be a mapping, got list"):
            client.bid([1, 2])
        assert client.metrics.value("tfads_bid_invalid_requests_total") == 2


def test_fallback_when_server_is_down(tmp_path):
    stats = tmp_path / "stats.jsonl"
    rows = [
        {"field": "scenario", "value": "app|feed", "impressions": 500, "clicks": 20, "conversions": 2,
         "ctr": 0.04, "cvr": 0.1, "ctr_smoothed": 0.041, "cvr_smoothed": 0.11},
        {"field": "campaign_id", "value": 5, "impressions": 5, "clicks": 1, "conversions": 1,
         "ctr": 0.2, "cvr": 1.0, "ctr_smoothed": 0.05, "cvr_smoothed": 0.2},
    ]
    stats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fallback = PosteriorFallback.load(stats, ["campaign_id", "scenario"], min_impressions=100)
    with client_for(f"127.0.0.1:{free_port()}", fallback=fallback) as client:
        got = client.bid(request(candidates=[{"bid_type": "CPC", "price": 2.0, "campaign_id": 5}]), arm="treatment")
        # Refused connections are retried inside the deadline, so either code may end the call.
        assert (got.source, got.model_version) == ("fallback", None)
        assert got.fallback_reason in ("unavailable", "deadline_exceeded")
        np.testing.assert_allclose([got.p_ctr[0], got.p_cvr[0]], [0.041, 0.11])  # campaign too small: scenario
        np.testing.assert_allclose(got.bids, [1000 * 0.041 * 2.0])
        assert client.metrics.value("tfads_bid_fallbacks_total", arm="treatment", reason=got.fallback_reason) == 1
        unknown = client.bid(request(features={"user_id": 1, "media": "web", "slot": "x"}), arm="treatment")
        np.testing.assert_array_equal(unknown.bids, 0.0)  # no statistics: no bid
        assert unknown.winner is None


def test_a_model_asking_for_a_derived_input_is_refused_at_startup(fake_server):
    predictor, target = fake_server
    with client_for(target) as client:
        client.check_inputs()  # the signature takes exactly the raw fields the client sends
        predictor.signature_inputs = [*FEATURES, "scenario"]  # exported before decision 0027
        with pytest.raises(ModelInputsError, match=r"version 7 signature 'serving_default' takes \['scenario'\].*"
                                                   r"re-export"):
            client.check_inputs()


def test_fallback_when_deadline_passes(fake_server):
    predictor, target = fake_server
    with client_for(target, deadline_ms=10) as client:
        predictor.hold.set()
        got = client.bid(request(), arm="control")
        assert (got.source, got.fallback_reason) == ("none", "deadline_exceeded")
        np.testing.assert_array_equal(got.bids, 0.0)
        assert client.metrics.value("tfads_bid_fallbacks_total", arm="control", reason="deadline_exceeded") == 1
        assert client.metrics.value("tfads_bid_requests_total", arm="control", source="none") == 1
        predictor.release.set()
        predictor.hold.clear()
        client.deadline_s = 5.0
        assert client.bid(request(), arm="control").source == "model"  # the same channel recovers


# ------------------------------------------------------------------------- the embedded server


def test_bids_through_embedded_server_and_label_move(ab_server, ab_models, manifest_path):
    manifest = json.loads(open(manifest_path).read())
    requests = opportunities(manifest_path, 4, limit=6)
    assert all("scenario" not in c and "media" in c for r in requests for c in r["candidates"])  # raw fields only
    with BidClient.from_manifest(ab_server, manifest, EXPERIMENT, deadline_ms=2000) as client:
        assert "scenario" not in client.features and client.derived == {"scenario": (["media", "slot"], "|")}
        assert client.wait_until_available(timeout_s=30) == {"ctr": [1, 2]}
        for r in requests:
            control, treatment = client.bid(r, arm="control"), client.bid(r, arm="treatment")
            assert (control.source, control.model_version) == ("model", 1)
            assert (treatment.source, treatment.model_version) == ("model", 2)
            assert len(control.bids) == 4 and np.all(np.isfinite(control.bids)) and np.all(control.bids >= 0)
            assert np.all((control.p_ctr > 0) & (control.p_ctr < 1))
        routed = {client.bid(r).arm for r in opportunities(manifest_path, 2, limit=40)}
        assert routed == {"control", "treatment"}

        # Moving the "stable" label to version 2 on the server moves the control arm with it.
        models = model_service_pb2_grpc.ModelServiceStub(client.channel)
        moved = ab_models.read_text().replace('key: "stable" value: 1', 'key: "stable" value: 2')
        try:
            reload(models, moved)
            assert {client.bid(r, arm="control").model_version for r in requests} == {2}
        finally:
            reload(models, ab_models.read_text())
        assert client.bid(requests[0], arm="control").model_version == 1


def reload(models: model_service_pb2_grpc.ModelServiceStub, config_text: str) -> None:
    config = text_format.Parse(config_text, model_server_config_pb2.ModelServerConfig())
    status = models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
    assert status.status.error_code == 0, status.status.error_message
