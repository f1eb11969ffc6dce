"""Logs in the user's shape, not the generator's: renamed key, time, user and domain fields, click-only labels,
as event logs and as one CSV table; and a Parquet table with both labels.

build -> train -> evaluate (per-field metrics) -> calibrate -> export -> serve, with no conversions log and
no dummy sections.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.own_logs import (
    CLICK_LABEL, DOMAIN, RENAMED, click_only_schema, labelled_impressions, rewrite_click_only, table_schema,
)
from tfads import cli


@pytest.fixture(scope="module", params=["events", "csv"])
def shape(request) -> str:
    """The click-only data as renamed event logs (impressions + clicks) or as one CSV table."""
    return request.param


@pytest.fixture(scope="module")
def click_only(shape, logs_dir, tmp_path_factory) -> tuple[str, str]:
    """(schema path, manifest path) of the click-only, renamed logs built by the Beam job."""
    from tfads.jobs.dataset import build_dataset

    work = tmp_path_factory.mktemp(f"own_logs_{shape}")
    if shape == "events":
        rewrite_click_only(logs_dir, str(work / "logs"))
        schema = click_only_schema(str(work / "schema.yaml"))
        return schema, build_dataset(str(work / "logs"), str(work / "data"), schema=schema)
    labelled_impressions(logs_dir, with_conversion=False).to_csv(work / "table.csv", index=False)
    schema = table_schema(str(work / "schema.yaml"), with_conversion=False)
    return schema, build_dataset(str(work / "table.csv"), str(work / "data"), schema=schema)


@pytest.fixture(scope="module")
def click_only_model(click_only, small_experiment, tmp_path_factory) -> str:
    from tfads.train import train

    schema, manifest = click_only
    config = dataclasses.replace(small_experiment, schema=schema,
                                 train=dataclasses.replace(small_experiment.train, epochs=1))
    model_dir = str(tmp_path_factory.mktemp("own_model"))
    train(config, manifest, model_dir, verbose=0)
    return model_dir


def test_manifest_carries_the_users_names_and_a_click_label_only(click_only):
    manifest = json.load(open(click_only[1]))
    assert manifest["labels"] == [CLICK_LABEL]
    assert manifest["label_roles"] == {"click": CLICK_LABEL, "conversion": None}
    assert manifest["user_key"] == RENAMED["user_id"] and manifest["domain"] == DOMAIN
    table = manifest["schema"].get("input") == "table"
    assert set(manifest["inputs"]) == ({"table"} if table else {"impressions", "clicks"})
    assert all(c["read"] == c["valid"] + c["dead_letter"] for c in manifest["inputs"].values())
    assert manifest["splits"]["train"]["clicks"] > 0 and manifest["splits"]["train"]["conversions"] == 0


def test_click_only_data_trains_a_ctr_model(click_only_model):
    from tfads.model_io import load_trained_model

    model = load_trained_model(click_only_model)
    assert model.output_names == ["ctr"]


def test_evaluate_by_field_matches_an_independent_computation(click_only, click_only_model, tmp_path, capsys):
    from tfads.core.manifest import load_manifest
    from tfads.model_io import load_trained_model
    from tfads.predict import predict_split

    out = tmp_path / "eval"
    by = [DOMAIN, "device"]
    assert cli.main(["evaluate", "--model-dir", click_only_model, "--data", click_only[1], "--out", str(out),
                     "--by", *by]) == 0
    assert set(json.load(open(out / "metrics.json"))) == {"ctr"}
    assert f"by {DOMAIN}" in capsys.readouterr().out
    scored = predict_split(load_trained_model(click_only_model), load_manifest(click_only[1]), "test")
    for field in by:
        table = pd.read_csv(out / f"by_{field}.csv", keep_default_na=False, na_values=[""])
        rows, mean = table.iloc[:-1].set_index("value"), table.iloc[-1]
        expected = []
        for value, group in scored.groupby(scored[field].astype(str)):
            y, p = group["click"].to_numpy(np.float64), group["ctr"].to_numpy(np.float64)
            if y.sum() == 0:
                continue
            auc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else np.nan
            expected.append((value, len(y), auc, p.sum() / y.sum(), abs(y.sum() - p.sum()) / y.sum()))
            got = rows.loc[str(value) if str(value) in rows.index else value]
            assert got["impressions"] == len(y)
            assert got["pcoc"] == pytest.approx(p.sum() / y.sum(), rel=1e-5)
            assert got["rce"] == pytest.approx(abs(y.sum() - p.sum()) / y.sum(), rel=1e-6, abs=1e-9)
            if not np.isnan(auc):
                assert got["auc"] == pytest.approx(auc, abs=1e-9)
        frame = pd.DataFrame(expected, columns=["value", "n", "auc", "pcoc", "rce"])
        assert mean["rce"] == pytest.approx(np.average(frame["rce"], weights=frame["n"]), rel=1e-6)
        assert mean["value"] == "(weighted mean)"


def _export_and_serve(model, manifest, models_dir, outputs: set[str]) -> None:
    """Export ``model``, serve it on 127.0.0.1 and check a Predict request with the raw fields of 8 test rows:
    the response has ``outputs``, and each of the model's own heads equals its score."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.export import check_export, export_model
    from serving.local_server import embedded_server
    from tfads.predict import predict_split

    path = export_model(model, manifest, str(models_dir / "m"), version=1)
    assert check_export(model, manifest, path) < 1e-5
    rows = predict_split(model, manifest, "test").head(8)  # the float32 rebuild that export serves
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for name, dtype_name in manifest.input_dtypes.items():  # raw fields only: the model derives DOMAIN
        dtype = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype_name]
        values = rows[name].to_numpy()
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values.astype(str) if dtype == tf.string else values,
                                                           dtype=dtype))
    flags = ["--model_name=m", f"--model_base_path={models_dir / 'm'}"]
    with embedded_server(flags, ["m"]) as target:
        with grpc.insecure_channel(target) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert set(response.outputs) == outputs
    for head in model.output_names:
        np.testing.assert_allclose(tf.make_ndarray(response.outputs[head]), rows[head].to_numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_calibrated_click_only_export_serves_pctr_for_the_users_fields(click_only, click_only_model, tmp_path):
    from tfads.core.manifest import load_manifest
    from tfads.jobs.calibrate import calibrate_and_report
    from tfads.model_io import load_trained_model

    report = calibrate_and_report(click_only_model, click_only[1], str(tmp_path / "cal"), epochs=1)
    assert set(report.model.output_names) == {"ctr", "ctr_raw"}
    assert f"Field-RCE[{DOMAIN}]" in report.rows["AdaCalib"]  # calibrated per the user's domain field
    model = load_trained_model(str(tmp_path / "cal"), float32_matmuls=True)
    _export_and_serve(model, load_manifest(click_only[1]), tmp_path / "models", {"ctr", "ctr_raw"})


def test_a_parquet_table_with_both_labels_trains_esmm_and_serves(logs_dir, small_experiment, tmp_path):
    """build -> train -> evaluate -> calibrate -> export -> serve, ESMM heads from a Parquet table without a key."""
    from tfads.core.manifest import load_manifest
    from tfads.jobs.calibrate import calibrate_and_report
    from tfads.jobs.dataset import build_dataset
    from tfads.model_io import load_trained_model
    from tfads.train import train

    table = labelled_impressions(logs_dir, with_conversion=True)
    table.to_parquet(tmp_path / "table.parquet", row_group_size=5000)
    schema = table_schema(str(tmp_path / "schema.yaml"), with_conversion=True, key=False)
    manifest_path = build_dataset(str(tmp_path / "table.parquet"), str(tmp_path / "data"), schema=schema)
    manifest = load_manifest(manifest_path)
    assert manifest.data["label_roles"] == {"click": CLICK_LABEL, "conversion": "conversion"}
    config = dataclasses.replace(small_experiment, schema=schema,
                                 train=dataclasses.replace(small_experiment.train, epochs=1))
    train(config, manifest_path, str(tmp_path / "model"), verbose=0)
    assert sorted(load_trained_model(str(tmp_path / "model")).output_names) == ["ctcvr", "ctr", "cvr"]
    assert cli.main(["evaluate", "--model-dir", str(tmp_path / "model"), "--data", manifest_path,
                     "--out", str(tmp_path / "eval"), "--by", DOMAIN]) == 0
    assert {"ctr", "cvr", "ctcvr"} <= set(json.load(open(tmp_path / "eval" / "metrics.json")))
    report = calibrate_and_report(str(tmp_path / "model"), manifest_path, str(tmp_path / "cal"), epochs=1)
    assert f"Field-RCE[{DOMAIN}]" in report.rows["AdaCalib"]
    model = load_trained_model(str(tmp_path / "cal"), float32_matmuls=True)
    _export_and_serve(model, manifest, tmp_path / "models", {"ctr", "cvr", "ctcvr", "ctr_raw", "cvr_raw", "ctcvr_raw"})


def test_importance_and_maml_take_the_users_field_names(click_only, click_only_model, tmp_path):
    """`tfads importance`, `tfads meta-train` and `tfads adapt` on the click-only logs in the user's names: the
    features are the user's (site, placement), the tasks are the user's site values."""
    from tfads.core.manifest import load_manifest

    _, manifest_path = click_only
    out = tmp_path / "importance"
    assert cli.main(["importance", "--model-dir", click_only_model, "--data", manifest_path, "--out", str(out),
                     "--methods", "permutation,embedding", "--max-rows", "2000", "--repeats", "1"]) == 0
    features = {row["feature"] for row in json.loads((out / "importance.json").read_text())["features"]}
    assert {RENAMED["media"], RENAMED["slot"]} <= features and not {"media", "slot", "click"} & features

    meta = str(tmp_path / "meta")
    assert cli.main(["meta-train", "--model-dir", click_only_model, "--data", manifest_path, "--out", meta,
                     "--segment-field", RENAMED["media"], "--algorithm", "reptile", "--meta-steps", "2",
                     "--tasks-per-step", "2", "--support", "16", "--query", "16", "--no-progress"]) == 0
    with open(load_manifest(manifest_path).vocab_path(RENAMED["media"])) as f:
        site = f.readline().strip()
    assert cli.main(["adapt", "--model-dir", meta, "--data", manifest_path, "--out", str(tmp_path / "adapted"),
                     "--segment", site, "--shots", "8"]) == 0
    done = json.loads((tmp_path / "adapted" / "adaptation.json").read_text())
    assert done["rows"] == 8 and done["config"]["segment_field"] == RENAMED["media"]
