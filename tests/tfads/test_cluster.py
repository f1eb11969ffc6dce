"""tfads.cluster without a cluster: TF_CONFIG roles and their errors, the lost-ps error, the shard layout lines."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import tfads  # noqa: F401
import tensorflow as tf

from tfads import cluster

SPEC = {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4", "h:5"]}


def _set(monkeypatch, spec, job, index=0):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": spec, "task": {"type": job, "index": index}}))


@pytest.mark.parametrize(("job", "role"), [("worker", "worker"), ("ps", "ps"), ("chief", None)])
def test_worker_and_ps_tasks_serve_and_the_chief_trains(monkeypatch, job, role):
    _set(monkeypatch, SPEC, job, 1 if job != "chief" else 0)
    assert cluster.server_role() == role
    assert cluster.cluster_size() == {"chief": 1, "worker": 2, "ps": 2}


def test_without_ps_nobody_serves(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster.server_role() is None and not cluster.has_parameter_servers()
    _set(monkeypatch, {"worker": ["h:2", "h:3"]}, "worker", 1)  # MultiWorkerMirroredStrategy: every worker trains
    assert cluster.server_role() is None and not cluster.has_parameter_servers()


@pytest.mark.parametrize(
    ("spec", "job", "index", "message"),
    [
        ({"worker": ["h:2"], "ps": ["h:4"]}, "worker", 0, "needs one chief"),
        ({"chief": ["h:1"], "ps": ["h:4"]}, "ps", 0, "at least one worker"),
        (SPEC, "ps", 2, "is not a task of the cluster's jobs"),
        (SPEC, "evaluator", 0, "is not a task of the cluster's jobs"),
    ],
)
def test_a_cluster_that_cannot_train_is_named(monkeypatch, spec, job, index, message):
    _set(monkeypatch, spec, job, index)
    with pytest.raises(ValueError, match=message):
        cluster.server_role()


def test_bad_tf_config_and_shard_size_are_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        cluster.tf_config()
    with pytest.raises(ValueError, match="ps_shard_bytes must be >= 1. Received: 0"):
        cluster.parameter_server_strategy(0)
    from tfads.core.experiment import TrainConfig

    with pytest.raises(ValueError, match="ps_shard_bytes must be >= 1, got -1"):
        TrainConfig(ps_shard_bytes=-1)


def test_cli_names_a_bad_cluster_without_a_traceback(monkeypatch, capsys):
    from tfads.cli import main

    _set(monkeypatch, {"worker": ["h:2"], "ps": ["h:4"]}, "worker", 0)
    assert main(["train", "--data", "m.json", "--model-dir", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfads train: error: TF_CONFIG: a cluster with parameter servers needs one chief")
    assert "Traceback" not in err


def test_an_unavailable_ps_becomes_one_error_naming_its_task_and_address(monkeypatch):
    _set(monkeypatch, SPEC, "chief")
    message = ("Socket closed\nAdditional GRPC error information from remote target /job:ps/replica:0/task:1 while "
               "calling /tensorflow.eager.EagerService/Enqueue")
    lost = cluster.lost_parameter_server(tf.errors.UnavailableError(None, None, message))
    assert (lost.task, lost.address) == (1, "h:5")
    assert str(lost).startswith("parameter server ps task 1 (h:5) is unavailable: training stopped")
    worker = message.replace("/job:ps/", "/job:worker/")
    assert cluster.lost_parameter_server(tf.errors.UnavailableError(None, None, worker)) is None
    assert cluster.lost_parameter_server(tf.errors.InvalidArgumentError(None, None, message)) is None


def test_shard_layout_names_each_split_variable_once():
    def var(name, rows, task):
        return SimpleNamespace(name=name, shape=(rows, 8), device=f"/job:ps/replica:0/task:{task}/device:CPU:0")

    variables = [var("fused/embeddings/part_0:0", 6, 0), var("fused/embeddings/part_1:0", 5, 1),
                 var("dense/kernel:0", 4, 0)]
    assert cluster.shard_layout(variables) == ["fused/embeddings: 11 rows in 2 shards (6 on ps 0, 5 on ps 1)"]
