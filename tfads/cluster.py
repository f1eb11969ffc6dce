"""Parameter-server clusters from ``TF_CONFIG``: the task's role, ParameterServerStrategy with its tables split over
the ps tasks, the servers that worker and ps tasks run, each worker's own input pipelines, and the error that names
a lost parameter server (docs/deploy.md "Parameter servers: MWMS or PS, what to set")."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import tensorflow as tf

log = logging.getLogger(__name__)
PS_JOB, WORKER_JOB, CHIEF_JOB = "ps", "worker", "chief"
SERVER_JOBS = (WORKER_JOB, PS_JOB)  # tasks that serve the chief's functions and variables, never run train()
_PS_TASK = re.compile(r"/job:ps/replica:\d+/task:(\d+)")


class ParameterServerLost(RuntimeError):
    """A parameter server stopped answering: its variable shards are gone, so the run cannot go on."""

    def __init__(self, task: int, address: str) -> None:
        super().__init__(
            f"parameter server ps task {task} ({address}) is unavailable: training stopped; restart that task "
            "and run the same command again to resume from the last validation's backup"
        )
        self.task, self.address = task, address


def tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` (``{}`` when unset).

    Raises:
      ValueError: ``TF_CONFIG`` is not a JSON object.
    """
    text = os.environ.get("TF_CONFIG") or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: {text[:200]!r}.") from e
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object. Received: {text[:200]!r}.")
    return config


def has_parameter_servers(config: dict[str, Any] | None = None) -> bool:
    """Whether ``TF_CONFIG`` (or ``config``) describes a cluster with a ``ps`` job."""
    config = tf_config() if config is None else config
    return bool(config.get("cluster", {}).get(PS_JOB))


def check_cluster(config: dict[str, Any]) -> None:
    """A parameter-server cluster needs one ``chief`` (the coordinator that runs ``fit``), workers and ps tasks.

    Raises:
      ValueError: naming what the cluster lacks.
    """
    cluster = config.get("cluster", {})
    jobs = {job: len(tasks) for job, tasks in cluster.items()}
    if jobs.get(CHIEF_JOB) != 1 or not jobs.get(WORKER_JOB) or not jobs.get(PS_JOB):
        raise ValueError(
            "TF_CONFIG: a cluster with parameter servers needs one chief (the coordinator), at least one worker "
            f"and at least one ps task. Received jobs: {jobs}."
        )
    task = config.get("task", {})
    if task.get("type") not in (CHIEF_JOB, *SERVER_JOBS) or not 0 <= int(task.get("index", 0)) < jobs[task["type"]]:
        raise ValueError(f"TF_CONFIG: task {task} is not a task of the cluster's jobs {jobs}.")


def server_role() -> str | None:
    """``worker`` or ``ps`` when this process is such a task of a parameter-server cluster (it serves, see
    :func:`serve`), else None (the chief, a MultiWorkerMirroredStrategy worker, or a single process)."""
    config = tf_config()
    if not has_parameter_servers(config):
        return None
    check_cluster(config)
    role = config["task"]["type"]
    return role if role in SERVER_JOBS else None


def serve() -> None:
    """Run this worker or ps task's ``tf.distribute.Server`` until the process is killed (as the TensorFlow
    parameter-server tutorial does): the chief sends it functions to run (worker) or variables to hold (ps)."""
    # a remote call from a lost task fails at once instead of retrying inside gRPC, so the chief sees the failure
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    log.info("%s task %d serving at %s", resolver.task_type, resolver.task_id, server.target)
    server.join()


def parameter_server_strategy(shard_bytes: int) -> tf.distribute.ParameterServerStrategy:
    """ParameterServerStrategy over ``TF_CONFIG``'s cluster; a variable is split along its first axis (rows of an
    embedding table) into as many shards as keep each at least ``shard_bytes``, at most one per ps task
    (``MinSizePartitioner``); smaller variables live whole on one ps, round robin."""
    if shard_bytes < 1:
        raise ValueError(f"train.ps_shard_bytes must be >= 1. Received: {shard_bytes}.")
    check_cluster(tf_config())
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    num_ps = resolver.cluster_spec().num_tasks(PS_JOB)
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=shard_bytes, max_shards=num_ps
    )
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def cluster_size() -> dict[str, int]:
    """Tasks per job of ``TF_CONFIG``'s cluster (``{}`` without one)."""
    return {job: len(tasks) for job, tasks in tf_config().get("cluster", {}).items()}


def per_worker_inputs(
    strategy: tf.distribute.Strategy,
    train: Callable[[tf.Tensor], tf.data.Dataset],
    valid: Callable[[], tf.data.Dataset],
) -> tuple[Any, Any]:
    """Training and validation input as ``DatasetCreator`` s that every worker runs for itself.

    ParameterServerStrategy traces a dataset function once and gives every worker the same graph and the same
    ``InputContext`` (one pipeline, id 0), so the graph tells the workers apart at run time: each dataset it
    creates takes the next number of a counter on a parameter server. ``train(n)`` is then the stream of pipeline
    ``n`` (its own shuffle seed: a replacement worker starts a new stream, never a copy of another's), and the
    validation pipelines take every ``workers``-th batch of ``valid()`` from ``n mod workers`` on, repeated, so the
    coordinator's ``validation_steps`` steps read about the first ``validation_steps`` batches of the split
    (Keras' inexact evaluation: the closures go to whichever worker is free).
    """
    from tf_keras.utils.experimental import DatasetCreator  # Keras only where a chief builds its input

    workers = cluster_size()[WORKER_JOB]
    with strategy.scope():
        train_pipelines = tf.Variable(0, dtype=tf.int64, trainable=False, name="train_pipelines")
        valid_pipelines = tf.Variable(0, dtype=tf.int64, trainable=False, name="valid_pipelines")

    def train_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if tf.inside_function():
            # only the traced dataset function's graph-level seed: with the process's seed 0, tf.data's check of a
            # seed tensor against (0, 0) would need the tensor's value; (default, pipeline seed) needs none
            tf.random.set_seed(None)
        return train(train_pipelines.assign_add(1) - 1)

    def valid_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return valid().shard(workers, (valid_pipelines.assign_add(1) - 1) % workers).repeat()

    return DatasetCreator(train_input), DatasetCreator(valid_input)


def shard_layout(variables: list[tf.Variable]) -> list[str]:
    """One line per variable split over parameter servers: its rows, and each shard's rows and ps task (the parts of
    a sharded variable are named ``<variable>/part_<i>``)."""
    shards: dict[str, list[tf.Variable]] = defaultdict(list)
    for v in variables:
        name, split, _ = v.name.rpartition("/part_")
        if split:
            shards[name].append(v)
    lines = []
    for name, parts in shards.items():
        placed = ", ".join(f"{p.shape[0]} on {_task_of(p.device)}" for p in parts)
        lines.append(f"{name}: {sum(p.shape[0] for p in parts)} rows in {len(parts)} shards ({placed})")
    return lines


def _task_of(device: str) -> str:
    match = _PS_TASK.search(device)
    return f"ps {match.group(1)}" if match else device


def lost_parameter_server(error: BaseException) -> ParameterServerLost | None:
    """The :class:`ParameterServerLost` an error of ``fit`` under parameter servers means, or None when it is
    another error (a lost worker never reaches ``fit``: the coordinator retries its steps elsewhere)."""
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)):
        return None
    match = _PS_TASK.search(str(error))
    if match is None:
        return None
    task = int(match.group(1))
    addresses = tf_config().get("cluster", {}).get(PS_JOB, [])
    return ParameterServerLost(task, addresses[task] if task < len(addresses) else "?")
