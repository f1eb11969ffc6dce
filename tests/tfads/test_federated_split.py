"""Split learning across two processes on 127.0.0.1: equal to one-process training, and resumable aligned
after either party dies."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfads.core.experiment import load_experiment
from tfads.core.manifest import load_manifest
from tfads.datagen import generate
from tfads.datagen.media import MEDIA_TABLE, MediaPlan
from tfads.federated.ad_party import AdPartyTrainer
from tfads.federated.central import CentralTrainer
from tfads.federated.channel import PeerLost
from tfads.federated.config import PrivacyConfig, SplitConfig
from tfads.federated.data import MediaTable, Split, load_split
from tfads.federated.media_party import MediaService
from tfads.federated.models import build_bottom
from tfads.federated.training import build_seeded_top
from tfads.federated.tls import self_signed
from tfads.jobs.dataset import build_dataset
from tfads.jobs.federated import run_ad_party, top_model_config

# no noise, no binding clip: the split run must equal one-process training
EXACT = SplitConfig(batch_size=128, epochs=1, checkpoint_every=5, seed=3,
                    privacy=PrivacyConfig(embedding_clip=1e6, embedding_noise=0.0, gradient_clip=1e9,
                                          gradient_noise=0.0))
ATOL = 1e-5  # float32 weights after ~25 Adam steps; measured difference 0.0 in one process


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """4 days x 2000 impressions with the media party's table, built by the Beam job; the model config."""
    root = tmp_path_factory.mktemp("fed")
    generate(str(root / "logs"), days=4, impressions_per_day=2000, seed=11, progress=False,
             media_plan=MediaPlan(enabled=True))
    manifest = build_dataset(str(root / "logs"), str(root / "data"))
    base = load_experiment().model
    model = top_model_config(dataclasses.replace(base, embedding_dim=8, deep_units=[16], tower_units=[8]))
    return {"manifest": manifest, "table": str(root / "logs" / MEDIA_TABLE), "model": model, "root": root}


@pytest.fixture(scope="module")
def reference(fed):
    """The same models trained in one process on the same batches."""
    trainer = CentralTrainer(load_manifest(fed["manifest"]), fed["model"], EXACT, MediaTable.load(fed["table"]))
    trainer.train()
    return trainer


@contextlib.contextmanager
def media_party(fed, state: str, *extra: str):
    """``tfads media-party`` as a subprocess; yields (process, target) once it prints where it listens."""
    cmd = [sys.executable, "-m", "tfads.cli", "media-party", "--media", fed["table"], "--state", state,
           "--seed", str(EXACT.seed), "--embedding-clip", "1e6", "--embedding-noise", "0", "--idle-timeout", "120",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the party listens (or exits: EOF)
        assert line.startswith("listening on "), f"media party did not start: {line!r}, exit {proc.poll()}"
        yield proc, line.split()[-1]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _bottom_at(fed, state: str, step: int) -> list[np.ndarray]:
    """The media party's bottom weights in its checkpoint of ``step`` (read into a fresh model)."""
    table = MediaTable.load(fed["table"])
    model = build_bottom(table.features.shape[1], EXACT.bottom_units, EXACT.media_dim, EXACT.privacy.embedding_clip)
    tf.train.Checkpoint(model=model).restore(os.path.join(state, "media", f"ckpt-{step}")).expect_partial()
    return model.get_weights()


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, want, strict=True)) < ATOL


def test_split_over_grpc_equals_one_process_and_resumes_aligned_after_either_party_dies(fed, reference, tmp_path):
    manifest = load_manifest(fed["manifest"])
    media_state, ad_state = str(tmp_path / "media"), str(tmp_path / "ad")

    class AdCrash(RuntimeError):
        pass

    def crash_at(step):
        def hook(s):
            if s == step:
                raise AdCrash(s)
        return hook

    with media_party(fed, media_state) as (proc, target):
        # the ad party dies at step 7 (checkpoint 5); the media party, at step 7, keeps serving
        first = AdPartyTrainer(manifest, fed["model"], EXACT, ad_state, _peer(target))
        first.align()
        with pytest.raises(AdCrash):
            first.train(on_step=crash_at(7))
        # a new ad party: both restore step 5 (the media party was at 7); the media party is killed at step 12
        second = AdPartyTrainer(manifest, fed["model"], EXACT, ad_state, _peer(target))
        second.align()
        assert second.step == 5
        with pytest.raises(PeerLost, match="Forward failed"):
            second.train(on_step=lambda s: s == 12 and proc.kill())
    # both restart (the media party now over TLS): the job resumes at step 10, the last step both saved
    cert, key = self_signed(str(tmp_path / "tls"))
    media_export = tmp_path / "media_model"
    with media_party(fed, media_state, "--tls-cert", cert, "--tls-key", key, "--export-base", str(media_export)) as (
            proc, target):
        result = run_ad_party(fed["manifest"], target, ad_state, fed["model"], EXACT, ca_path=cert,
                              export_base=str(tmp_path / "ctr"))
        assert proc.wait(timeout=60) == 0  # told to stop, then exported its embedding model
    assert (media_export / "1" / "saved_model.pb").is_file()
    final = reference.order.steps_per_epoch
    assert (result["start_step"], result["final_step"]) == (10, final)
    # ... and the result is that of one-process training on the same batches
    want = reference.evaluate(load_split(manifest, "test"))
    assert result["metrics"] == pytest.approx(want, abs=1e-5)
    assert result["bytes_by_method"]["Forward"] > 0 and result["training_bytes_per_epoch"] > 0
    assert result["export"] == str(tmp_path / "ctr" / "1")
    _assert_close(_bottom_at(fed, media_state, final), reference.bottom.get_weights())
    top = build_seeded_top(manifest, fed["model"], EXACT)
    tf.train.Checkpoint(model=top).restore(os.path.join(ad_state, "ad", f"ckpt-{final}")).expect_partial()
    _assert_close(top.get_weights(), reference.top.get_weights())


def test_media_service_refuses_misaligned_steps(fed, tmp_path):
    service = MediaService(MediaTable.load(fed["table"]), EXACT, str(tmp_path))
    with pytest.raises(ValueError, match="no intersection yet"):
        service.embed({"index": np.array([0])})
    service.rows = service.table.features[:4]
    with pytest.raises(ValueError, match="next step is 1"):
        service.forward({"step": np.int64(2), "index": np.array([0])})
    service.forward({"step": np.int64(1), "index": np.array([0, 3])})
    with pytest.raises(ValueError, match="pending forward is step 1"):
        service.backward({"step": np.int64(2), "index": np.array([0]), "gradient": np.zeros((1, 8), np.float32)})
    with pytest.raises(ValueError, match="out of the intersection"):
        service.embed({"index": np.array([4])})


def _peer(target: str):
    from tfads.federated.channel import Peer

    return Peer(target, deadline_s=20.0)


def test_served_two_party_prediction_equals_in_process(fed, reference, tmp_path):
    from serving.bidding import BiddingParams
    from serving.experiment import Arm, Experiment
    from serving.federated import MediaBidClient, export_ad_model, export_media_model
    from serving.local_server import embedded_server
    from tests.conftest import free_port
    from tfads.federated.training import predict

    manifest = load_manifest(fed["manifest"])
    table = MediaTable.load(fed["table"])
    export_media_model(reference.bottom, table.keys, table.features, str(tmp_path / "media"), version=1)
    export_ad_model(reference.top, manifest, str(tmp_path / "ctr"), media_dim=EXACT.media_dim, version=1)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{tmp_path / name}" model_platform: "tensorflow" }}\n'
        for name in ("media", "ctr")) + "}\n")
    test = load_split(manifest, "test")
    users = test.features["user_id"]
    known = next(i for i, u in enumerate(users) if str(u) in reference.index)
    unknown = next(i for i, u in enumerate(users) if str(u) not in reference.index)
    scalars = list(manifest.input_dtypes)

    def request(row: int) -> tuple[dict, Split]:
        rows = test.rows(np.array([row, 1, 2]))
        rows.features["user_id"] = np.full(3, users[row])  # three candidate ads for this row's user
        py = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731
        candidates = [{n: (py(rows.features[n][i]).decode() if isinstance(rows.features[n][i], bytes)
                           else py(rows.features[n][i])) for n in scalars} for i in range(3)]
        return {"request_id": str(row), "user_id": int(users[row]), "features": {}, "candidates": candidates}, rows

    experiment = Experiment("fed", "salt", [Arm("fed", 1.0, model_name="ctr", bidding=BiddingParams(outputs="raw"))])
    with embedded_server([f"--model_config_file={config}"], ["media", "ctr"]) as target:
        for media_target, row, served_match in ((target, known, 1.0), (target, unknown, 0.0),
                                                (f"127.0.0.1:{free_port()}", known, 0.0)):
            with MediaBidClient.from_manifest(target, manifest.data, experiment, media_target=media_target,
                                              media_dim=EXACT.media_dim, media_deadline_ms=2000,
                                              deadline_ms=5000) as client:
                client.check_inputs()
                body, rows = request(row)
                response = client.bid(body)
                assert response.source == "model"
                assert client.media_fallbacks == (1 if media_target != target else 0)
            embedding = np.zeros((3, EXACT.media_dim), np.float32)
            if served_match:
                embedding[:] = reference.bottom(table.rows_of([str(users[row])]), training=False).numpy()
            want = predict(reference.top, rows, embedding, np.full(3, served_match))
            np.testing.assert_allclose(response.p_ctr, want["ctr"], atol=1e-5)
            np.testing.assert_allclose(response.p_cvr, want["cvr"], atol=1e-5)


def test_media_party_stops_cleanly_when_nobody_calls(fed, tmp_path):
    from tfads.jobs.federated import TARGET_FILE, run_media_party

    targets = []
    assert run_media_party(fed["table"], str(tmp_path), EXACT, idle_timeout_s=0.2, ready=targets.append) == 3
    assert (tmp_path / TARGET_FILE).read_text().strip() == targets[0]
    assert sorted(p.name for p in (tmp_path / "media").iterdir() if p.name.startswith("ckpt-0"))  # step 0 kept


def test_ad_party_command_stops_with_exit_3_when_the_media_party_is_unreachable(fed, tmp_path, capsys):
    from tests.conftest import free_port
    from tfads.cli import main

    code = main(["ad-party", "--data", fed["manifest"], "--media-target", f"127.0.0.1:{free_port()}",
                 "--state", str(tmp_path), "--deadline", "1", "--batch-size", "128"])
    assert code == 3 and "PsiReply failed" in capsys.readouterr().err


def test_demo_federated_step_trains_exports_and_serves_both_parties(fed, tmp_path, capsys):
    """``tfads demo --federated``'s step: the media party in its own process exits cleanly after exporting, the
    ad party's export and its embedding model serve from one config, and bids fall back without the media server."""
    from serving.server.configs import read_text_proto, validate_model_server_config
    from tensorflow_serving.config import model_server_config_pb2
    from tfads.jobs.demo_federated import AD_MODEL, MEDIA_MODEL, serve_and_bid, train_and_export

    cfg = dataclasses.replace(EXACT, checkpoint_every=1000)
    result, config_file = train_and_export(str(fed["root"] / "logs"), fed["manifest"], fed["model"],
                                           str(tmp_path / "work"), str(tmp_path / "models"), cfg)
    assert result["final_step"] == result["steps_per_epoch"] and result["intersection"] > 0
    for name in (MEDIA_MODEL, AD_MODEL):
        assert os.listdir(tmp_path / "models" / name) == ["1"]
    validate_model_server_config(read_text_proto(config_file, model_server_config_pb2.ModelServerConfig), config_file)
    capsys.readouterr()
    serve_and_bid(config_file, fed["manifest"], cfg.media_dim, str(tmp_path / "server.log"))
    out = capsys.readouterr().out
    assert "media fallbacks: 0 of 3 requests" in out and "media fallbacks: 3 of 3 requests" in out
    assert out.count("source=model") == 6


def test_split_flags_are_what_the_party_commands_parse_back():
    import argparse

    from tfads.cli.federated_options import add_split_arguments, split_config
    from tfads.jobs.demo_federated import split_flags

    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    cfg = dataclasses.replace(EXACT, bottom_units=[16, 4], media_dim=5)
    assert split_config(parser.parse_args(["--state", "s", *split_flags(cfg)])) == cfg


def test_a_media_party_that_cannot_start_is_reported_with_its_log(tmp_path):
    from tfads.jobs.demo_federated import media_party_process

    missing = str(tmp_path / "no-such-table")
    with pytest.raises(PeerLost, match=r"did not start \(exit 2\); see .*media_party\.log"):
        with media_party_process(missing, str(tmp_path / "state"), EXACT, str(tmp_path / "export")):
            pass
    log = (tmp_path / "state" / "media_party.log").read_text()
    assert "no-such-table: no media table here" in log and "Traceback" not in log
