"""Training: Keras fit over the manifest's TFRecords with checkpoints, resume, early stopping on the
validation pCTR AUC (the best validation's weights are kept; ``epochs`` is a cap) and optional
distribution (``TF_CONFIG``: multi-worker mirrored, or parameter servers with a ``ps`` job, :mod:`tfads.cluster`)."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
import tf_keras as keras

from tfads.autoheri import heri_callbacks
from tfads.cluster import cluster_size, has_parameter_servers, lost_parameter_server, parameter_server_strategy
from tfads.cluster import per_worker_inputs, shard_layout
from tfads.data import make_dataset
from tfads.finetune import FinetuneMode, apply_finetune_mode
from tfads.core.experiment import ExperimentConfig, TrainConfig
from tfads.core.manifest import Manifest, load_manifest
from tfads.model_io import CHECKPOINT_SUBDIR, load_trained_model, save_trained_model  # noqa: F401 (re-export)
from tfads.models import build_model, compile_model
from tfads.core.experiment import AdaSparseConfig
from tfads.layers import AlphaAnnealer, InRangeEarlyStopping, SparsityLambdaScheduler, find_pruners
from tfads.layers.adasparse import PRUNED_SHARE_SUFFIX

log = logging.getLogger(__name__)
# (features, labels, sample_weights) of a training batch -> the same with other labels or weights
TargetsFn = Callable[[dict, dict, dict], tuple[dict, dict, dict]]


@dataclass
class TrainResult:
    """What a training run produced."""

    model: keras.Model
    history: dict[str, list[float]]
    model_path: str
    epochs_run: float  # epochs trained (a fraction with several validations per epoch)
    best_epoch: float  # where the kept weights were validated, in epochs
    kept: int = -1  # index in the history's lists of the validation whose weights were kept


def make_strategy(ps_shard_bytes: int = TrainConfig.ps_shard_bytes) -> tf.distribute.Strategy:
    """ParameterServerStrategy when ``TF_CONFIG``'s cluster has a ``ps`` job (variables split into shards of at
    least ``ps_shard_bytes``, :func:`tfads.cluster.parameter_server_strategy`), MultiWorkerMirroredStrategy when
    it names another cluster, else the default strategy."""
    if os.environ.get("TF_CONFIG"):
        if has_parameter_servers():
            return parameter_server_strategy(ps_shard_bytes)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes the final model (task 0, or a single process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix from a model dir (its latest checkpoint), a checkpoints dir, or a prefix."""
    for candidate in (os.path.join(path, CHECKPOINT_SUBDIR), path):
        latest = tf.train.latest_checkpoint(candidate) if tf.io.gfile.isdir(candidate) else None
        if latest:
            return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"--init-from {path}: no checkpoint found there")


def train_valid_datasets(
    tc: TrainConfig, manifest: Manifest, *, steps_per_epoch: int | None = None
) -> tuple[tf.data.Dataset, tf.data.Dataset, int | None]:
    """The training and validation datasets of a run, and its steps per epoch.

    Training repeats with ``steps_per_epoch`` (default: one pass over the train split) unless a
    scenario filter is set, whose size is unknown in advance: then an epoch is one filtered pass.
    """
    train_ds, valid_ds = train_dataset(tc, manifest, tc.seed), valid_dataset(tc, manifest)
    if tc.validation_steps:
        valid_ds = valid_ds.take(tc.validation_steps)
    steps = steps_per_epoch or tc.steps_per_epoch
    if steps is None and tc.scenarios is None:
        steps = max(1, math.ceil(manifest.split_count("train") / tc.batch_size))
    return train_ds, valid_ds, steps


def train_dataset(tc: TrainConfig, manifest: Manifest, seed: int | tf.Tensor) -> tf.data.Dataset:
    """The shuffled training stream (repeated unless a scenario filter is set), shuffled with ``seed``."""
    return make_dataset(
        manifest.split_files("train"),
        manifest,
        tc.batch_size,
        shuffle=True,
        shuffle_buffer=tc.shuffle_buffer,
        shuffle_block=tc.shuffle_block,
        seed=seed,
        repeat=tc.scenarios is None,
        scenarios=tc.scenarios,
        use_sample_weight=tc.use_sample_weight,
        deterministic=tc.deterministic,
    )


def valid_dataset(tc: TrainConfig, manifest: Manifest) -> tf.data.Dataset:
    """The valid split in file order, once (``train.validation_steps`` not applied)."""
    return make_dataset(
        manifest.split_files("valid"), manifest, tc.batch_size, scenarios=tc.scenarios,
        use_sample_weight=tc.use_sample_weight,
    )


def parameter_server_inputs(
    tc: TrainConfig, manifest: Manifest, strategy: tf.distribute.Strategy, targets: TargetsFn | None = None
) -> tuple[Any, Any, int, int]:
    """Input of a parameter-server run: ``(train, valid, steps per epoch, validation steps)``, the datasets as
    creators each worker runs (:func:`tfads.cluster.per_worker_inputs`). Both step counts must be known: by
    default one pass over the split.

    Raises:
      ValueError: a scenario filter is set (its epoch size is unknown in advance), or ``targets`` (a map whose
        model lives on the chief, which the workers cannot run).
    """
    if tc.scenarios is not None:
        raise ValueError(
            "train.scenarios: a scenario filter leaves the epoch size unknown, which parameter-server training "
            f"needs; train it in one process or with MultiWorkerMirroredStrategy. Received: {tc.scenarios}."
        )
    if targets is not None:
        raise ValueError("targets (e.g. UKD's pseudo labels) run in one process or with MultiWorkerMirroredStrategy, "
                         "not with parameter servers")
    train_ds, valid_ds = per_worker_inputs(
        strategy, lambda pipeline: train_dataset(tc, manifest, tc.seed + pipeline), lambda: valid_dataset(tc, manifest)
    )
    steps = tc.steps_per_epoch or max(1, math.ceil(manifest.split_count("train") / tc.batch_size))
    validation = tc.validation_steps or max(1, math.ceil(manifest.split_count("valid") / tc.batch_size))
    return train_ds, valid_ds, steps, validation


def execution_steps(tc: TrainConfig, manifest: Manifest, steps: int | None) -> tuple[int, int | None]:
    """``(steps_per_execution, validation_steps)`` for ``fit``.

    Several steps per execution need the step counts of the epoch and of the validation pass; a
    scenario filter leaves them unknown, and then training runs one step per execution.
    """
    if tc.steps_per_execution == 1:
        return 1, None
    validation = tc.validation_steps
    if validation is None and tc.scenarios is None:
        validation = max(1, math.ceil(manifest.split_count("valid") / tc.batch_size))
    if steps is None or validation is None:
        log.warning(
            "train.steps_per_execution=%d needs known step counts, which the scenario filter leaves unknown: "
            "running one step per execution",
            tc.steps_per_execution,
        )
        return 1, None
    return tc.steps_per_execution, validation


def validation_periods(tc: TrainConfig, steps: int | None) -> tuple[int, int | None]:
    """``(epochs, steps_per_epoch)`` for ``fit``: the epochs cap cut into ``validations_per_epoch``
    periods, each ending with a validation (early stopping and checkpoints act per period).

    The training dataset repeats, so a period continues the stream where the last one stopped. Without
    a known epoch size (a scenario filter) training validates once per epoch.
    """
    per_epoch = tc.validations_per_epoch
    if per_epoch == 1:
        return tc.epochs, steps
    if steps is None:
        log.warning(
            "train.validations_per_epoch=%d needs a known epoch size, which the scenario filter leaves unknown: "
            "validating once per epoch",
            per_epoch,
        )
        return tc.epochs, None
    return tc.epochs * per_epoch, max(1, math.ceil(steps / per_epoch))


def _weights_of(checkpoint: str, manifest: Manifest, config: ExperimentConfig) -> list:
    """Model weights of a checkpoint, read through a throw-away model: loading straight into the model
    to train would also restore the checkpoint's optimizer (learning rate, moments, step) as soon as
    the new optimizer creates its variables, so a fine-tune would not start fresh at its own rate."""
    source = build_model(manifest, config.model)
    source.load_weights(checkpoint).expect_partial()
    return source.get_weights()


def train(
    config: ExperimentConfig,
    manifest: Manifest | str,
    model_dir: str,
    *,
    init_from: str | None = None,
    finetune: FinetuneMode = "full",
    targets: TargetsFn | None = None,
    verbose: int | str = "auto",
) -> TrainResult:
    """Train ``config`` on ``manifest``'s train split, validating on the valid split
    ``train.validations_per_epoch`` times per epoch; stops after ``train.early_stopping_patience``
    validations without a better pCTR AUC or at the ``train.epochs`` cap, and keeps the best
    validation's weights either way.

    ``init_from`` (a model dir or checkpoint) starts from its weights; ``finetune`` then says what the
    run may change (:mod:`tfads.finetune`: ``full``, ``heads`` or ``frozen_embeddings``).

    ``targets`` maps each training batch's ``(features, labels, sample_weights)`` in the input pipeline
    (e.g. UKD's pseudo labels, :mod:`tfads.ukd`); validation batches keep the split's own labels.

    Writes under ``model_dir``: ``checkpoints/`` (weights per
    validation and ``final``, the kept weights), ``backup/`` (resume state while running), ``logs/``
    (TensorBoard), ``experiment.yaml``, ``model.json`` and ``history.json``.
    """
    if isinstance(manifest, str):
        manifest = load_manifest(manifest)
    if finetune != "full" and not init_from:
        raise ValueError(f"finetune mode {finetune!r} needs a model to start from (init_from / --init-from)")
    tc = config.train
    keras.utils.set_random_seed(tc.seed)
    if tc.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(tc.ps_shard_bytes)
    parameter_servers = isinstance(strategy, tf.distribute.ParameterServerStrategy)
    workers = cluster_size()["worker"] if parameter_servers else strategy.num_replicas_in_sync
    if parameter_servers:
        train_ds, valid_ds, steps, ps_validation_steps = parameter_server_inputs(tc, manifest, strategy, targets)
    else:
        train_ds, valid_ds, steps = train_valid_datasets(tc, manifest)
        if targets is not None:
            train_ds = train_ds.map(targets, num_parallel_calls=tf.data.AUTOTUNE, deterministic=tc.deterministic)
            train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    fit_epochs, fit_steps = validation_periods(tc, steps)
    periods_per_epoch = fit_epochs // tc.epochs
    if not parameter_servers and (workers > 1 or os.environ.get("TF_CONFIG")):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, valid_ds = train_ds.with_options(options), valid_ds.with_options(options)

    with strategy.scope():
        model = build_model(manifest, config.model)
        if init_from:
            checkpoint = resolve_checkpoint(init_from)
            model.set_weights(_weights_of(checkpoint, manifest, config))
            trainable = apply_finetune_mode(model, finetune)
            log.info("initialised weights from %s; fine-tune %s: %d layers train", checkpoint, finetune, len(trainable))
        steps_per_execution, validation_steps = execution_steps(tc, manifest, fit_steps)
        if parameter_servers:  # the coordinator needs every step count
            validation_steps = ps_validation_steps
        compile_model(model, config.model, tc.learning_rate, tc.optimizer, steps_per_execution=steps_per_execution)
    for line in shard_layout(model.variables) if parameter_servers else []:
        log.info("sharded over parameter servers: %s", line)

    chief = is_chief(strategy)
    out_dir = model_dir if chief else tempfile.mkdtemp(prefix="tfads-worker-")
    tf.io.gfile.makedirs(out_dir)
    # restores the best validation's weights also when the run reaches the epochs cap; once a validation has the
    # AdaSparse layers inside their sparsity range, only such validations count as the best. With parameter servers
    # the kept weights come from that validation's checkpoint: a copy in memory would put every table on the chief
    stopper = InRangeEarlyStopping(
        config.model.adasparse.r_min, config.model.adasparse.r_max,
        monitor="val_ctr_auc", mode="max", patience=tc.early_stopping_patience,
        restore_best_weights=not parameter_servers,
    )
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out_dir, CHECKPOINT_SUBDIR, "ckpt-{epoch:02d}"), save_weights_only=True
        ),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq=100, profile_batch=0),
        stopper,
        # an epoch's steps; a warm start keeps the slope and lambda it loaded (a fresh optimizer would restart the
        # schedules at step 0: soft masks, nothing pruned, for the whole fine-tune)
        *([] if init_from else adasparse_callbacks(config.model.adasparse, steps_per_epoch=steps, model=model)),
        *heri_callbacks(config, manifest, model, steps_per_execution),  # AutoHERI search: architecture steps
    ]
    try:
        history = model.fit(
            train_ds,
            validation_data=valid_ds,
            epochs=fit_epochs,
            steps_per_epoch=fit_steps,
            validation_steps=validation_steps,
            callbacks=callbacks,
            verbose=verbose,
        )
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:
        lost = lost_parameter_server(e) if parameter_servers else None
        if lost is None:
            raise
        raise lost from e
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    if parameter_servers and hist.get("val_ctr_auc"):
        _restore_period(model, out_dir, stopper.best_epoch)
    model_path = save_trained_model(model, out_dir, manifest.path, config)
    # history.epoch holds period indices (from the resumed one on, after a restart)
    periods = history.epoch or [fit_epochs - 1]
    kept = periods.index(stopper.best_epoch) if hist.get("val_ctr_auc") and stopper.best_epoch in periods else -1
    best = periods[kept]
    epochs_run, best_epoch = (periods[-1] + 1) / periods_per_epoch, (best + 1) / periods_per_epoch
    if chief:
        with tf.io.gfile.GFile(os.path.join(model_dir, "history.json"), "w") as f:
            record = {
                "history": hist,
                "epochs": history.epoch,  # validation periods (validations_per_epoch per epoch)
                "validations_per_epoch": periods_per_epoch,
                "epochs_run": epochs_run,
                "best_epoch": best_epoch,
                "manifest": manifest.path,
                "workers": workers,
                "parameter_servers": cluster_size().get("ps", 0) if parameter_servers else 0,
                "init_from": init_from,
                "finetune": finetune if init_from else None,
            }
            json.dump(record, f, indent=2)
    return TrainResult(model=model, history=hist, model_path=model_path, epochs_run=epochs_run, best_epoch=best_epoch,
                       kept=kept)


def _restore_period(model: keras.Model, out_dir: str, period: int) -> None:
    """Load the weights ``ModelCheckpoint`` saved at the end of validation period ``period`` (0-based)."""
    path = os.path.join(out_dir, CHECKPOINT_SUBDIR, f"ckpt-{period + 1:02d}")
    if not tf.io.gfile.exists(path + ".index"):
        log.warning("no checkpoint %s of the kept validation: keeping the last weights", path)
        return
    model.load_weights(path).expect_partial()


def adasparse_callbacks(
    cfg: AdaSparseConfig, steps_per_epoch: int | None, model: keras.Model | None = None
) -> list[keras.callbacks.Callback]:
    """Alpha annealing and lambda growth for the AdaSparse pruners, in steps of an epoch of the run.

    None when AdaSparse is off or its form is ``scaling`` (no hard step, nothing to anneal). Alpha
    reaches its final slope after ``alpha_anneal_epochs`` epochs' steps (half an epoch by default) and
    lambda multiplies by ``lambda_growth`` every ``lambda_growth_epochs`` epochs' steps, whatever the
    epochs cap and the size of the data, so a run that early stopping ends after an epoch or two still
    reaches the sparsity range. A fused pruner trained most of the run at the final slope validated
    better than one still annealing at the end (benchmarks/results/model_quality.md).
    Without a known epoch size (a scenario filter) an epoch counts as 10,000 steps. None either for a
    ``model`` without pruners (a backbone without the deep MLP, e.g. STAR, MMoE, PLE, has none unless
    ``adasparse.on_embedding``).
    """
    if not cfg.enabled or cfg.form == "scaling":
        return []
    if model is not None and not find_pruners(model):
        log.info("adasparse.enabled, but the %s backbone has no AdaSparse pruner: no schedules", model.name)
        return []
    epoch = steps_per_epoch or 10_000
    anneal_steps = max(1, int(epoch * cfg.alpha_anneal_epochs))
    growth_steps = max(1, int(epoch * cfg.lambda_growth_epochs))
    return [
        AlphaAnnealer(cfg.alpha_start, cfg.alpha_end, total_steps=anneal_steps),
        SparsityLambdaScheduler(growth=cfg.lambda_growth, growth_steps=growth_steps),
    ]


def summary_line(history: dict[str, Any], kept: int | None = None) -> str:
    """One readable line of the losses, AUCs and pruned shares of the validation whose weights were kept
    (``TrainResult.kept``; by default the best ``val_ctr_auc``, the last one without it)."""
    keys = ("loss", "ctr_auc", "ctcvr_auc", "val_loss", "val_ctr_auc", "val_ctcvr_auc",
            *(k for k in history if k.startswith("val_") and k.endswith(PRUNED_SHARE_SUFFIX)))
    scores = history.get("val_ctr_auc") or []
    if kept is None:
        kept = max(range(len(scores)), key=scores.__getitem__) if scores else -1
    return "  ".join(f"{k}={history[k][kept]:.4f}" for k in keys if k in history)
